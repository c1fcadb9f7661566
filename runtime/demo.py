"""The embedded demo: one latent decoded at several sizes, with no input files.

The latent comes from a procedural test pattern (gradients, rings, stripes) run through the
model's encoder. The model is the bundled demo checkpoint (infgen_ref/assets/demo/) when it is
installed, else the tiny preset with random weights, and then the demo says so: random weights
turn any latent into noise, so those images show only that every size decodes.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

import infgen_ref

DEMO_CHECKPOINT = Path(infgen_ref.__file__).resolve().parent / "assets" / "demo"
DEMO_SIZES = ((256, 256), (512, 512), (432, 768), (1024, 1024))  # (h, w)
RANDOM_NOTICE = "weights are random: the images are noise (no trained checkpoint was given or bundled)"


def default_model() -> str:
    """The bundled demo checkpoint directory if present, else the "tiny" preset (random weights)."""
    if (DEMO_CHECKPOINT / "config.json").is_file() and (DEMO_CHECKPOINT / "model.safetensors").is_file():
        return str(DEMO_CHECKPOINT)
    return "tiny"


def pattern_image(h: int, w: int) -> torch.Tensor:
    """A deterministic colour image with smooth and sharp content: (1, 3, h, w) in [-1, 1]."""
    y = torch.linspace(0, 1, h)[:, None].expand(h, w)
    x = torch.linspace(0, 1, w)[None, :].expand(h, w)
    r = torch.sqrt((y - 0.5) ** 2 + (x - 0.5) ** 2)
    rings = 0.5 + 0.5 * torch.cos(2 * math.pi * 8 * r)
    stripes = (torch.floor(x * 12) % 2) * (y > 0.75)
    red = 0.8 * x + 0.2 * rings
    green = 0.7 * y + 0.3 * rings * (r < 0.35)
    blue = torch.clamp(1 - x * y + stripes, 0, 1)
    return (torch.stack([red, green, blue])[None].clamp(0, 1) * 2 - 1).contiguous()  # (1, 3, h, w)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_demo(out_dir: str | Path = "demo_out", sizes=DEMO_SIZES, model=None, backend: str = "torch",
             device="cpu", dtype=None, fmt: str = "png", echo=print) -> list[dict]:
    """Encode the test pattern, decode it at each (h, w) in sizes, save the images in out_dir.

    model: preset name, checkpoint directory or None (default_model()). Prints a table of size,
    seconds and path through echo; returns its rows as dicts (h, w, seconds, path)."""
    from runtime.engine import InfGenEngine

    if fmt not in ("png", "jpg"):
        raise ValueError(f"fmt must be 'png' or 'jpg', got {fmt!r}")
    sizes = [tuple(s) for s in sizes]
    if not sizes:
        raise ValueError("sizes must name at least one (h, w)")
    model = default_model() if model is None else model
    engine = InfGenEngine(model, backend=backend, device=device, dtype=dtype)
    cfg = engine.config
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    name = f"checkpoint {model}" if isinstance(model, (str, Path)) else type(model).__name__
    name = f"preset {model}" if engine.random_weights else name
    echo(f"model: {name} (backend {engine.backend_name}, device {engine.device}, {engine.dtype})")
    if engine.random_weights:
        echo(RANDOM_NOTICE)

    native = cfg.latent_size * cfg.upscale
    pattern = pattern_image(native, native)
    engine.save(pattern, out / f"input_{native}x{native}.{fmt}")
    latent = engine.encode(pattern)  # (1, C, latent_size, latent_size)
    echo(f"latent: {tuple(latent.shape)} from a {native}x{native} test pattern")

    engine.decode(latent, cfg.upscale, cfg.upscale)  # warm-up: first-call costs out of the table
    rows = []
    for h, w in sizes:
        _sync(engine.device)
        t0 = time.perf_counter()
        image = engine.decode(latent, h, w)
        _sync(engine.device)
        seconds = time.perf_counter() - t0
        path = engine.save(image, out / f"decoded_{w}x{h}.{fmt}")[0]
        rows.append({"h": h, "w": w, "seconds": seconds, "path": str(path)})

    echo(f"{'size (WxH)':>12}  {'seconds':>8}  path")
    for r in rows:
        echo(f"{r['w']:>5}x{r['h']:<6}  {r['seconds']:8.3f}  {r['path']}")
    if engine.random_weights:
        echo(f"note: {RANDOM_NOTICE}")
    return rows
