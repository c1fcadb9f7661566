"""Row-sharded decode across ranks on torch.distributed (NCCL on CUDA, gloo on the CPU).

    torchrun --nproc-per-node N -m infgen.runtime.distributed z.npy --size 2048x1024 4096x2048 --preset paper -o out.png

Rank r owns a contiguous run of token-grid rows (`split_rows`: sizes differ by at most one, so odd
splits are fine) and keeps it through the whole decode: every activation is (B, C, rows_r * s, W)
at scale s. The decode is the one in infgen_ref/decode.py, run with this module's ops table:

  tokens          each rank computes the mask tokens of its rows (cross-attention split by query
                  rows; K/V from the latent, which every rank holds, so this stage's convs are the
                  plain ones on the whole latent: the stage runs with TORCH_OPS)
  conv2d          3x3 convs exchange one halo row with each neighbour (isend/irecv), convolve the
                  shard with zero padding, then recompute the one or two edge rows that the padding
                  got wrong from a 3-row piece; 1x1 convs are local
  group_norm      local (count, sum, sum of squares) per (batch, group) in float64, all-reduced
  self_attention  the mid block's K and V all-gathered (padded to the largest shard: gloo's
                  all_gather needs equal sizes); each rank's queries attend to all keys
  upsample2x      local (nearest 2x of rows stays on the rank that owns them)

Rank 0 gathers the image. `decode_distributed` is the API; the process group must be initialised.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from infgen.ref.banded import apply_affine, band_stats, norm_affine
from infgen.ref.decode import TORCH_OPS, Ops


def split_rows(n: int, world: int) -> list[tuple[int, int]]:
    """Rows 0..n split into `world` contiguous runs [(r0, r1), ...], sizes differing by at most one."""
    if world < 1 or n < world:
        raise ValueError(f"cannot split {n} token-grid rows over {world} ranks: each rank needs at least one row")
    base, extra = divmod(n, world)
    out, r0 = [], 0
    for r in range(world):
        r1 = r0 + base + (r < extra)
        out.append((r0, r1))
        r0 = r1
    return out


# ----------------------------------------------------------------------------- collectives
def halo_rows(x: torch.Tensor, p: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The p rows above and below this rank's shard x (B, C, h, W), from its neighbours (None at
    the image's top/bottom edge). Shards must have at least p rows."""
    rank, world = dist.get_rank(), dist.get_world_size()
    B, C, h, W = x.shape
    if h < p:
        raise ValueError(f"rank {rank}'s shard has {h} rows, fewer than the halo {p}")
    top = x.new_empty((B, C, p, W)) if rank > 0 else None
    bot = x.new_empty((B, C, p, W)) if rank < world - 1 else None
    reqs = []
    if rank > 0:
        reqs += [dist.isend(x[:, :, :p].contiguous(), rank - 1), dist.irecv(top, rank - 1)]
    if rank < world - 1:
        reqs += [dist.isend(x[:, :, h - p:].contiguous(), rank + 1), dist.irecv(bot, rank + 1)]
    for q in reqs:
        q.wait()
    return top, bot


