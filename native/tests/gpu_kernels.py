"""ctest infgen_gpu_kernels: libinfgen_kernels' AOT kernels on a GPU, called through its C API
(ctypes), against float64 host references. Exits 77 (ctest's skip code) without a CUDA device
with compute capability 9.0, so it is skipped in CI and run by scripts/gpu_check.sh.

    python native/tests/gpu_kernels.py --lib build/libinfgen_kernels.so

Tolerance as in tests/test_kernels_*.py: err(kernel) <= 2 * err(torch in the same dtype) + atol,
both against float64 on the host; outputs are poisoned with NaN first, so an unwritten element fails.
"""
from __future__ import annotations

import argparse
import ctypes
import math
import sys

SKIP = 77
ATOL = {"bf16": 1e-2, "fp16": 2e-3}
DTYPE_CODE = {"bf16": 0, "fp16": 1}
STRIDES = ctypes.c_int64 * 3


def bind(lib) -> None:
    p, i32 = ctypes.c_void_p, ctypes.c_int32
    lib.infgen_attention_fwd.argtypes = [ctypes.c_int, p, p, p, p, i32, i32, i32, i32, i32,
                                         STRIDES, STRIDES, STRIDES, STRIDES, ctypes.c_float, p]
    lib.infgen_inpe.argtypes = [ctypes.c_int, p, p, p, p, p, p, p, i32, i32, i32, i32, p]
    lib.infgen_inpe_mlp.argtypes = [ctypes.c_int, p, p, p, p, p, p, p, i32, i32, i32, p]
    lib.infgen_last_error.restype = ctypes.c_char_p


def inpe_form(lib) -> str:
    """"inpe" (features in the kernel: infgen_inpe) or "inpe_mlp" (given features: infgen_inpe_mlp)."""
    from check_library import read_table
    kinds = {row["kind"] for row in read_table(lib)}
    return "inpe_mlp" if 2 in kinds else "inpe"


def bhmd_strides(t) -> STRIDES:
    """{batch, head, row} strides of a (B, H, L, D) view."""
    return STRIDES(t.stride(0), t.stride(1), t.stride(2))


def attention_call(lib, q, k, v, o, scale, stream) -> int:
    """q, k, v, o: (B, H, L, D) CUDA views with unit last stride."""
    B, H, M, D = q.shape
    return lib.infgen_attention_fwd(DTYPE_CODE[dt_name(q)], q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr(),
                                    B, H, M, k.shape[2], D, bhmd_strides(q), bhmd_strides(k), bhmd_strides(v),
                                    bhmd_strides(o), scale, stream.cuda_stream)


def dt_name(t) -> str:
    import torch
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}[t.dtype]


def check_attention(lib, B, H, M, N, D, dtype, layout, stream) -> str | None:
    """One case; returns a failure message or None."""
    import torch
    from infgen.kernels.attention import attention_ref
    g = torch.Generator(device="cuda").manual_seed(B * 7919 + M * 31 + N + D)
    if layout == "bmhd":   # head-split views of (B, L, H*D) projections, as the cross-attention uses
        q = torch.randn(B, M, H, D, device="cuda", generator=g).to(dtype).transpose(1, 2)
        k = torch.randn(B, N, H, D, device="cuda", generator=g).to(dtype).transpose(1, 2)
        v = torch.randn(B, N, H, D, device="cuda", generator=g).to(dtype).transpose(1, 2)
    else:                  # "broadcast": one query set for the whole batch (batch stride 0)
        q = torch.randn(1, H, M, D, device="cuda", generator=g).to(dtype).expand(B, H, M, D)
        k = torch.randn(B, H, N, D, device="cuda", generator=g).to(dtype)
        v = torch.randn(B, H, N, D, device="cuda", generator=g).to(dtype)
    o = torch.full((B, M, H, D), float("nan"), device="cuda", dtype=dtype).transpose(1, 2)
    scale = 1.0 / math.sqrt(D)
    torch.cuda.synchronize()  # inputs were made on the default stream; the library runs on `stream`
    status = attention_call(lib, q, k, v, o, scale, stream)
    stream.synchronize()
    name = f"attention B={B} H={H} M={M} N={N} D={D} {dt_name(q)} {layout}"
    if status != 0:
        return f"{name}: status {status}: {lib.infgen_last_error().decode()}"
    ref = attention_ref(q.double().cpu(), k.double().cpu(), v.double().cpu(), scale)
    err = (o.double().cpu() - ref).abs().max().item()
    err_torch = (attention_ref(q, k, v, scale).double().cpu() - ref).abs().max().item()
    bound = 2 * err_torch + ATOL[dt_name(q)]
    print(f"{name}: max err {err:.2e} (torch {dt_name(q)} {err_torch:.2e}, bound {bound:.2e})")
    return None if err <= bound else f"{name}: error {err:.3e} > {bound:.3e}"


