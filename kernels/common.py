"""Shared launcher pieces for the Triton kernels: input validation, interpreter detection, and
`Launch`, one kernel launch as data (what a launcher runs and what benchmarks/compile_report.py compiles).

Nothing here imports triton: the kernel files do, so `import infgen.kernels.common` stays cheap.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def is_interpreted(kernel) -> bool:
    """Whether this @triton.jit kernel was decorated in interpreter mode (TRITON_INTERPRET is read
    when the decorator runs, so setting it after `import kernels.*` has no effect)."""
    return type(kernel).__name__ == "InterpretedFunction"


def check_device(kernel, *tensors: torch.Tensor, names: tuple[str, ...]) -> torch.device:
    """All tensors on one device, and one the kernel can run on: CUDA, or the CPU when the kernel
    runs in Triton's interpreter. Returns that device."""
    dev = tensors[0].device
    for t, n in zip(tensors, names):
        if t.device != dev:
            raise ValueError(f"{n} is on {t.device} but {names[0]} is on {dev}; put all inputs on one device")
    if dev.type == "cuda":
        if is_interpreted(kernel):
            raise ValueError("Triton kernels were imported with TRITON_INTERPRET=1, which runs them on "
                             "CPU tensors only; unset it before importing kernels to run on CUDA")
        return dev
    if dev.type == "cpu" and is_interpreted(kernel):
        return dev
    raise ValueError(f"inputs are on {dev}: the Triton kernels need CUDA tensors (or CPU tensors with "
                     f"TRITON_INTERPRET=1 set before importing kernels); on the CPU use the *_ref functions "
                     f"or backend='torch'")


def check_float(t, name: str, dtype: torch.dtype | None = None) -> None:
    """t is a tensor of a supported floating dtype (and of `dtype` when given)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} like the other inputs, got {t.dtype}")


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@dataclass
class Launch:
    """One kernel launch as data. The launchers build one and call it; benchmarks/compile_report.py builds the
    same object from meta tensors shaped like the runtime's call sites and compiles it for sm_90a,
    so the report compiles exactly the arguments, constexprs and options the launcher uses."""

    kernel: object                  # the @triton.jit function
    grid: tuple[int, ...]
    args: dict                      # runtime arguments by name: tensors, ints, floats
    constexprs: dict = field(default_factory=dict)  # constexpr arguments by name
    num_warps: int = 4
    num_stages: int | None = None   # None: Triton's default (3 on CUDA)

    def options(self) -> dict:
        opts = {"num_warps": self.num_warps}
        if self.num_stages is not None:
            opts["num_stages"] = self.num_stages
        return opts

    def __call__(self):
        return self.kernel[self.grid](**self.args, **self.constexprs, **self.options())
