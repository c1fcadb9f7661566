"""Train an InfGen model from scratch: `python -m infgen.train --preset demo --out-dir out/demo`.

Two stages, as the paper's setup implies when no SDXL VAE weights are at hand:
  1. steps [0, stage1_steps): encoder + InfGen decoder trained together as a plain VAE at the
     native size (output grid = latent grid; posterior sampled, small KL). The decoder here is the
     InfGen decoder itself, so stage 2 starts from it, as InfGen starts from SDXL's decoder.
  2. steps [stage1_steps, stage1_steps + stage2_steps): encoder and quant_conv frozen; the decoder
     learns the resolution-agnostic task: the input is a photo crop resized to the fixed input
     size, the target the same crop at scale 1..max_scale times that size. Only a random window of
     the target's token grid (window x window tokens) is decoded per step, which keeps the step
     cost flat across scales; the mask tokens keep their positions in the full grid.
Loss (paper): L1 + 0.1 LPIPS (only when --lpips names a local TorchScript LPIPS file) + 0.1 PatchGAN
hinge loss (from --gan-start, a fraction of stage 2). AdamW, warmup then cosine decay per stage.
Checkpoints: <out-dir>/train_state.pt (resume with --resume) and <out-dir>/model/ (config.json +
model.safetensors, loadable with infgen.ref.weights.load_checkpoint). Settings: TrainConfig
(train/config.py), one field per flag; from Python, Trainer(TrainConfig(out_dir=..., ...)).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pickle
import random
import time
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

from infgen.ref.config import InfGenConfig, preset
from infgen.ref.decode import TORCH_OPS, decode_grid
from infgen.ref.model import InfGen
from infgen.ref.weights import load_checkpoint, save_checkpoint
from infgen.train.config import TrainConfig, add_arguments, as_flags
from infgen.train.data import training_images
from infgen.train.photos import HELD_OUT, folder_photos


# ----------------------------------------------------------------------------- data
class CropSampler:
    """Batches of (input, target, window) from a list of (3, H, W) images in [0, 1].

    input: (B, 3, 8gh, 8gw) in [-1, 1], gh, gw in [grid_min, grid_max] tokens (one size per batch);
    target: (B, 3, 8wh, 8ww), the window (oy, ox, wh, ww) of the full target grid (Th, Tw) =
    round(scale * (gh, gw)). Source crops are resized down to both sizes (antialiased), never up
    when an image is large enough. Images may be float in [0, 1] or uint8. scales: the target
    scales to draw from (e.g. (1, 2, 4)); None draws uniformly from [1, max_scale]. real_targets:
    each crop comes from an image that holds the whole target grid at full size (the target is
    real pixels, never upscaled; an image is drawn again up to REDRAWS times, else the last one
    is used)."""

    REDRAWS = 32

    def __init__(self, photos, generated, batch_size: int, grid_min: int, grid_max: int,
                 photo_fraction: float = 0.6, seed: int = 0, colour_aug: float = 0.0, scales=None,
                 real_targets: bool = False):
        if not photos and not generated:
            raise ValueError("no training images")
        self.photos, self.generated = photos, generated
        self.batch_size, self.grid_min, self.grid_max = batch_size, grid_min, grid_max
        self.photo_fraction = photo_fraction if photos and generated else (1.0 if photos else 0.0)
        self.rng = random.Random(seed)
        self.colour_aug = colour_aug
        if scales is not None and (not scales or any(s < 1 for s in scales)):
            raise ValueError(f"scales must be a non-empty list of values >= 1, got {scales}")
        self.scales = scales
        self.real_targets = real_targets

    def _pick(self):
        pool = self.photos if self.rng.random() < self.photo_fraction else self.generated
        return pool[self.rng.randrange(len(pool))]

    def recolour(self, crop: torch.Tensor) -> torch.Tensor:
        """Colour augmentation: grayscale crops get a random tint, others (with probability
        colour_aug) a random channel order. Without it a small model settles on grey output:
        most global colour is cheap to ignore under L1, and the encoder learns to drop it."""
        if self.colour_aug <= 0:
            return crop
        r = self.rng
        if bool((crop[:, 0] == crop[:, 1]).all() and (crop[:, 1] == crop[:, 2]).all()):
            gain = torch.tensor([r.uniform(0.4, 1.2) for _ in range(3)]).view(1, 3, 1, 1)
            return (crop * gain).clamp(0, 1)
        if r.random() < self.colour_aug:
            perm = [0, 1, 2]
            r.shuffle(perm)
            return crop[:, perm]
        return crop

    def sample(self, max_scale: float, window: int, upscale: int = 8):
        r = self.rng
        gh, gw = r.randint(self.grid_min, self.grid_max), r.randint(self.grid_min, self.grid_max)
        s = r.uniform(1.0, max_scale)
        if self.scales and max_scale > 1:  # stage 2 (stage 1 passes max_scale 1): the discrete scales
            s = r.choice([v for v in self.scales if v <= max_scale] or [max_scale])
        Th, Tw = max(gh, round(gh * s)), max(gw, round(gw * s))
        wh, ww = min(Th, window), min(Tw, window)
        oy, ox = r.randint(0, Th - wh), r.randint(0, Tw - ww)
        ins, tgts = [], []
        for _ in range(self.batch_size):
            img = self._pick()
            for _ in range(self.REDRAWS if self.real_targets else 0):
                if min(img.shape[1] / (upscale * Th), img.shape[2] / (upscale * Tw)) >= 1:
                    break
                img = self._pick()
            H, W = img.shape[1:]
            # source crop with the target's aspect; zoom >= 1 (downscale) when the image allows it
            zmax = min(H / (upscale * Th), W / (upscale * Tw))
            z = r.uniform(min(1.0, zmax), max(min(1.0, zmax), min(zmax, 2.0)))
            ch, cw = min(H, round(upscale * Th * z)), min(W, round(upscale * Tw * z))
            y0, x0 = r.randint(0, H - ch), r.randint(0, W - cw)
            crop = img[None, :, y0:y0 + ch, x0:x0 + cw]
            if crop.dtype == torch.uint8:
                crop = crop.float() / 255
            if r.random() < 0.5:
                crop = crop.flip(-1)
            crop = self.recolour(crop)
            ins.append(F.interpolate(crop, size=(upscale * gh, upscale * gw), mode="bicubic", antialias=True,
                                     align_corners=False))
            tgt = F.interpolate(crop, size=(upscale * Th, upscale * Tw), mode="bicubic", antialias=True,
                                align_corners=False)
            tgts.append(tgt[:, :, upscale * oy:upscale * (oy + wh), upscale * ox:upscale * (ox + ww)])
        x = torch.cat(ins).clamp(0, 1) * 2 - 1
        y = torch.cat(tgts).clamp(0, 1) * 2 - 1
        return x, y, (Th, Tw, oy, ox, wh, ww)


# ----------------------------------------------------------------------------- losses
class PatchDiscriminator(nn.Module):
    """PatchGAN: (B, 3, H, W) -> (B, 1, H/4 - 2, W/4 - 2) logits, one per overlapping patch."""

    def __init__(self, ch: int = 32, groups: int = 8):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, ch, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(ch, 2 * ch, 4, 2, 1), nn.GroupNorm(groups, 2 * ch), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * ch, 4 * ch, 4, 1, 1), nn.GroupNorm(groups, 4 * ch), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * ch, 1, 4, 1, 1))

    def forward(self, x):
        return self.net(x)


def load_lpips(path: str | None):
    """A TorchScript LPIPS module f(x, y) -> distance for images in [-1, 1], or None without a path."""
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--lpips {path!r}: no such file (a TorchScript LPIPS module is expected)")
    try:
        m = torch.jit.load(str(p), map_location="cpu").eval()
    except (RuntimeError, ValueError, OSError) as exc:
        raise ValueError(f"--lpips {path!r} is not a TorchScript module: {str(exc).splitlines()[0][:200]}") from exc
    for q in m.parameters():
        q.requires_grad_(False)
    x = torch.linspace(-1, 1, 3 * 64 * 64).reshape(1, 3, 64, 64)  # (1, 3, 64, 64): one probe call
    try:
        with torch.no_grad():
            d = m(x, x.flip(-1))
    except Exception as exc:  # noqa: BLE001 - any failure of a foreign module: not an LPIPS f(x, y)
        raise ValueError(f"--lpips {path!r} does not compute f(x, y) on two (1, 3, 64, 64) images: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}") from exc
    if not isinstance(d, torch.Tensor) or not d.is_floating_point() or d.numel() < 1 or not bool(d.isfinite().all()):
        raise ValueError(f"--lpips {path!r} must return a finite floating distance tensor, got "
                         f"{type(d).__name__} {getattr(d, 'dtype', '')}")
    return m


# ----------------------------------------------------------------------------- model pieces
def encode_moments(model: InfGen, x: torch.Tensor):
    """image (B, 3, H, W) -> unscaled posterior (mean, logvar), each (B, C, H/8, W/8)."""
    mean, logvar = model.quant_conv(model.encoder(x)).chunk(2, dim=1)
    return mean, logvar.clamp(-30, 20)


def cut_window(t: torch.Tensor, win) -> torch.Tensor:
    """The rows of window (oy, ox, wh, ww) of a (Th, Tw) grid: t (..., Th * Tw, d) -> (..., wh * ww, d)."""
    Th, Tw, oy, ox, wh, ww = win
    return t.unflatten(-2, (Th, Tw))[..., oy:oy + wh, ox:ox + ww, :].flatten(-3, -2)


def decode_window(model: InfGen, z: torch.Tensor, win) -> torch.Tensor:
    """Unscaled latent (B, C, h, w) -> the image of window (oy, ox, wh, ww) of the (Th, Tw) grid:
    (B, 3, 8wh, 8ww). The mask tokens are those of the full grid, cut to the window."""
    Th, Tw, oy, ox, wh, ww = win
    mask = cut_window(model.decoder.mask_tokens(Th, Tw), win)
    return decode_grid(TORCH_OPS, model, z * model.config.scaling_factor, wh, ww, mask=mask)  # (B, 3, 8wh, 8ww)


def attention_logits(blk, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    """A cross-attention block's logits: mask tokens (B, N, d), latent tokens (B, T, d) -> (B, heads, N, T)."""
    q, k = blk.heads(blk.to_q(blk.norm_q(x))), blk.heads(blk.to_k(blk.norm_kv(ctx)))
    return q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])