def check_inpe(lib, gh, gw, dtype, with_add, stream) -> str | None:
    import torch
    from infgen.ref.inpe import INPE
    from infgen.kernels.inpe import inpe_embed_ref
    torch.manual_seed(gh * 100 + gw)
    m = INPE(512, 64, scale=1.0, seed=0)
    w = [t.detach().to("cuda", dtype).contiguous() for t in (m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias)]
    add = (torch.randn(512) * 0.02).to("cuda", dtype) if with_add else None
    fb = m.B.to("cuda", torch.float32).contiguous()
    out = torch.full((gh * gw, 512), float("nan"), device="cuda", dtype=dtype)
    add_ptr = add.data_ptr() if with_add else None
    torch.cuda.synchronize()  # inputs were made on the default stream; the library runs on `stream`
    if inpe_form(lib) == "inpe":
        status = lib.infgen_inpe(DTYPE_CODE[dt_name(out)], out.data_ptr(), fb.data_ptr(), *(t.data_ptr() for t in w),
                                 add_ptr, gh, gw, 64, 512, stream.cuda_stream)
    else:
        from infgen.ref.inpe import fourier_features, grid_coords, sphere
        feat = fourier_features(sphere(grid_coords(gh, gw, device="cuda")), fb).to(dtype).contiguous()  # (T, 128)
        torch.cuda.synchronize()
        status = lib.infgen_inpe_mlp(DTYPE_CODE[dt_name(out)], out.data_ptr(), feat.data_ptr(),
                                     *(t.data_ptr() for t in w), add_ptr, gh * gw, 64, 512, stream.cuda_stream)
    stream.synchronize()
    name = f"{inpe_form(lib)} {gh}x{gw} {dt_name(out)} add={with_add}"
    if status != 0:
        return f"{name}: status {status}: {lib.infgen_last_error().decode()}"
    ref = inpe_embed_ref(gh, gw, m.B.double(), *(t.double().cpu() for t in w),
                         add.double().cpu() if with_add else None)
    err = (out.double().cpu() - ref).abs().max().item()
    same = inpe_embed_ref(gh, gw, m.B, *w, add).double().cpu()
    err_torch = (same - ref).abs().max().item()
    bound = 2 * err_torch + ATOL[dt_name(out)]
    print(f"{name}: max err {err:.2e} (torch {dt_name(out)} {err_torch:.2e}, bound {bound:.2e})")
    return None if err <= bound else f"{name}: error {err:.3e} > {bound:.3e}"


def check_refusal(lib, stream) -> str | None:
    """A row stride that is not a multiple of 16 is refused with status 1, before any launch."""
    import torch
    q = torch.zeros(1, 1, 64, 72, device="cuda", dtype=torch.bfloat16)[..., :64]  # row stride 72
    status = attention_call(lib, q, q, q, q.clone(), 0.125, stream)
    msg = lib.infgen_last_error().decode()
    return None if status == 1 and "q_strides[2]" in msg else f"row stride 72: status {status} ({msg})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lib", required=True)
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("skipped: torch is not installed (the test allocates and checks with it)")
        return SKIP
    if not torch.cuda.is_available():
        print("skipped: no CUDA device (torch.cuda.is_available() is False)")
        return SKIP
    cc = torch.cuda.get_device_capability()
    if cc != (9, 0):
        print(f"skipped: the device has compute capability {cc[0]}.{cc[1]}; the library holds sm_90a kernels")
        return SKIP
    lib = ctypes.CDLL(args.lib)
    bind(lib)
    torch.cuda.init()
    stream = torch.cuda.Stream()  # a non-default stream: the library must launch on the one it is given
    cases = [(2, 8, 1025, 4097, 64, "bmhd"), (1, 8, 333, 4096, 64, "broadcast"), (2, 1, 1000, 1000, 512, "bmhd"),
             (1, 1, 777, 1300, 512, "bmhd"), (3, 1, 129, 65, 512, "broadcast"),
             (1, 8, 1024, 4096, 64, "bmhd"), (2, 1, 1024, 2048, 512, "bmhd")]  # last two: the rows16 variants
    failures, n = [], 0
    for dtype in (torch.bfloat16, torch.float16):
        for B, H, M, N, D, layout in cases:
            failures.append(check_attention(lib, B, H, M, N, D, dtype, layout, stream))
        for gh, gw, with_add in ((45, 80, True), (17, 33, False)):
            failures.append(check_inpe(lib, gh, gw, dtype, with_add, stream))
    failures.append(check_refusal(lib, stream))
    n = len(failures)
    failures = [f for f in failures if f]
    for f in failures:
        print("FAIL", f)
    print(f"{n - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
