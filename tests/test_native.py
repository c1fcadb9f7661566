"""The Python side of the native build (no compiler, GPU or TensorRT needed): native/aot.py's
signatures against the real kernels, its PTX and C-table helpers, infgen.export.trt --plugin-lib, and
the Triton model repository example against the export spec. The library itself is tested by
ctest (CMakeLists.txt: native/tests/)."""
import re
from pathlib import Path

import pytest

from infgen.export.onnx import DYNAMIC_DIMS, INPUTS, OUTPUTS
from infgen.export.plan import DEFAULT_OPT_SIZES, make_plan, trtexec_command
from infgen.export.trt import main as trt_main
from infgen.native import aot

ROOT = Path(__file__).resolve().parents[1]
C_SOURCE = (ROOT / "native" / "src" / "infgen_kernels.c").read_text()


@pytest.mark.parametrize("v", aot.variants(), ids=lambda v: v.name)
def test_variant_signatures_match_the_kernels_and_the_c_launcher(v):
    """Every runtime argument gets a C type, in the kernel's order, which is the order the C
    launcher passes; pointers (and attention strides) carry the divisibility hint it checks."""
    fn, sig, consts, attrs = aot.kernel_source(v)
    runtime = [n for n, t in sig.items() if t != "constexpr"]
    expected = {"attention": "ATTENTION_ARGS", "inpe": "INPE_ARGS", "inpe_mlp": "INPE_MLP_ARGS"}[v.kind]
    launcher = re.search(rf'{expected}\[\] =\s*((?:"[^"]*"\s*)+);', C_SOURCE).group(1)
    assert runtime == "".join(re.findall(r'"([^"]*)"', launcher)).split(",")
    assert all(sig[n] == f"*{v.dtype}" for n in ("Q", "K", "V", "O") if n in sig)
    hinted = {list(sig)[i] for (i,) in attrs}
    assert hinted == aot.hinted_args(v) and set(aot.SIGNATURES[v.kind][3]) <= hinted
    if v.kind == "attention":
        assert ({"M", "N"} <= hinted) == bool(v.flags & 1)  # ragged counts only in the general variant
    else:
        assert {"D"} <= hinted and "T" not in hinted
    assert all(c in consts for c in v.constexprs)
    assert any(v.name.endswith(v.dtype + suffix) for suffix in ("", "_add", "_rows16"))


def test_attention_tiles_come_from_pick_config():
    import torch
    from infgen.kernels.attention import pick_config
    for v in aot.variants():
        if v.kind == "attention":
            assert (*v.tile, v.num_warps, v.num_stages) == pick_config(v.dim, torch.device("cuda"))


def test_kernel_source_names_an_argument_it_does_not_know(monkeypatch):
    v = aot.variants()[0]
    module, fn, types, div16 = aot.SIGNATURES["attention"]
    reduced = {k: t for k, t in types.items() if k != "qk_scale"}
    monkeypatch.setitem(aot.SIGNATURES, "attention", (module, fn, reduced, div16))
    with pytest.raises(ValueError, match="qk_scale"):
        aot.kernel_source(v)


def test_c_table_embeds_each_cubin_and_its_fields():
    row = {"name": "attention_d64_bf16", "symbol": "attn_fwd_kernel", "kind": "attention", "dtype": "bf16", "dim": 64,
           "tile": [128, 64], "num_warps": 4, "num_stages": 3, "flags": 0, "num_freqs": 0, "shared": 65536,
           "num_params": 22, "num_args": 20, "arch": 90, "args": ["Q", "K"]}
    text = aot.c_table([{"row": row, "cubin": bytes(range(30))}], "triton x, sm_90a, 1 kernels")
    assert "cubin_attention_d64_bf16[30] = {" in text and "0x1d" in text
    assert '{"attention_d64_bf16", "attn_fwd_kernel", 0, 0, 64, 128, 64, 4, 3, 0, 0, 65536, 22, 20, 90, "Q,K",' in text
    assert "infgen_table_size = 1;" in text


def test_trtexec_line_loads_the_plugin_library():
    plan = make_plan(256, 2048, DEFAULT_OPT_SIZES, batch=1)
    with_lib = trtexec_command(plan, "m_trt.onnx", "m.engine", plugin_lib="/x/libinfgen_trt_plugins.so")
    assert "--dynamicPlugins=/x/libinfgen_trt_plugins.so" in with_lib and "--onnx=m_trt.onnx" in with_lib
    assert "--dynamicPlugins" not in trtexec_command(plan, "m.onnx", "m.engine")


def test_cli_plugin_lib_prints_trtexec_and_tritonserver_lines(tmp_path, capsys):
    lib = tmp_path / "libinfgen_trt_plugins.so"
    lib.write_bytes(b"\x7fELF")
    assert trt_main(["--preset", "tiny", "--max-res", "1024", "--dry-run", "--engine-dir", str(tmp_path / "e"),
                     "--plugin-lib", str(lib)]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "--dynamicPlugins=" in ln)
    assert f"--dynamicPlugins={lib}" in line and "_trt.onnx" in line  # the TensorRT-flavour ONNX
    assert f"plugins={tmp_path / 'libinfgen_trt_plugins_autoreg.so'}" in out and "tritonserver" in out


def test_cli_plugin_lib_missing_file_is_named(tmp_path, capsys):
    rc = trt_main(["--preset", "tiny", "--max-res", "1024", "--dry-run", "--engine-dir", str(tmp_path),
                   "--plugin-lib", str(tmp_path / "nope.so")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error:") and "nope.so" in err[0]


def test_triton_repo_config_matches_the_export_spec():
    """native/triton_repo's config.pbtxt names the ONNX inputs and output, with their ranks and
    dynamic dims (-1) where export/onnx.py makes them dynamic."""
    text = (ROOT / "native" / "triton_repo" / "infgen_trt" / "config.pbtxt").read_text()
    text = re.sub(r"#.*", "", text)
    assert re.search(r'platform:\s*"tensorrt_plan"', text) and re.search(r"max_batch_size:\s*0", text)
    entries = re.findall(r'name:\s*"(\w+)"\s*data_type:\s*(\w+)\s*dims:\s*\[([^\]]*)\]', text)
    dims = {name: [int(d) for d in ds.split(",")] for name, _, ds in entries}
    assert [n for n, _, _ in entries] == [*INPUTS, *OUTPUTS]
    assert all(t == "TYPE_FP32" for _, t, _ in entries)
    for name, dynamic in DYNAMIC_DIMS.items():
        assert all(dims[name][i] == -1 for i in dynamic), (name, dims[name])
    assert dims["image"] == [-1, 3, -1, -1] and dims["latent"][1] == 4
