"""Learning curve of a training run: every snapshot of `python -m infgen.train --snapshot-every N` scored on
the held-out photos (held_out_table of scripts/evaluate_demo.py), plus the training L1 from log.jsonl.

    python scripts/learning_curve.py out/demo7 --png docs/demo_learning_curve.png --json out/demo7/curve.json

Prints a markdown table (step | per photo and scale: PSNR dB / SSIM, and native + bicubic at 2x and
4x) and, with --png, plots held-out PSNR and training L1 against the step. The held-out photos only
score snapshots here: nothing is chosen by them (the shipped checkpoint is the run's last step)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path



def snapshots(run: Path) -> list[tuple[int, Path]]:
    """(step, directory) of each <run>/snapshots/stepNNNNNN, in step order."""
    found = []
    for d in (run / "snapshots").glob("step*"):
        if d.is_dir() and d.name[4:].isdigit():
            found.append((int(d.name[4:]), d))
    if not found:
        raise FileNotFoundError(f"no snapshots under {run / 'snapshots'} (train with --snapshot-every N)")
    return sorted(found)


def training_l1(run: Path, every: int) -> list[tuple[int, float]]:
    """Mean logged L1 over each block of `every` steps: [(last step of the block, mean)]."""
    log = run / "log.jsonl"
    if not log.is_file():
        return []
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    out, block = [], []
    for r in rows:
        block.append(r["l1"])
        if r["step"] % every == 0:
            out.append((r["step"], sum(block) / len(block)))
            block = []
    return out


def curve(run: Path, device: str = "cpu") -> list[dict]:
    from evaluate_demo import held_out_table  # scripts/evaluate_demo.py: run as a script, its folder is on sys.path
    return [{"step": step, "rows": held_out_table(str(d), device=device)} for step, d in snapshots(run)]


def markdown(points: list[dict]) -> str:
    cols = [(r["photo"], r["scale"]) for r in points[0]["rows"]]
    head = "| step | " + " | ".join(f"{p} {s}x" for p, s in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for pt in points:
        cells = [f"{r['psnr']:.2f} / {r['ssim']:.3f}" for r in pt["rows"]]
        lines.append(f"| {pt['step']} | " + " | ".join(cells) + " |")
    base = [f"{r['baseline_psnr']:.2f} / {r['baseline_ssim']:.3f}" if "baseline_psnr" in r else "" for r in
            points[-1]["rows"]]
    lines.append("| native + bicubic | " + " | ".join(base) + " |")
    return "\n".join(lines)


def plot(points: list[dict], l1: list[tuple[int, float]], path: Path, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [p["step"] for p in points]
    for i, r0 in enumerate(points[0]["rows"]):
        a.plot(steps, [p["rows"][i]["psnr"] for p in points], marker="o", ms=3, label=f"{r0['photo']} {r0['scale']}x")
    a.axhline(21, color="grey", ls="--", lw=1, label="21 dB target (native)")
    a.set(xlabel="step", ylabel="held-out PSNR (dB)", title=title)
    a.legend(fontsize=7)
    if l1:
        b.plot([s for s, _ in l1], [v for _, v in l1])
    b.set(xlabel="step", ylabel="training L1 ([-1, 1] units)", title="training L1 (block means)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a training --out-dir directory with snapshots/")
    p.add_argument("--png", type=Path, default=None, help="write the plot here")
    p.add_argument("--json", type=Path, default=None, help="write the scores here")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    points = curve(a.run, a.device)
    print(markdown(points))
    if a.json:
        a.json.write_text(json.dumps(points, indent=1))
    if a.png:
        every = points[1]["step"] - points[0]["step"] if len(points) > 1 else points[0]["step"]
        plot(points, training_l1(a.run, every), a.png, a.run.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
