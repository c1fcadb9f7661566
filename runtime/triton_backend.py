"""backend="triton": infgen.ref.decode over an op table of cuDNN channels-last convs and the
project's Triton kernels, with per-size caches and CUDA graphs. Nothing patches a module's forward.

  op table (triton_ops)  conv2d: cuDNN, channels-last, split into row bands past 2^31 elements
                         group_norm: infgen.kernels.groupnorm (fused GroupNorm+SiLU, split statistics;
                           no stats pass where the input's producer took them: carried_moments)
                         residual_add: infgen.kernels.groupnorm.add_stats (y = h + x and y's GroupNorm
                           statistics in one pass)
                         upsample2x: infgen.ref.decode.upsample_nearest2x (a broadcast copy)
                         cross_attention: infgen.kernels.attention.flash_attention
                         self_attention (mid block, head dim 512): infgen.kernels.attention_d512's
                           scores-once Gluon kernel on sm_90 in bf16/fp16 (d512_applies), else
                           infgen.kernels.attention.flash_attention (other GPUs, the interpreter,
                           and everywhere when INFGEN_D512=0: the kill switch, d512_enabled)
  query scale            softmax scale * log2(e) folded into every to_q the decode uses (weights and
                         bias, once, at load: fold_query_scale); the kernels run with q_prescaled=True
  per-size caches        mask tokens (infgen.kernels.inpe) + first block's queries per (H', W'); CUDA
                         graphs per (B, C, h_l, w_l, H', W') (infgen.runtime.cache.SizeCache)

On CUDA, repeated (B, h_l, w_l, H', W') replay a captured CUDA graph (cuda_graphs="auto" captures
up to 2048^2 outputs; at 4096^2 a graph's private memory pool would double peak memory). On the
CPU it runs only under TRITON_INTERPRET=1 (Triton's interpreter; tiny shapes only).
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os
import threading

import torch

from infgen.ref.banded import MAX_CONV_ELEMS, conv2d_banded, conv_split_rows
from infgen.ref.decode import Ops, mask_and_q0, run_stages, stage_fns, upsample_nearest2x
from infgen.ref.model import InfGen, copy_model
from infgen.runtime.backend import Backend
from infgen.runtime.cache import SizeCache

GRAPH_AUTO_MAX_PIXELS = 2048 * 2048


def unavailable_reason(device) -> str | None:
    """Why backend="triton" cannot run on `device`, or None when it can."""
    device = torch.device(device)
    if importlib.util.find_spec("triton") is None:
        return "the triton package is not installed (pip install triton); use backend='torch'"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA device is available; use backend='torch' on the CPU"
        if os.environ.get("TRITON_INTERPRET", "0") == "1":
            return "TRITON_INTERPRET=1 makes Triton run kernels on the CPU only; unset it for CUDA"
        return None
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET", "0") == "1":
            return None
        return ("backend='triton' needs a CUDA device; on the CPU it runs only in Triton's interpreter "
                "(TRITON_INTERPRET=1, tiny sizes, slow); use backend='torch' on the CPU")
    return f"device {device} is not supported; use backend='torch'"


def triton_available(device) -> bool:
    """Whether backend="triton" can run on this device (see unavailable_reason)."""
    return unavailable_reason(device) is None


def carry_moments(y: torch.Tensor, moments) -> torch.Tensor:
    """Attach y's GroupNorm chunk moments (infgen.kernels.groupnorm.Moments, taken by the kernel that
    wrote y) to y, for the next group_norm on y to use instead of a stats pass. Returns y."""
    y._infgen_moments = (y.data_ptr(), moments)
    return y


def carried_moments(x: torch.Tensor):
    """The moments carry_moments attached to x, removed (each is used once), or None. Sound because
    the decode writes no tensor in place after its producer took its moments except residual_add's
    h, which carries fresh ones (inference tensors have no version counter to check)."""
    m = x.__dict__.pop("_infgen_moments", None)
    return m[1] if m is not None and m[0] == x.data_ptr() else None


def conv2d(x: torch.Tensor, conv: torch.nn.Conv2d, max_elems: int = MAX_CONV_ELEMS) -> torch.Tensor:
    """conv(x) for a stride-1 conv with symmetric 'same' padding; when the input or output has
    more than max_elems elements, the rows are split into bands (with a halo of k//2 rows), each
    under the limit, so no kernel indexes past int32. x: (B, Cin, H, W) -> (B, Cout, H, W).
    Each band is stored into the output by add_stats (a copy that takes the output's GroupNorm
    statistics on the way: the GroupNorm that reads it next skips its stats pass)."""
    B, Cin, H, W = x.shape
    Cout, k = conv.out_channels, conv.kernel_size[0]
    if max(x.numel(), B * Cout * H * W) <= max_elems:
        return conv(x)
    if conv.stride != (1, 1) or conv.padding != (k // 2, conv.kernel_size[1] // 2) or conv.groups != 1:
        raise ValueError(f"banded conv needs stride 1, 'same' padding and groups 1, got {conv}")
    from infgen.kernels.groupnorm import Moments, add_stats
    cl = x.is_contiguous(memory_format=torch.channels_last)
    out = torch.empty((B, Cout, H, W), device=x.device, dtype=x.dtype,
                      memory_format=torch.channels_last if cl else torch.contiguous_format)
    moments = []

    def write(out: torch.Tensor, r0: int, band: torch.Tensor) -> None:  # band (B, Cout, rows, W) -> out's rows
        band = band.contiguous(memory_format=torch.channels_last)  # a no-op for cuDNN's channels-last output
        moments.append(add_stats(band, None, out[:, :, r0:r0 + band.shape[2]])[1])

    # bands of views with their halo, zero-padded by the conv itself (infgen.ref.banded, docs/anysize.md)
    out = conv2d_banded(conv, x, conv_split_rows(B, Cin, Cout, W, k, max_elems), x.device, x.device, out,
                        write=write if cl else None)
    return carry_moments(out, Moments.cat(moments)) if moments else out


def query_projections(model: InfGen) -> dict[str, tuple[torch.nn.Linear, int]]:
    """The decoder's query projections the triton backend pre-scales: module name -> (to_q, the
    head dim of the attention it feeds): each cross-attention block's (d / num_heads) and the mid
    block's self-attention (one head: its width)."""
    dec = model.decoder
    out = {f"decoder.blocks.{i}.to_q": (b.to_q, b.to_q.out_features // b.num_heads) for i, b in enumerate(dec.blocks)}
    for i, a in enumerate(dec.mid_block.attentions):
        out[f"decoder.mid_block.attentions.{i}.to_q"] = (a.to_q, a.to_q.out_features)
    return out


@torch.no_grad()
def fold_query_scale(copy: InfGen, source: InfGen) -> None:
    """Pre-scale the queries: each query projection of `copy` (query_projections) gets weight and
    bias = source's * (1 / sqrt(head dim)) * log2(e), computed in fp32 from `source`'s weights and
    rounded once to the copy's dtype, so the attention kernels run with q_prescaled=True (no
    multiply per score). Everything that reads the copy's to_q (the decode, the cached first-block
    queries q0) then sees pre-scaled queries."""
    from infgen.kernels.attention import LOG2E
    src = query_projections(source)
    for name, (lin, head_dim) in query_projections(copy).items():
        f = LOG2E / math.sqrt(head_dim)
        ref = src[name][0]
        lin.weight.copy_(ref.weight.detach().to(lin.weight.device, torch.float32) * f)
        if lin.bias is not None:
            lin.bias.copy_(ref.bias.detach().to(lin.bias.device, torch.float32) * f)


def triton_ops(q_prescaled: bool = True) -> Ops:
    """The triton backend's op table. Import kernels only after TRITON_INTERPRET is settled.
    q_prescaled: the queries reaching the attentions carry scale * log2(e) (fold_query_scale), as
    in the backend; False gives the plain table (queries as the reference computes them)."""
    from functools import partial

    from infgen.kernels.attention import flash_attention
    from infgen.kernels.groupnorm import add_stats, group_norm_silu

    def group_norm(norm: torch.nn.GroupNorm, x: torch.Tensor, silu: bool) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)  # (B, C, H, W), a no-op on the decode's path
        return group_norm_silu(x, norm.weight, norm.bias, norm.num_groups, norm.eps, silu,
                               moments=carried_moments(x))

    def residual_add(h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # h (B, C, H, W) += x, in place
        cl = torch.channels_last
        return carry_moments(*add_stats(h.contiguous(memory_format=cl), x.contiguous(memory_format=cl)))

    cross = partial(flash_attention, q_prescaled=q_prescaled)
    return Ops(conv2d=lambda conv, x: conv2d(x, conv), group_norm=group_norm, upsample2x=upsample_nearest2x,
               cross_attention=cross, self_attention=partial(self_attention, q_prescaled=q_prescaled),
               residual_add=residual_add)


def self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_prescaled: bool = False) -> torch.Tensor:
    """The mid block's attention, q, k, v (B, 1, N, C) -> (B, 1, N, C), scale 1/sqrt(C): the
    scores-once kernel (infgen.kernels.attention_d512) where it applies (C = 512, bf16/fp16, an sm_90
    GPU) and INFGEN_D512 is not 0, else the tl.dot flash kernel (other GPUs, other widths, fp32, the
    interpreter, the switch off)."""
    from infgen.kernels.attention import flash_attention
    d512 = _d512_module() if d512_enabled() else None
    if d512 is not None and d512.d512_applies(q, k, v):
        return d512.flash_attention_d512(q, k, v, q_prescaled=q_prescaled)
    return flash_attention(q, k, v, q_prescaled=q_prescaled)


D512_SWITCH = "INFGEN_D512"


def d512_enabled() -> bool:
    """False when INFGEN_D512=0: the kill switch for the scores-once kernel (never run on a GPU yet;
    scripts/gpu_check.sh sets it when its smoke test fails). Read at every call, so it also holds
    for a backend built before it was set (a captured CUDA graph keeps the kernel it captured)."""
    value = os.environ.get(D512_SWITCH, "1").strip()
    if value not in ("0", "1", ""):
        raise ValueError(f"{D512_SWITCH} must be 0 (off) or 1 (on, the default), got {value!r}")
    return value != "0"


@functools.lru_cache(maxsize=1)
def _d512_module():
    """infgen.kernels.attention_d512, or None on a triton without Gluon's Hopper API (< 3.6): the mid
    block then runs the tl.dot kernel everywhere."""
    try:
        from infgen.kernels import attention_d512
    except ImportError:
        return None
    return attention_d512


class TritonBackend(Backend):
    """The decode over triton_ops() on the backend's own channels-last copy of the weights.

    options: cuda_graphs: "auto" | True | False (CUDA only); cache_size: grids kept in each cache."""

    name = "triton"
    supports_banded = True
    memory_model = "triton"  # fused GroupNorm, convs split past 2^31 elements

    def __init__(self, model: InfGen, device: torch.device, dtype: torch.dtype,
                 cuda_graphs="auto", cache_size: int = 4):
        device = torch.device(device)
        reason = unavailable_reason(device)
        if reason:
            raise ValueError(f"backend='triton' is not available on {device}: {reason}")
        if cuda_graphs not in ("auto", True, False):
            raise ValueError(f"cuda_graphs must be 'auto', True or False, got {cuda_graphs!r}")
        if cuda_graphs is True and device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs a CUDA device, got {device}")
        self.tokens = SizeCache(cache_size)  # (H', W') -> (mask tokens (1, N, d), first block's queries)
        self.graphs = SizeCache(cache_size)  # (B, C, h_l, w_l, H', W') -> (graph, in, out, kept tensors, lock)
        # Imported here: the kernels module decides interpreter vs. compiled when it is imported.
        from infgen.kernels import attention, inpe
        if device.type == "cuda" and attention.is_interpreted(attention.attn_fwd_kernel):
            raise ValueError("kernels were imported with TRITON_INTERPRET=1; restart without it for CUDA")
        if device.type == "cpu" and not attention.is_interpreted(attention.attn_fwd_kernel):
            raise ValueError("kernels were imported before TRITON_INTERPRET=1 was set; set it before "
                             "importing kernels or infgen.runtime.triton_backend, or use backend='torch'")
        self.k_inpe = inpe
        self.ops = triton_ops()
        self.device, self.dtype = device, dtype
        self.model = copy_model(model, device, dtype, channels_last=True)
        fold_query_scale(self.model, model)  # the kernels then run with q_prescaled=True
        self.cfg = model.config
        self.cuda_graphs = cuda_graphs if device.type == "cuda" else False

    def mask_and_q0(self, Hp: int, Wp: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mask tokens (1, N, d) (INPE kernel) and the first block's queries (1, N, d) for a grid, cached."""
        def make():
            dec = self.model.decoder
            with torch.no_grad():
                mask = self.k_inpe.inpe_module(Hp, Wp, dec.mask_pos, add=dec.mask_token)[None]  # (1, N, d)
                return mask_and_q0(self.model, Hp, Wp, mask)
        return self.tokens.get_or_make((Hp, Wp), make)

    def stages(self, Hp: int, Wp: int) -> list[tuple[str, object]]:
        """The decode as (name, fn) stages; composed on the scaled latent they equal run(z, Hp, Wp).
        The latent enters channels-last and the image leaves contiguous."""
        mask, q0 = self.mask_and_q0(Hp, Wp)
        (n0, tokens), mid, (n2, up) = stage_fns(self.ops, self.model, Hp, Wp, mask, q0)
        return [(n0, lambda z: tokens(z.contiguous(memory_format=torch.channels_last))), mid,
                (n2, lambda x: up(x).contiguous())]

    def _run_eager(self, z: torch.Tensor, Hp: int, Wp: int) -> torch.Tensor:
        return run_stages(self.stages(Hp, Wp), z)

    def _use_graph(self, Hp: int, Wp: int) -> bool:
        if self.cuda_graphs == "auto":
            return Hp * Wp * self.cfg.upscale ** 2 <= GRAPH_AUTO_MAX_PIXELS
        return bool(self.cuda_graphs)

    def _capture(self, z: torch.Tensor, Hp: int, Wp: int) -> tuple:
        static_in = z.clone()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):  # warm-up: compiles kernels, fills the token cache
            self._run_eager(static_in, Hp, Wp)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._run_eager(static_in, Hp, Wp)
        # The graph reads the cached mask tokens by address: keep them alive with the graph even
        # if the token cache evicts them.
        # The lock serialises copy-in, replay and copy-out: threads share the static buffers.
        return graph, static_in, static_out, self.mask_and_q0(Hp, Wp), threading.Lock()

    @torch.inference_mode()
    def run(self, z: torch.Tensor, Hp: int, Wp: int) -> torch.Tensor:
        """z: scaled latent (B, C, h_l, w_l) float32 -> image (B, 3, 8H', 8W') in the compute dtype."""
        if not self._use_graph(Hp, Wp):
            return self._run_eager(z, Hp, Wp)
        graph, static_in, static_out, _, lock = self.graphs.get_or_make((*z.shape, Hp, Wp),
                                                                        lambda: self._capture(z, Hp, Wp))
        with lock:  # an entry evicted meanwhile stays valid: this call holds its buffers
            static_in.copy_(z)
            graph.replay()
            return static_out.clone()
