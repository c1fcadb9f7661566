"""The seam figure of docs/anysize.md: exact (plain) decode, banded decode, and a decode whose
GroupNorm statistics are taken per tile (what a tiled VAE decode does), from the demo checkpoint.

  python scripts/anysize_seams.py --size 512 --tiles 4 --out docs/anysize_seams.png

Panels: plain | per-tile GroupNorm | |per-tile - plain| x 8 | |banded - plain| x 8. Prints the
largest per-tile mean shift (tone shift) of both against the plain decode.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image, ImageDraw


from infgen.ref import decode as D  # noqa: E402
from infgen.ref.banded import banded_ops, tiled_norm_ops  # noqa: E402
from infgen.ref.model import token_grid  # noqa: E402
from infgen.ref import DEMO_CHECKPOINT  # noqa: E402
from infgen.runtime.engine import InfGenEngine, resolve_model  # noqa: E402


def tone_shift(img: torch.Tensor, ref: torch.Tensor, tiles: int) -> float:
    """Largest |mean difference| over a tiles x tiles grid (the same measure as tests/test_banded.py)."""
    _, _, H, W = img.shape
    d = (img - ref).double()
    ys, xs = ([round(i * n / tiles) for i in range(tiles + 1)] for n in (H, W))
    return max(abs(d[:, :, a:b, c:e].mean().item()) for a, b in zip(ys, ys[1:]) for c, e in zip(xs, xs[1:]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--tiles", type=int, default=4)
    p.add_argument("--out", default="docs/anysize_seams.png")
    args = p.parse_args()
    torch.set_num_threads(2)
    model = resolve_model(str(DEMO_CHECKPOINT))
    native = model.config.upscale * model.config.latent_size
    im = np.asarray(Image.open(DEMO_CHECKPOINT / "coffee.jpg").convert("RGB").resize((native, native), Image.BICUBIC))
    x = torch.tensor(im).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.inference_mode():
        z = model.encode(x)
        Hp, Wp = token_grid(args.size, args.size, model.config)
        ref, tiled, banded = (D.decode_grid(ops, model, z, Hp, Wp).clamp(-1, 1)
                              for ops in (D.TORCH_OPS, tiled_norm_ops(args.tiles), banded_ops()))
    st, sb = tone_shift(tiled, ref, args.tiles), tone_shift(banded, ref, args.tiles)
    print(f"{args.size}x{args.size}, {args.tiles}x{args.tiles} tiles: largest tile mean shift, per-tile GroupNorm "
          f"{st:.4f}, banded {sb:.2e} (image range [-1, 1]); max |banded - plain| "
          f"{(banded - ref).abs().max().item():.2e}")
    amp = lambda a: ((a - ref).abs() * 8 - 1).clamp(-1, 1)  # noqa: E731
    panels = [InfGenEngine.to_uint8(t)[0] for t in (ref, tiled, amp(tiled), amp(banded))]
    s = args.size
    sheet = Image.new("RGB", (4 * s + 30, s + 24), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (a, title) in enumerate(zip(panels, ("plain (exact)", f"per-tile GroupNorm, {args.tiles}x{args.tiles}",
                                               "|per-tile - plain| x 8", "|banded - plain| x 8"))):
        sheet.paste(Image.fromarray(a), (i * (s + 10), 24))
        draw.text((i * (s + 10) + 4, 6), title, fill="black")
    sheet.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