def all_gather_rows(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Concatenate every rank's t along dim (sizes may differ there): pad to the largest, all_gather, strip."""
    world = dist.get_world_size()
    n = torch.tensor([t.shape[dim]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    pad_shape = list(t.shape)
    pad_shape[dim] = max(sizes) - t.shape[dim]
    padded = torch.cat([t, t.new_zeros(pad_shape)], dim).contiguous() if pad_shape[dim] else t.contiguous()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p.narrow(dim, 0, s) for p, s in zip(parts, sizes)], dim)


# ----------------------------------------------------------------------------- the ops
def extended_rows(x: torch.Tensor, top, bot, p: int, a: int, b: int) -> torch.Tensor:
    """Rows a..b-1 of [top halo; x; bottom halo] (halo rows are zeros at the image edge): a small copy."""
    B, C, h, W = x.shape
    zeros = x.new_zeros((B, C, p, W))
    parts = []
    if a < p:
        parts.append((zeros if top is None else top)[:, :, a:min(b, p)])
    lo, hi = max(a, p) - p, min(b, h + p) - p
    if hi > lo:
        parts.append(x[:, :, lo:hi])
    if b > h + p:
        parts.append((zeros if bot is None else bot)[:, :, max(a, h + p) - h - p: b - h - p])
    return torch.cat(parts, 2)


def conv2d(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) on a row shard x (B, Cin, h, W) of the whole activation -> (B, Cout, h, W)."""
    kh, kw = conv.kernel_size
    p = kh // 2
    if p == 0:
        return conv(x)
    if conv.stride != (1, 1) or conv.padding != (p, kw // 2) or conv.dilation != (1, 1):
        raise ValueError(f"sharded conv needs a stride-1 'same' conv, got {conv}")
    top, bot = halo_rows(x, p)
    y = conv(x)  # (B, Cout, h, W): rows within p of a shard edge used zeros for the neighbour's rows
    h = x.shape[2]
    fix = ([(0, min(p, h))] if top is not None else []) + ([(max(h - p, 0), h)] if bot is not None else [])
    for a, b in fix:  # recompute those output rows from a (b - a + 2p)-row piece with the real halo
        y[:, :, a:b] = F.conv2d(extended_rows(x, top, bot, p, a, b + 2 * p), conv.weight, conv.bias,
                                padding=(0, conv.padding[1]))
    return y


def group_norm(norm: nn.GroupNorm, x: torch.Tensor, silu: bool) -> torch.Tensor:
    """GroupNorm (+ SiLU) of a row shard with the whole image's statistics (all-reduced)."""
    stats = band_stats(x, norm.num_groups)  # (3, B, G) float64: this shard's count, sum, sum of squares
    dist.all_reduce(stats)
    y = apply_affine(x, *norm_affine(stats, norm))  # (B, C, h, W) float32
    return (F.silu(y) if silu else y).to(x.dtype)


def self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k, v: this rank's tokens (B, 1, n_r, C); attends to every rank's keys."""
    return F.scaled_dot_product_attention(q, all_gather_rows(k, 2), all_gather_rows(v, 2))


def sharded_ops() -> Ops:
    """TORCH_OPS with the sharded conv, GroupNorm and self-attention (nearest 2x and the
    cross-attention are local: the plain ops)."""
    return dataclasses.replace(TORCH_OPS, conv2d=conv2d, group_norm=group_norm, self_attention=self_attention)


# ----------------------------------------------------------------------------- decode
@torch.inference_mode()
def decode_distributed(model, z: torch.Tensor, h: int, w: int) -> torch.Tensor | None:
    """Scaled latent (B, C, h_l, w_l), the same on every rank -> image (B, 3, h, w) on rank 0, None
    elsewhere. The model (same weights on every rank) decides dtype; z and the model on one device."""
    from infgen.ref import decode as D
    from infgen.ref.model import check_latent, check_size, token_grid
    h, w = check_size(h, w, model.config)
    z = check_latent(z, model.config)
    Hp, Wp = token_grid(h, w, model.config)
    rank, world = dist.get_rank(), dist.get_world_size()
    r0, r1 = split_rows(Hp, world)[rank]
    dec = model.decoder
    mask = dec.mask_tokens(Hp, Wp)[:, r0 * Wp: r1 * Wp]  # (1, rows*W', d): this rank's query rows
    mask, q0 = D.mask_and_q0(model, Hp, Wp, mask)
    ops = sharded_ops()
    # tokens: the latent's convs run on the whole (replicated) latent, so this stage takes the plain
    # ops; its cross-attention is split by query rows through the mask slice.
    x = D.tokens(D.TORCH_OPS, model, z.to(model.dtype), Hp, Wp, mask, q0)  # (B, d, rows, W')
    img = D.up_blocks(ops, model, D.mid_block(ops, model, x))  # (B, 3, 8 rows, 8W')
    full = all_gather_rows(img.contiguous(), 2) if world > 1 else img
    return full[:, :, :h, :w] if rank == 0 else None


# ----------------------------------------------------------------------------- local launcher
def _worker(rank: int, world: int, port: int, fn, args, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        # pickled by value: torch.multiprocessing would pass tensors as file descriptors, which
        # vanish when this process exits before the parent reads them
        results.put((rank, pickle.dumps(fn(*args))))
    finally:
        dist.destroy_process_group()


def launch(fn, world: int, *args, timeout: float = 120.0) -> list:
    """Run fn(*args) on `world` local CPU processes in one gloo group (what torchrun does, for
    tests and benchmarks); returns each rank's result. fn must be importable (module level).
    Processes still running after `timeout` seconds are killed and TimeoutError is raised.
    The ranks are forked from multiprocessing's fork server, which imports torch once and is kept
    for later launches (a spawned rank imports torch itself, about 2 s each; the server touches no
    CUDA, so ranks may)."""
    import queue
    import socket
    import time
    import torch.multiprocessing as mp
    if not isinstance(world, int) or world < 1:
        raise ValueError(f"world must be an int >= 1, got {world!r}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "infgen.runtime.distributed"])
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, world, port, fn, args, results)) for r in range(world)]
    for p in procs:
        p.start()
    out, deadline = {}, time.monotonic() + timeout
    try:
        while len(out) < world:
            try:
                r, v = results.get(timeout=1.0)
                out[r] = pickle.loads(v)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{world} ranks did not finish in {timeout} s") from None
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"a rank exited with status {dead[0].exitcode}")
    finally:
        for p in procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
    return [out[r] for r in range(world)]


PROG = "torchrun --nproc-per-node N -m infgen.runtime.distributed"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """decode's flags (runtime/cli/decode.py), less --backend (the sharded torch ops are the backend)
    and the memory flags (ranks, not bands, split the work)."""
    from infgen.runtime.cli.options import add_model_options, add_size_option
    p.add_argument("latent", help="latent file: .npy, .pt/.pth (tensor or {'latent': tensor}) or .safetensors")
    add_size_option(p, required=True)
    p.add_argument("-o", "--out", metavar="FILE",
                   help="output image (.png/.jpg); several sizes add _WxH to the name, a batch adds _0, _1, ... "
                        "(default: <latent stem>.<format>)")
    p.add_argument("--format", choices=("png", "jpg"), default="png", help="format when --out is not given")
    add_model_options(p, backends=(), device_default=None,
                      device_help="cpu or cuda: each rank takes cuda:LOCAL_RANK (default: cuda when present, else cpu)")


def build_parser() -> argparse.ArgumentParser:
    from infgen.cli import tool_parser
    return tool_parser(PROG, "Row-sharded InfGen decode over torch.distributed ranks (NCCL on CUDA, gloo on the CPU).",
                       add_arguments)


def main(argv=None) -> int:
    """torchrun entry point: every rank loads the model and the latent, rank 0 writes the images.
    User errors (bad size, paths, device) are one `error:` line and exit status 2 on each rank,
    before the process group starts."""
    from infgen.cli import guarded
    return guarded(_main, build_parser().parse_args(argv))


def _main(args) -> int:
    from pathlib import Path

    from infgen.ref.config import PRESETS, parse_dtype
    from infgen.ref.model import check_size
    from infgen.ref.weights import TRAINED_PRESETS
    from infgen.runtime.cli.decode import out_path
    from infgen.runtime.cli.options import RANDOM_NOTICE, model_spec
    from infgen.runtime.engine import InfGenEngine, resolve_model
    from infgen.runtime.io import IMAGE_SUFFIXES, check_writable, load_latent
    device_type = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda (each rank takes cuda:LOCAL_RANK), got {args.device!r}")
    dtype = parse_dtype(args.dtype or ("bf16" if device_type == "cuda" else "fp32"))
    several = len(args.size) > 1
    outs = [out_path(args.out, Path(args.latent).stem, size, several, args.format) for size in args.size]
    for out in outs:  # every output path checked before any work
        check_writable(out, IMAGE_SUFFIXES, "--out")
    spec = model_spec(args)
    model = resolve_model(spec)
    for size in args.size:  # every size checked before the first decode
        check_size(*size, model.config)
    z = torch.as_tensor(load_latent(args.latent)).to(torch.float32)
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    try:
        rank = dist.get_rank()
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if device_type == "cuda" else "cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        model = model.to(device=device, dtype=dtype)
        if rank == 0 and spec in PRESETS and spec not in TRAINED_PRESETS:
            print(f"note: {RANDOM_NOTICE}", file=sys.stderr)
        for (h, w), out in zip(args.size, outs):
            img = decode_distributed(model, z.to(device), h, w)
            if img is not None:
                paths = InfGenEngine.save(img.float().clamp(-1, 1), out)
                print(f"wrote {', '.join(map(str, paths))} ({w}x{h}, {dist.get_world_size()} ranks)")
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
