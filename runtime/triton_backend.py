"""backend="triton": cuDNN convs in channels-last + the project's Triton kernels + per-size caches.

Built by walking the reference model's modules: each stage below is a plain function that calls
torch (convs, linears, layer norms) and the kernels (kernels.groupnorm, kernels.attention,
kernels.inpe) with that module's weights; nothing patches a module's forward.

  tokens+cross_attn  post_quant_conv, conv_in, conv_tokens (cuDNN) + latent INPE (kernel, cached
                     per latent grid); mask tokens + first block's queries (INPE kernel, cached per
                     (H', W')); N blocks: LayerNorm/linears (torch), flash cross-attention (kernel)
  mid_block          resnets with fused GroupNorm+SiLU; one-head d-512 self-attention (kernel)
  up_blocks          resnets, nearest 2x (a broadcast copy), convs; GroupNorm+SiLU head, conv_out

On CUDA, repeated (B, h_l, w_l, H', W') replay a captured CUDA graph (cuda_graphs="auto" captures
up to 2048^2 outputs; at 4096^2 a graph's private memory pool would double peak memory). On the
CPU it runs only under TRITON_INTERPRET=1 (Triton's interpreter; tiny shapes only).
"""
from __future__ import annotations

import importlib.util
import os
from collections import OrderedDict

import torch
import torch.nn.functional as F

from infgen_ref.model import InfGen

MAX_CONV_ELEMS = 2**31 - 1       # split convs whose input or output has more elements (int32 indexing)
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


