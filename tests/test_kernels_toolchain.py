"""infgen.kernels.toolchain: the one compile-and-inspect module (the compile itself is exercised by
the compile report, the d512 checks, the native build and the TensorRT plugin tests)."""
from __future__ import annotations

import pytest

from infgen.kernels import toolchain


def test_ptx_param_count_counts_the_entry_parameters_only():
    ptx = """.visible .entry k(
    .param .u64 .ptr .global .align 1 k_param_0,
    .param .u32 k_param_1,
    .param .u64 .ptr .global .align 1 k_param_2
)
{ .param .b32 retval0; }"""
    assert toolchain.ptx_param_count(ptx, "k") == 3
    with pytest.raises(ValueError, match="no .entry other"):
        toolchain.ptx_param_count(ptx, "other")


def test_divisible_by_16_marks_the_named_arguments_by_position():
    sig = {"X": "*bf16", "n": "i32", "Y": "*bf16", "BLOCK": "constexpr"}
    assert toolchain.divisible_by_16(sig, ("X", "Y")) == {(0,): [["tt.divisibility", 16]], (2,): [["tt.divisibility", 16]]}
    with pytest.raises(ValueError, match=r"\['Z'\]"):
        toolchain.divisible_by_16(sig, ("X", "Z"))


def test_sass_ops_counts_opcodes_past_predicates():
    sass = """
        /*0010*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ, !UPT ;
        /*0020*/              @P0  STL [R1], R2 ;
        /*0030*/             @!UP1 UTMALDG.2D [UR8], [UR10] ;
        /*0040*/                   HGMMA.64x256x16.F32.BF16 R24, gdesc[UR4], R24 ;
        /*0050*/                   EXIT ;"""
    ops = toolchain.sass_ops(sass)
    assert ops["HGMMA"] == 2 and ops["STL"] == 1 and ops["UTMALDG"] == 1 and ops["EXIT"] == 1 and ops["LDL"] == 0


def test_compile_kernel_refuses_an_interpreted_kernel(monkeypatch):
    from infgen.kernels import common
    monkeypatch.setattr(common, "is_interpreted", lambda fn: True)

    def kernel():  # stands for a @triton.jit function decorated under TRITON_INTERPRET=1
        pass
    with pytest.raises(RuntimeError, match="kernel was defined under TRITON_INTERPRET=1"):
        toolchain.compile_kernel(kernel, {})


def test_the_bundled_cuda_tools_exist():
    from pathlib import Path
    assert Path(toolchain.tool("cuobjdump")).is_file()