def warm_start_target(Th: int, Tw: int, gh: int, gw: int, kind: str = "nearest", device=None) -> torch.Tensor:
    """The attention the positional warm start teaches: (Th * Tw, gh * gw), one row per mask token of a
    (Th, Tw) output grid over a (gh, gw) latent grid, each row a distribution over the latent tokens.

    "nearest": all weight on the latent cell that holds the mask token's centre (a hard lookup: block 0's
    output is piecewise constant over the latent's cells, a mosaic the later layers must undo).
    "bilinear": the bilinear-interpolation weights of the centre over the (up to) four nearest latent
    token centres, edges clamped (block 0's output is the latent's bilinear upsampling). At equal grids
    both are the identity."""
    if kind not in ("nearest", "bilinear"):
        raise ValueError(f"warm start target must be 'nearest' or 'bilinear', got {kind!r}")

    def axis(n: int, g: int) -> torch.Tensor:  # (n, g): weights along one axis
        centre = (torch.arange(n, device=device, dtype=torch.float64) + 0.5) * g / n  # in latent cells
        if kind == "nearest":
            return F.one_hot(centre.long().clamp(0, g - 1), g).double()
        u = (centre - 0.5).clamp(0, g - 1)  # in latent token centres
        i0 = u.floor().long().clamp(0, g - 1)
        i1 = (i0 + 1).clamp(max=g - 1)
        frac = (u - i0).unsqueeze(1)
        return F.one_hot(i0, g).double() * (1 - frac) + F.one_hot(i1, g).double() * frac

    wy, wx = axis(Th, gh), axis(Tw, gw)
    return torch.einsum("ia,jb->ijab", wy, wx).reshape(Th * Tw, gh * gw).float()


