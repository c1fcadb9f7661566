"""Learning curve of a training run: every snapshot of `python -m infgen.train --snapshot-every N` scored on
the held-out photos (held_out_table of scripts/evaluate_demo.py; with --task, InfGen's task on the
held-out KDE photos, scripts/evaluate_task.py), plus the training L1 from log.jsonl.

    python scripts/learning_curve.py out/demo7 --png docs/demo_learning_curve.png --json out/demo7/curve.json
    python scripts/learning_curve.py out/demo8 --task data/heldout --every 1000 --png curve.png

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


def task_table(checkpoint, photo_dir: Path, scales=("2x",), device: str = "cpu", names=None) -> list[dict]:
    """InfGen's task (scripts/evaluate_task.py) for one checkpoint, as held_out_table's rows: one row
    per scale (1x = the native decode), each the mean over the held-out KDE photos: psnr, ssim, and
    at 2x/4x baseline_psnr, baseline_ssim (native decode + bicubic)."""
    import torch
    from evaluate_task import HELD_OUT_HR, SIZES, evaluate, photo_paths

    from infgen.runtime.engine import InfGenEngine
    engine = InfGenEngine(str(checkpoint), backend="torch", device=device, dtype="fp32")

    def encode(x):
        with torch.inference_mode():
            return engine.encode(x.to(engine.device))
    names = tuple(names or HELD_OUT_HR)
    rows, _ = evaluate(engine, encode, photo_paths(Path(photo_dir), names), sizes={k: SIZES[k] for k in scales})
    out = []
    for scale in ("1x", *scales):
        mine = [r for r in rows if r["scale"] == scale and r["method"] in ("native", "infgen")]
        base = [r for r in rows if r["scale"] == scale and r["method"] == "native+bicubic"]
        row = dict(photo=f"{len(names)} KDE photos", scale=float(scale[:-1]) if "." in scale else int(scale[:-1]),
                   psnr=round(sum(r["psnr"] for r in mine) / len(mine), 2),
                   ssim=round(sum(r["ssim"] for r in mine) / len(mine), 4))
        if base:
            row.update(baseline_psnr=round(sum(r["psnr"] for r in base) / len(base), 2),
                       baseline_ssim=round(sum(r["ssim"] for r in base) / len(base), 4))
        out.append(row)
    return out


def curve(run: Path, device: str = "cpu", task_dir: Path | None = None, every: int = 0, names=None) -> list[dict]:
    """Each snapshot (every `every` steps when given) scored on the held-out photos: coffee and chelsea
    (held_out_table), or with task_dir InfGen's task on the held-out KDE photos at 2x (task_table;
    names: a subset of them)."""
    from evaluate_demo import held_out_table  # scripts/evaluate_demo.py: run as a script, its folder is on sys.path
    points = []
    for step, d in snapshots(run):
        if every and step % every:
            continue
        rows = task_table(d, task_dir, device=device, names=names) if task_dir else held_out_table(str(d), device=device)
        points.append({"step": step, "rows": rows})
    return points


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
    if any("baseline_psnr" in r for r in points[-1]["rows"]):
        for i, r0 in enumerate(points[0]["rows"]):
            if "baseline_psnr" in r0:
                a.plot(steps, [p["rows"][i]["baseline_psnr"] for p in points], ls=":", lw=1,
                       label=f"{r0['photo']} {r0['scale']}x native + bicubic")
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
    p.add_argument("--task", type=Path, default=None, metavar="PHOTO_DIR",
                   help="score InfGen's task (scripts/evaluate_task.py) on the held-out KDE photos in PHOTO_DIR "
                        "(native and 2x, the mean over the photos) instead of coffee and chelsea")
    p.add_argument("--every", type=int, default=0, help="score only the snapshots at multiples of this step")
    a = p.parse_args(argv)
    points = curve(a.run, a.device, a.task, a.every)
    print(markdown(points))
    if a.json:
        a.json.write_text(json.dumps(points, indent=1))
    if a.png:
        every = points[1]["step"] - points[0]["step"] if len(points) > 1 else points[0]["step"]
        plot(points, training_l1(a.run, every), a.png, a.run.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
