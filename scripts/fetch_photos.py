"""Fetch Debian's wallpaper packages and unpack their photos into a training folder (outside git).

    python scripts/fetch_photos.py --out-dir data/photos [--max-side 1536]
    python scripts/fetch_photos.py --out-dir data/heldout --max-side 8192 --packages plasma-workspace-wallpapers

For each package: `apt-get download` (no root install), `dpkg -x` into a temporary folder, every
raster image under usr/share/backgrounds/, and the largest image of each KDE wallpaper
(usr/share/wallpapers/<Name>/contents/images/<W>x<H>.<ext>, named <Name>), resized once
(antialiased) to at most --max-side pixels on the long side and written as
`<out>/<package>/<name>.png`. The default packages are the training photos; KDE's
plasma-workspace-wallpapers is never trained on: its photographs are the held-out
high-resolution set (scripts/evaluate_task.py, HELD_OUT_HR). `<out>/manifest.json` (and
`<out>/DATA.md`, the same as a Markdown table) lists each image with its package, version, original
size and licence, read from the package's own
usr/share/doc/<package>/copyright (a machine-readable one stanza by stanza; the free-form one of
gnome-backgrounds by the image's name, else the package licence). The copyright file is copied to
`<out>/<package>/copyright`. Needs apt-get and dpkg-deb (Debian/Ubuntu); Pillow reads WebP.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

PACKAGES = ("mate-backgrounds", "gnome-backgrounds", "ukui-wallpapers")
EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
MIN_SIDE = 512  # smaller files are placeholders (gnome-backgrounds vnc-*.webp, 256x256)
# The same picture at several sizes: keep the largest only.
SKIP = {"mate-backgrounds": ("Elephants.jpg", "Elephants_3840x2160.jpg")}


def dep5_licence(text: str, rel: str) -> str | None:
    """Licence of file `rel` (path relative to the upstream tree) in a DEP-5 copyright file; the
    last matching stanza wins, as the format says. None when the file is not DEP-5."""
    if not text.startswith("Format:"):
        return None
    found = None
    for stanza in re.split(r"\n\s*\n", text):
        m = re.search(r"^Files:(.*?)(?=^\S)", stanza + "\nEND", re.S | re.M)
        lic = re.search(r"^License:\s*(\S+)", stanza, re.M)
        if not m or not lic:
            continue
        globs = m.group(1).split()
        if any(fnmatch.fnmatch(rel, g) for g in globs):
            found = lic.group(1)
    return found


def freeform_licence(text: str, name: str) -> str:
    """gnome-backgrounds' copyright: '- <glob>' lines, then 'Licensed under ...' for that group;
    files not named fall under the package licence (GPL-2+)."""
    stem = Path(name).stem
    pending, groups = [], []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("- "):
            pending.append(s[2:].rstrip(":"))
        elif s.startswith("Licensed under") and pending:
            groups.append((pending, s[len("Licensed under"):].strip().rstrip(".")))
            pending = []
    for globs, lic in groups:
        if any(fnmatch.fnmatch(stem, Path(g).stem) or fnmatch.fnmatch(name, g) for g in globs):
            return lic
    if "GNU General Public License" in text and "either version 2" in text:
        return "GPL-2+ (package licence; the image is not named in the copyright file)"
    return "see copyright file"


def fetch_package(pkg: str, out: Path, max_side: int, work: Path) -> list[dict]:
    subprocess.run(["apt-get", "download", pkg], cwd=work, check=True, capture_output=True)
    deb = next(work.glob(f"{pkg}_*.deb"))
    version = deb.name.split("_")[1]
    root = work / pkg
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    copyright_file = root / "usr/share/doc" / pkg / "copyright"
    text = copyright_file.read_text(errors="replace")
    (out / pkg).mkdir(parents=True, exist_ok=True)
    shutil.copy(copyright_file, out / pkg / "copyright")
    rows = []
    base = root / "usr/share/backgrounds"
    found = [(p, p.stem, str(p.relative_to(base))) for p in sorted(base.rglob("*"))
             if p.suffix.lower() in EXTENSIONS and p.is_file()] if base.is_dir() else []
    # mate's DEP-5 paths are relative to the upstream tree (abstract/Flow.png), installed under mate/
    found = [(p, stem, rel.split("/", 1)[1] if pkg == "mate-backgrounds" else rel) for p, stem, rel in found]
    found += kde_wallpapers(root / "usr/share/wallpapers")
    Image.MAX_IMAGE_PIXELS = None  # KDE's 5120x2880 images are over Pillow's bomb warning size
    for path, stem, rel in found:
        if path.name in SKIP.get(pkg, ()):
            continue
        img = Image.open(path)
        w, h = img.size
        if min(w, h) < MIN_SIDE:
            continue
        lic = dep5_licence(text, rel) or freeform_licence(text, path.name)
        img = img.convert("RGB")
        scale = min(1.0, max_side / max(w, h))
        if scale < 1:
            img = img.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
        dst = out / pkg / (stem + ".png")
        img.save(dst, optimize=False, compress_level=1)
        rows.append(dict(file=str(dst.relative_to(out)), package=pkg, version=version,
                         source="/" + str(path.relative_to(root)), original_size=f"{w}x{h}",
                         size=f"{img.size[0]}x{img.size[1]}", licence=lic))
    return rows


def kde_wallpapers(base: Path) -> list[tuple[Path, str, str]]:
    """(largest image, wallpaper name, path relative to the upstream tree) of each KDE wallpaper
    package under base (<Name>/contents/images/<W>x<H>.<ext>)."""
    out = []
    for d in sorted(p for p in base.glob("*/contents/images") if p.is_dir()) if base.is_dir() else []:
        sized = [(int(m.group(1)) * int(m.group(2)), p) for p in d.iterdir()
                 if p.suffix.lower() in EXTENSIONS and (m := re.fullmatch(r"(\d+)x(\d+)", p.stem))]
        if sized:
            best = max(sized)[1]
            name = d.parent.parent.name
            out.append((best, name, f"{name}/contents/images/{best.name}"))
    return out


def data_card(rows: list[dict]) -> str:
    """Markdown table of the manifest: one line per image with its package and licence."""
    lines = ["| image | package (version) | source in the package | original size | licence |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {Path(r['file']).name} | {r['package']} ({r['version']}) | {r['source']} | "
                     f"{r['original_size']} | {r['licence']} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", dest="out", default="data/photos", help="output folder (git-ignored)")
    p.add_argument("--max-side", type=int, default=1536, help="long side after resizing, pixels")
    p.add_argument("--packages", nargs="+", default=list(PACKAGES))
    a = p.parse_args(argv)
    if a.max_side < MIN_SIDE:
        p.error(f"--max-side must be >= {MIN_SIDE}, got {a.max_side}")
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: this script needs a Debian or Ubuntu system")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for pkg in a.packages:
            got = fetch_package(pkg, out, a.max_side, Path(tmp))
            print(f"{pkg}: {len(got)} images")
            rows += got
    (out / "manifest.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "DATA.md").write_text(data_card(rows))
    print(f"{len(rows)} images in {out}; manifest {out / 'manifest.json'}")


if __name__ == "__main__":
    main()