def positional_warm_start(model: InfGen, sampler: "CropSampler", steps: int, lr: float, max_scale: float,
                          device, kind: str = "nearest", window: int = 0) -> list[float]:
    """Teach the first cross-attention block to look up the latent token under each mask token.

    At initialisation the attention is near uniform, so every mask token sees the image mean and the
    decoder learns position-dependent blur for a long time. Here, before any image loss, block 0's
    logits are trained with cross-entropy towards warm_start_target(kind): the latent token whose
    cell holds the mask token's centre, or the bilinear weights of its nearest tokens; on real latent tokens (content included) and random output grids. Touches only the
    positional encodings, the latent-token convs and block 0's norms and q/k projections. window > 0:
    only the mask tokens of a random window x window part of the output grid (as stage 2 decodes),
    so a step's cost stops growing with the output grid; 0: all of them."""
    dec = model.decoder
    blk = dec.blocks[0]
    params = [p for m in (dec.latent_pos, dec.mask_pos, dec.conv_in, dec.conv_tokens, blk.norm_q, blk.norm_kv,
                          blk.to_q, blk.to_k) for p in m.parameters()] + [dec.mask_token]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    for step in range(steps):
        x, _, win = sampler.sample(max_scale, window or 1)
        Th, Tw = win[:2]
        gh, gw = x.shape[2] // model.config.upscale, x.shape[3] // model.config.upscale
        with torch.no_grad():
            z = encode_moments(model, x.to(device))[0]
        ctx = dec.latent_tokens(model.post_quant_conv(z))  # (B, T, d)
        tokens = dec.mask_tokens(Th, Tw)  # (1, N, d)
        target = warm_start_target(Th, Tw, gh, gw, kind, device)  # (N, T) attention each mask token should have
        if window:
            tokens, target = cut_window(tokens, win), cut_window(target, win)
        logits = attention_logits(blk, tokens, ctx)  # (B, heads, N, T)
        loss = F.cross_entropy(logits.flatten(0, 2), target.repeat(logits.shape[0] * logits.shape[1], 1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def lr_at(step: int, total: int, lr: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to 10% of lr."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


# ----------------------------------------------------------------------------- training
class Trainer:
    """One training run of train_config (TrainConfig): Trainer(TrainConfig(out_dir=..., ...)).run(sampler)."""

    def __init__(self, train_config: TrainConfig):
        if not isinstance(train_config, TrainConfig):
            raise TypeError(f"Trainer takes a TrainConfig, got {type(train_config).__name__}")
        c = self.train_config = train_config
        self.device = torch.device(c.device)
        self.out_dir = Path(c.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(c.seed)
        if c.init:  # fine-tune: config and weights from a checkpoint directory
            self.model = load_checkpoint(c.init).train().to(self.device)
        else:
            cfg = preset(c.preset) if c.config is None else InfGenConfig.from_json(c.config)
            self.model = InfGen(cfg).to(self.device)
            with torch.no_grad():  # posterior std starts at e^-5: at the default init (std ~1) the
                # sampling noise drowns the latent and the decoder learns to ignore whole channels
                self.model.quant_conv.bias[cfg.latent_channels:] = c.init_logvar
        self.disc = PatchDiscriminator().to(self.device)
        self.lpips = load_lpips(c.lpips)
        self.step = 0
        self.opt = self.opt_d = None
        self.log_path = self.out_dir / "log.jsonl"

    # -- stages
    def stage(self, step: int) -> int:
        return 1 if step < self.train_config.stage1_steps else 2

    def make_optimizers(self, stage: int):
        m, a = self.model, self.train_config
        if stage == 1:
            params = list(m.parameters())
        else:
            for p in list(m.encoder.parameters()) + list(m.quant_conv.parameters()):
                p.requires_grad_(False)
            params = list(m.decoder.parameters()) + list(m.post_quant_conv.parameters())
        self.opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.5, 0.9), weight_decay=a.weight_decay)
        self.opt_d = torch.optim.AdamW(self.disc.parameters(), lr=a.lr, betas=(0.5, 0.9), weight_decay=a.weight_decay)

    @torch.no_grad()
    def set_scaling_factor(self, sampler: CropSampler, batches: int = 8):
        """After stage 1: scaling_factor = 1 / std of the posterior means (scaled latents ~ unit std)."""
        ms = []
        for _ in range(batches):
            x, _, _ = sampler.sample(1.0, 10_000)
            ms.append(encode_moments(self.model, x.to(self.device))[0].flatten())
        std = float(torch.cat(ms).std())
        self.set_config_scaling(round(1.0 / max(std, 1e-6), 5))

    def set_config_scaling(self, value):
        """Set the model config's scaling_factor through the config's own validation (a bad value,
        e.g. from an edited train_state.pt, is a ValueError naming it, not a silent NaN decode)."""
        self.model.config.scaling_factor = dataclasses.replace(self.model.config, scaling_factor=value).scaling_factor

    # -- checkpoints
    def save(self):
        state = {"step": self.step, "config": self.model.config.to_dict(),
                 "train_config": dataclasses.asdict(self.train_config),
                 "model": self.model.state_dict(), "disc": self.disc.state_dict(),
                 "opt": self.opt.state_dict(), "opt_d": self.opt_d.state_dict(),
                 "stage": self.stage(self.step - 1) if self.step else 1}
        tmp = self.out_dir / "train_state.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(self.out_dir / "train_state.pt")
        save_checkpoint(self.model, self.out_dir / "model")
        every = self.train_config.snapshot_every
        if every and self.step % every == 0:
            save_checkpoint(self.model, self.out_dir / "snapshots" / f"step{self.step:06d}")

    def resume(self):
        path = self.out_dir / "train_state.pt"
        if not path.is_file():
            raise FileNotFoundError(f"--resume: no {path}")
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
            raise ValueError(f"--resume: {path} is not a readable train state (weights-only torch file): "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") from exc
        from infgen.ref.checks import check_number
        try:
            scaling = check_number("config.scaling_factor", state["config"]["scaling_factor"])
            step = check_number("step", state["step"], int, 0)
            stage = check_number("stage", state["stage"], int, 1, 2)
            if scaling == 0:
                raise ValueError("config.scaling_factor must be non-zero, got 0")
            self.set_config_scaling(scaling)
            self.model.load_state_dict(state["model"])
            self.disc.load_state_dict(state["disc"])
            self.step = step
            self.make_optimizers(stage)
            self.opt.load_state_dict(state["opt"])
            self.opt_d.load_state_dict(state["opt_d"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            what = f"no entry {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0][:300]
            raise ValueError(f"--resume: {path} does not match this model and run: {what}") from exc
        state["stage"] = stage
        if self.stage(self.step) != state["stage"]:  # saved at the end of stage 1
            self.make_optimizers(self.stage(self.step))

    # -- one step
    def train_step(self, x, y, win, stage: int, use_gan: bool) -> dict:
        a, m = self.train_config, self.model
        if stage == 1:
            mean, logvar = encode_moments(m, x)
            z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
            kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        else:
            with torch.no_grad():
                z = encode_moments(m, x)[0]
            kl = torch.zeros(())
        out = decode_window(m, z, win)  # (B, 3, 8wh, 8ww)
        l1 = (out - y).abs().mean()
        loss = l1 + a.kl_weight * kl
        logs = {"l1": l1.item()}
        if self.lpips is not None:
            lp = self.lpips(out, y).mean()
            loss = loss + a.lpips_weight * lp
            logs["lpips"] = lp.item()
        if use_gan:
            g = -self.disc(out).mean()
            loss = loss + a.gan_weight * g
            logs["g"] = g.item()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g_ in self.opt.param_groups for p in g_["params"]], 1.0)
        self.opt.step()
        if use_gan:  # hinge loss for the discriminator
            d = F.relu(1 - self.disc(y)).mean() + F.relu(1 + self.disc(out.detach())).mean()
            self.opt_d.zero_grad(set_to_none=True)
            d.backward()
            self.opt_d.step()
            logs["d"] = d.item()
        logs["loss"] = loss.item()
        if not math.isfinite(logs["loss"]):
            raise FloatingPointError(f"loss is {logs['loss']} at step {self.step}: {logs}")
        return logs

    def run(self, sampler: CropSampler) -> list[dict]:
        a = self.train_config
        total = a.stage1_steps + a.stage2_steps
        if a.resume:
            self.resume()
        elif self.opt is None:
            if a.warm_start_steps and not a.init:
                losses = positional_warm_start(self.model, sampler, a.warm_start_steps, a.warm_start_lr,
                                               a.max_scale, self.device, a.warm_start_target, a.warm_start_window)
                print(f"positional warm start: cross-entropy {losses[0]:.3f} -> {losses[-1]:.3f} "
                      f"in {a.warm_start_steps} steps")
            self.make_optimizers(self.stage(0))
        history = []
        try:
            from tqdm import tqdm
            bar = tqdm(total=total, initial=self.step, dynamic_ncols=True, disable=a.quiet)
        except ImportError:
            bar = None
        t0 = time.time()
        while self.step < total:
            stage = self.stage(self.step)
            if stage == 2 and self.step == a.stage1_steps:
                self.set_scaling_factor(sampler)
                self.make_optimizers(2)
            s_step = self.step - (0 if stage == 1 else a.stage1_steps)
            s_total = a.stage1_steps if stage == 1 else a.stage2_steps
            lr = lr_at(s_step, s_total, a.lr, a.warmup)
            for opt in (self.opt, self.opt_d):
                for g in opt.param_groups:
                    g["lr"] = lr
            use_gan = stage == 2 and a.gan_weight > 0 and s_step >= a.gan_start * a.stage2_steps
            x, y, win = sampler.sample(1.0 if stage == 1 else a.max_scale, a.window)
            logs = self.train_step(x.to(self.device), y.to(self.device), win, stage, use_gan)
            self.step += 1
            logs.update(step=self.step, stage=stage, lr=lr, grid=list(win[:2]), t=round(time.time() - t0, 1))
            history.append(logs)
            if self.step % a.log_every == 0 or self.step == total:
                with open(self.log_path, "a") as f:
                    f.write(json.dumps(logs) + "\n")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(stage=stage, l1=f"{logs['l1']:.4f}", lr=f"{lr:.1e}")
            if (self.step % a.save_every == 0 or self.step == total or self.step == a.stage1_steps
                    or (a.snapshot_every and self.step % a.snapshot_every == 0)):
                self.save()
        if bar is not None:
            bar.close()
        return history


def build_parser() -> argparse.ArgumentParser:
    """The command line: one flag per TrainConfig field (train/config.py)."""
    from infgen.cli import tool_parser
    return tool_parser("python -m infgen.train", __doc__.split("\n")[0], add_arguments)


def parse_args(argv=None) -> TrainConfig:
    """The command line -> TrainConfig. A bad value, of one flag or of several together, is one
    `error:` line and exit status 2 (SystemExit), naming the flag."""
    p = build_parser()
    args = p.parse_args(argv)
    try:
        return TrainConfig.from_args(args)
    except (ValueError, TypeError) as exc:
        p.error(as_flags(str(exc)))


def main(argv=None):
    """python -m infgen.train: a bad flag value is one `error:` line and exit status 2 (parse_args); so are
    the user errors found on disk (an --out-dir that cannot be written, no --config or --lpips file),
    checked before training starts."""
    from infgen.cli import guarded
    from infgen.ref.checks import check_out_dir
    a = parse_args(argv)

    def checked(a):
        check_out_dir(a.out_dir, "--out-dir")
        for flag, path in (("--config", a.config), ("--lpips", a.lpips)):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{flag}: no such file {path!r}")
        return train(a)
    return guarded(checked, a)


def train(a: TrainConfig) -> int:
    """One run, as `python -m infgen.train` makes it: the training set, a Trainer, its CropSampler."""
    if a.threads:
        torch.set_num_threads(a.threads)
    random.seed(a.seed)
    photos, generated = training_images(a.num_generated, a.seed)
    if a.photo_dir:  # held-out stems are never trained on, even if a folder holds them
        photos = photos + folder_photos(a.photo_dir, a.pyramid, exclude={n.split(".")[0] for n in HELD_OUT})
    print(f"training data: {len(photos)} photos, {len(generated)} generated images; "
          f"LPIPS {'on: ' + a.lpips if a.lpips else 'off (no local weights given with --lpips)'}")
    trainer = Trainer(a)
    sampler = CropSampler(photos, generated, a.batch_size, a.grid_min, a.grid_max, a.photo_fraction,
                          seed=a.seed, colour_aug=a.colour_aug, scales=a.scales, real_targets=a.real_targets)
    t0 = time.time()
    trainer.run(sampler)
    print(f"done: {trainer.step} steps in {time.time() - t0:.0f} s; checkpoint {trainer.out_dir / 'model'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