def conv2d(x: torch.Tensor, conv: torch.nn.Conv2d, max_elems: int = MAX_CONV_ELEMS) -> torch.Tensor:
    """conv(x) for a stride-1 conv with symmetric 'same' padding; when the input or output has
    more than max_elems elements, the rows are split into bands (with a halo of k//2 rows), each
    under the limit, so no kernel indexes past int32. x: (B, Cin, H, W) -> (B, Cout, H, W)."""
    B, Cin, H, W = x.shape
    Cout, k = conv.out_channels, conv.kernel_size[0]
    if max(x.numel(), B * Cout * H * W) <= max_elems:
        return conv(x)
    if conv.stride != (1, 1) or conv.padding != (k // 2, conv.kernel_size[1] // 2) or conv.groups != 1:
        raise ValueError(f"banded conv needs stride 1, 'same' padding and groups 1, got {conv}")
    halo = k // 2
    rows = max(1, max_elems // (B * max(Cin, Cout) * W) - 2 * halo)
    out = torch.empty((B, Cout, H, W), device=x.device, dtype=x.dtype,
                      memory_format=torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
                      else torch.contiguous_format)
    for r0 in range(0, H, rows):
        r1 = min(H, r0 + rows)
        a, b = max(0, r0 - halo), min(H, r1 + halo)
        band = x[:, :, a:b]
        band = F.pad(band, (0, 0, halo - (r0 - a), halo - (b - r1)))  # zero rows only at the image edges
        out[:, :, r0:r1] = F.conv2d(band, conv.weight, conv.bias, padding=(0, conv.padding[1]))
    return out


def upsample_nearest2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest 2x as one broadcast copy that keeps channels-last (PyTorch's NHWC upsample kernel
    fails past 2^31 elements). (B, C, H, W) -> (B, C, 2H, 2W)."""
    B, C, H, W = x.shape
    nhwc = x.permute(0, 2, 3, 1)  # (B, H, W, C), a view for channels-last x
    y = nhwc[:, :, None, :, None, :].expand(B, H, 2, W, 2, C).reshape(B, 2 * H, 2 * W, C)
    return y.permute(0, 3, 1, 2)  # channels-last (B, C, 2H, 2W)


class TritonBackend:
    """The reference model's weights driven through cuDNN channels-last convs and Triton kernels.

    options: cuda_graphs: "auto" | True | False (CUDA only); cache_size: grids kept in the caches."""

    name = "triton"

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
        if not isinstance(cache_size, int) or cache_size < 1:
            raise ValueError(f"cache_size must be a positive int, got {cache_size!r}")
        # Imported here: the kernels module decides interpreter vs. compiled when it is imported.
        from kernels import attention, groupnorm, inpe
        self.k_attn, self.k_gn, self.k_inpe = attention, groupnorm, inpe
        if device.type == "cuda" and attention.is_interpreted(attention.attn_fwd_kernel):
            raise ValueError("kernels were imported with TRITON_INTERPRET=1; restart without it for CUDA")
        if device.type == "cpu" and not attention.is_interpreted(attention.attn_fwd_kernel):
            raise ValueError("kernels were imported before TRITON_INTERPRET=1 was set; set it before "
                             "importing kernels or runtime.triton_backend, or use backend='torch'")
        self.device, self.dtype = device, dtype
        self.model = model.to(device=device, dtype=dtype).eval()
        self.model.to(memory_format=torch.channels_last)
        self.cfg = model.config
        self.cuda_graphs = cuda_graphs if device.type == "cuda" else False
        self.cache_size = cache_size
        self.token_cache: OrderedDict = OrderedDict()   # (H', W') -> (mask tokens, first block's q)
        self.latent_pos_cache: OrderedDict = OrderedDict()  # (h_l, w_l) -> latent INPE
        self.graphs: OrderedDict = OrderedDict()        # (B, C, h_l, w_l, H', W') -> (graph, in, out)
        with torch.no_grad():  # load-time fused projections: K|V per block, Q|K|V in the mid block
            dec = self.model.decoder
            self.kv = [(torch.cat([b.to_k.weight, b.to_v.weight]), torch.cat([b.to_k.bias, b.to_v.bias]))
                       for b in dec.blocks]
            a = dec.mid_block.attentions[0]
            self.qkv = (torch.cat([a.to_q.weight, a.to_k.weight, a.to_v.weight]),
                        torch.cat([a.to_q.bias, a.to_k.bias, a.to_v.bias]))

    # ------------------------------------------------------------------ caches
    def _cached(self, cache: OrderedDict, key, make):
        if key not in cache:
            cache[key] = make()
            if len(cache) > self.cache_size:
                cache.popitem(last=False)
        cache.move_to_end(key)
        return cache[key]

    def mask_and_q0(self, Hp: int, Wp: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mask tokens (1, N, d) and the first block's queries (1, N, d) for a grid, cached."""
        def make():
            dec = self.model.decoder
            mask = self.k_inpe.inpe_module(Hp, Wp, dec.mask_pos, add=dec.mask_token)[None]  # (1, N, d)
            q0 = None
            if len(dec.blocks):
                b = dec.blocks[0]
                q0 = F.linear(F.layer_norm(mask, b.norm_q.normalized_shape, b.norm_q.weight, b.norm_q.bias,
                                           b.norm_q.eps), b.to_q.weight, b.to_q.bias)
            return mask, q0
        return self._cached(self.token_cache, (Hp, Wp), make)

    def latent_pos(self, h: int, w: int) -> torch.Tensor:
        return self._cached(self.latent_pos_cache, (h, w),
                            lambda: self.k_inpe.inpe_module(h, w, self.model.decoder.latent_pos))  # (hw, d)

    # ------------------------------------------------------------------ building blocks
    def gn(self, x: torch.Tensor, norm: torch.nn.GroupNorm, silu: bool = True) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
        return self.k_gn.group_norm_silu(x, norm.weight, norm.bias, norm.num_groups, norm.eps, silu)

    def resnet(self, x: torch.Tensor, r) -> torch.Tensor:
        h = conv2d(self.gn(x, r.norm1), r.conv1)
        h = conv2d(self.gn(h, r.norm2), r.conv2)
        if r.conv_shortcut is not None:
            x = conv2d(x, r.conv_shortcut)
        h += x
        return h

    def cross_block(self, i: int, blk, x: torch.Tensor, ctx: torch.Tensor, q0) -> torch.Tensor:
        """x: (B, N, d) mask tokens, ctx: (B, T, d) latent tokens -> (B, N, d)."""
        B, N, d = x.shape
        T, nh = ctx.shape[1], blk.num_heads
        hd = d // nh
        ln = lambda t, m: F.layer_norm(t, m.normalized_shape, m.weight, m.bias, m.eps)  # noqa: E731
        q = q0.expand(B, -1, -1) if (i == 0 and q0 is not None) else F.linear(ln(x, blk.norm_q), blk.to_q.weight, blk.to_q.bias)
        kv = F.linear(ln(ctx, blk.norm_kv), *self.kv[i])  # (B, T, 2d)
        k = kv[..., :d].view(B, T, nh, hd).transpose(1, 2)  # (B, h, T, hd), strided view
        v = kv[..., d:].view(B, T, nh, hd).transpose(1, 2)
        o = self.k_attn.flash_attention(q.view(q.shape[0], N, nh, hd).transpose(1, 2), k, v)  # (B, h, N, hd)
        x = x + F.linear(o.transpose(1, 2).reshape(B, N, d), blk.to_out.weight, blk.to_out.bias)
        return x + F.linear(F.gelu(F.linear(ln(x, blk.norm_mlp), blk.fc1.weight, blk.fc1.bias)),
                            blk.fc2.weight, blk.fc2.bias)

    def mid_attention(self, x: torch.Tensor, a) -> torch.Tensor:
        """One-head self-attention over all pixels with a residual. x: (B, C, H, W) channels-last."""
        B, C, H, W = x.shape
        h = self.gn(x, a.group_norm, silu=False).permute(0, 2, 3, 1).reshape(B, H * W, C)  # (B, HW, C) view
        qkv = F.linear(h, *self.qkv)  # (B, HW, 3C)
        q, k, v = (qkv[None, ..., j * C:(j + 1) * C].transpose(0, 1) for j in range(3))  # (B, 1, HW, C)
        o = self.k_attn.flash_attention(q, k, v)[:, 0]  # (B, HW, C)
        o = F.linear(o, a.to_out[0].weight, a.to_out[0].bias)
        return x + o.view(B, H, W, C).permute(0, 3, 1, 2)

    # ------------------------------------------------------------------ stages
    def stages(self, Hp: int, Wp: int) -> list[tuple[str, object]]:
        """The decode as (name, fn) stages; composed on the scaled latent they equal run(z, Hp, Wp)."""
        m, dec, cfg = self.model, self.model.decoder, self.cfg
        mask, q0 = self.mask_and_q0(Hp, Wp)

        def tokens(z):  # scaled latent (B, C, h, w) -> features (B, d, H', W') channels-last
            z = z.to(self.dtype).contiguous(memory_format=torch.channels_last) / cfg.scaling_factor
            x = dec.conv_tokens(dec.conv_in(m.post_quant_conv(z)))  # (B, d, h, w)
            B, d, h, w = x.shape
            ctx = x.permute(0, 2, 3, 1).reshape(B, h * w, d) + self.latent_pos(h, w)  # (B, T, d)
            t = mask.expand(B, -1, -1)
            for i, blk in enumerate(dec.blocks):
                t = self.cross_block(i, blk, t, ctx, q0)
            t = F.layer_norm(t, dec.norm_tokens.normalized_shape, dec.norm_tokens.weight,
                             dec.norm_tokens.bias, dec.norm_tokens.eps)
            return t.reshape(B, Hp, Wp, d).permute(0, 3, 1, 2)  # (B, d, H', W') channels-last

        def mid_block(x):
            mb = dec.mid_block
            x = self.resnet(x, mb.resnets[0])
            x = self.mid_attention(x, mb.attentions[0])
            return self.resnet(x, mb.resnets[1])

        def up_blocks(x):  # (B, d, H', W') -> (B, 3, 8H', 8W')
            for blk in dec.up_blocks:
                for r in blk.resnets:
                    x = self.resnet(x, r)
                if blk.upsamplers is not None:
                    x = conv2d(upsample_nearest2x(x), blk.upsamplers[0].conv)
            x = conv2d(self.gn(x, dec.conv_norm_out), dec.conv_out)
            return x.contiguous()

        return [("tokens+cross_attn", tokens), ("mid_block", mid_block), ("up_blocks", up_blocks)]

    def _run_eager(self, z: torch.Tensor, Hp: int, Wp: int) -> torch.Tensor:
        x = z
        for _, fn in self.stages(Hp, Wp):
            x = fn(x)
        return x

    def _use_graph(self, Hp: int, Wp: int) -> bool:
        if self.cuda_graphs == "auto":
            return Hp * Wp * self.cfg.upscale ** 2 <= GRAPH_AUTO_MAX_PIXELS
        return bool(self.cuda_graphs)

    @torch.inference_mode()
    def run(self, z: torch.Tensor, Hp: int, Wp: int) -> torch.Tensor:
        """z: scaled latent (B, C, h_l, w_l) float32 -> image (B, 3, 8H', 8W') in the compute dtype."""
        if not self._use_graph(Hp, Wp):
            return self._run_eager(z, Hp, Wp)
        key = (*z.shape, Hp, Wp)
        if key not in self.graphs:
            static_in = z.clone()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):  # warm-up: compiles kernels, fills the token caches
                self._run_eager(static_in, Hp, Wp)
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._run_eager(static_in, Hp, Wp)
            # The graph reads the cached mask tokens / positional embeddings by address: keep
            # them alive with the graph even if their caches evict them.
            keep = (self.mask_and_q0(Hp, Wp), self.latent_pos(*z.shape[2:]))
            self._cached(self.graphs, key, lambda: (graph, static_in, static_out, keep))
        graph, static_in, static_out, _ = self._cached(self.graphs, key, None)
        static_in.copy_(z)
        graph.replay()
        return static_out.clone()
