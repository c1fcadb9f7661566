"""The profiler's report: the JSON schema of its rows, the report around them (date, commit,
device, versions, floor), the table on stdout and the latency plot (matplotlib, optional).
Measurement: runtime/cli/profile_measure.py; the tool: runtime/cli/profiler.py.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import torch

from infgen.export.cache import replace_file
from infgen.ref.cost import H100_BF16_FLOPS
from infgen.runtime.cli.profile_measure import STATUSES

FLOOR_NOTE = f"cost-model FLOPs at {H100_BF16_FLOPS / 1e12:.0f} TFLOP/s (bf16 matrix product on the lent H100)"
FLOOR_GAP = 100        # the plot leaves out a floor this many times below every measured latency (notes it instead)
MESSAGE_WIDTH = 100    # columns of a wrapped error message
MESSAGE_LINES = 3      # at most this many lines of it; the rest ends in " ..."

_num = {"type": ["number", "null"]}
_stage_schema = {
    "type": "object",
    "required": ["name", "median_s", "p10_s", "p90_s", "share_of_end_to_end", "flops", "tflops", "floor_share"],
    "properties": {"name": {"type": "string"}, "median_s": {"type": "number", "minimum": 0},
                   "p10_s": {"type": "number", "minimum": 0}, "p90_s": {"type": "number", "minimum": 0},
                   "share_of_end_to_end": _num, "flops": _num, "tflops": _num, "floor_share": _num},
}
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "python -m infgen.runtime profile report",
    "type": "object",
    "required": ["schema_version", "date", "git_commit", "device", "versions", "args", "model", "floor",
                 "memory_method", "aliases", "rows"],
    "properties": {
        "schema_version": {"const": 1},
        "date": {"type": "string"},
        "git_commit": {"type": "string"},
        "device": {"type": "object", "required": ["type", "name"],
                   "properties": {"type": {"enum": ["cpu", "cuda"]}, "name": {"type": "string"}}},
        "versions": {"type": "object", "required": ["python", "torch", "triton", "onnxruntime", "tensorrt"],
                     "additionalProperties": {"type": ["string", "null"]}},
        "args": {"type": "object"},
        "model": {"type": "object", "required": ["source", "config"]},
        "floor": {"type": "object", "required": ["peak_flops", "what"]},
        "memory_method": {"type": "string"},
        "aliases": {"type": "object", "additionalProperties": {"type": "string"}},
        "rows": {"type": "array", "items": {
            "type": "object",
            "required": ["target", "backend", "dtype", "height", "width", "batch", "megapixels", "status",
                         "message", "median_s", "p10_s", "p90_s", "images_per_s", "peak_memory_bytes",
                         "flops", "tflops", "floor_s", "floor_share", "stages", "stages_error",
                         "stage_sum_over_end_to_end"],
            "properties": {
                "target": {"type": "string"}, "backend": {"type": "string"}, "dtype": {"type": "string"},
                "height": {"type": "integer", "minimum": 1}, "width": {"type": "integer", "minimum": 1},
                "batch": {"type": "integer", "minimum": 1}, "megapixels": {"type": "number"},
                "status": {"enum": list(STATUSES)}, "message": {"type": ["string", "null"]},
                "median_s": _num, "p10_s": _num, "p90_s": _num, "images_per_s": _num,
                "peak_memory_bytes": {"type": ["integer", "null"]}, "flops": {"type": "number"},
                "tflops": _num, "floor_s": {"type": "number"}, "floor_share": _num,
                "stages": {"type": ["array", "null"], "items": _stage_schema},
                "stages_error": {"type": ["string", "null"]}, "stage_sum_over_end_to_end": _num,
            }}},
    },
}


# ----------------------------------------------------------------------------- report
def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def device_info(device: torch.device) -> dict:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": p.name, "capability": f"{p.major}.{p.minor}",
                "memory_bytes": int(p.total_memory), "cuda": torch.version.cuda}
    return {"type": "cpu", "name": cpu_name(), "threads": torch.get_num_threads(), "cores": os.cpu_count()}


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass  # no /proc (not Linux): fall through
    return platform.processor() or platform.machine()


def make_report(rows: list[dict], device: torch.device, model_source: str, cfg, args: dict,
                aliases: dict[str, str]) -> dict:
    return {
        "schema_version": 1,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "device": device_info(device),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "triton": _version("triton"), "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
                     "tensorrt": _version("tensorrt"), "numpy": np.__version__},
        "args": args,
        "model": {"source": model_source, "config": cfg.to_dict()},
        "floor": {"peak_flops": H100_BF16_FLOPS, "what": FLOOR_NOTE,
                  "note": "" if device.type == "cuda" else "the floor is the H100's; this run is on the CPU"},
        "memory_method": ("torch.cuda.max_memory_allocated over the row (weights and caches included)"
                          if device.type == "cuda" else
                          "torch.profiler memory events: peak bytes torch allocates during one decode + "
                          "to_uint8 (weights excluded; allocations outside torch, e.g. onnxruntime, not seen)"),
        "aliases": aliases,
        "rows": rows,
    }


def wrap_message(text: str, width: int = MESSAGE_WIDTH, max_lines: int = MESSAGE_LINES) -> list[str]:
    """An error message as lines of at most `width` characters, broken at spaces (a word longer than
    a line, e.g. a path, gets a line of its own and is only then broken), at most max_lines lines,
    the last ending in " ..." (at a word boundary) when the message is longer."""
    return textwrap.wrap(" ".join(str(text).split()), width, break_on_hyphens=False, max_lines=max_lines,
                         placeholder=" ...")


def _ms(x):
    return "-" if x is None else f"{x * 1e3:.2f}"


def format_table(report: dict) -> str:
    head = (f"{'target':<14}{'dtype':<6}{'size':>11}  {'status':<11}{'median ms':>10}{'p10':>9}{'p90':>9}"
            f"{'img/s':>8}{'peak MiB':>10}{'TFLOP/s':>9}{'% floor':>9}")
    dev = report["device"]
    lines = [f"device: {dev['type']} ({dev['name']}); floor: {report['floor']['what']}", head, "-" * len(head)]
    prev = None
    for r in report["rows"]:
        mib = "-" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**20:.1f}"
        lines.append(
            f"{r['target']:<14}{r['dtype']:<6}{r['width']:>5}x{r['height']:<5}  {r['status']:<11}"
            f"{_ms(r['median_s']):>10}{_ms(r['p10_s']):>9}{_ms(r['p90_s']):>9}"
            f"{'-' if r['images_per_s'] is None else format(r['images_per_s'], '.2f'):>8}{mib:>10}"
            f"{'-' if r['tflops'] is None else format(r['tflops'], '.3g'):>9}"
            f"{'-' if r['floor_share'] is None else format(100 * r['floor_share'], '.3g'):>9}")
        if r["message"] and (r["target"], r["message"]) != prev:  # a build failure: once per target
            lines += [f"    {'!' if i == 0 else ' '} {ln}" for i, ln in enumerate(wrap_message(r["message"]))]
        prev = (r["target"], r["message"])
        for s in r["stages"] or []:
            lines.append(f"    {s['name']:<28}{_ms(s['median_s']):>10}{_ms(s['p10_s']):>9}{_ms(s['p90_s']):>9}"
                         f"  {100 * s['share_of_end_to_end']:5.1f}% of e2e"
                         f"{'' if s['tflops'] is None else format(s['tflops'], '10.3f') + ' TFLOP/s'}")
        if r["stages"]:
            lines.append(f"    {'sum of stages / end-to-end':<28}{r['stage_sum_over_end_to_end']:>10.3f}"
                         "  (median over iterations of the paired ratio)")
        if r["stages_error"]:
            lines += [f"    {'!' if i == 0 else ' '} {ln}"
                      for i, ln in enumerate(wrap_message(f"stage breakdown: {r['stages_error']}"))]
    for a, b in report["aliases"].items():
        lines.append(f"({a} is the same configuration as {b}: see that row)")
    return "\n".join(lines)


def floor_gap(report: dict) -> float | None:
    """How many times the cost-model floor lies below the fastest measured latency, taken per row
    (median_s / floor_s, the smallest over the rows that ran); None without such rows."""
    ratios = [r["median_s"] / r["floor_s"] for r in report["rows"]
              if r["status"] == "ok" and r["median_s"] and r["floor_s"]]
    return min(ratios) if ratios else None


def failed_lines(report: dict, width: int = 96, max_lines: int = 2, max_rows: int = 8) -> list[str]:
    """The PNG's text rows for the runs that did not succeed: 'target WxH status: message', wrapped
    at word boundaries (wrap_message; continuation lines indented 4), the same message once per
    target, at most max_rows rows."""
    rows, seen = [], set()
    for r in report["rows"]:
        if r["status"] == "ok" or (r["target"], r["message"]) in seen:
            continue
        seen.add((r["target"], r["message"]))
        rows.append(wrap_message(f"{r['target']} {r['width']}x{r['height']} {r['status']}: {r['message'] or '-'}",
                                 width, max_lines))
    lines = [f"{'' if i == 0 else '    '}{ln}" for row in rows[:max_rows] for i, ln in enumerate(row)]
    return lines + ([f"... {len(rows) - max_rows} more in profile.json"] if len(rows) > max_rows else [])


def figure(report: dict):
    """The latency plot as a matplotlib Figure: latency against output megapixels, log-log, one line
    per target. The cost-model floor is drawn dashed on the same axes, unless it lies FLOOR_GAP times
    or more below every measured latency (a CPU run against the H100's floor): then a note under the
    plot states it and the data keep the whole axis. Failed runs are listed under the plot."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg
    peak = f"{report['floor']['peak_flops'] / 1e12:.0f} TFLOP/s"
    floor = sorted({(r["megapixels"], r["floor_s"]) for r in report["rows"]})
    gap = floor_gap(report)
    notes = []
    if floor and gap is not None and gap >= FLOOR_GAP:
        notes += wrap_message(f"cost-model floor ({peak}): {floor[0][1]:.2g} s at {floor[0][0]:.3g} MP to "
                              f"{floor[-1][1]:.2g} s at {floor[-1][0]:.3g} MP, not drawn: {gap:.0f}x below the "
                              "fastest measured latency", 100, 2)
        floor = []
    failed = failed_lines(report)
    if failed:
        notes += ["runs that did not succeed:"] + failed
    line_in = 0.14  # inches per note line (7 pt monospace: 100 columns fit the 8-inch width)
    height = 5.5 + line_in * (len(notes) + 1 if notes else 0)
    fig = Figure(figsize=(8, height))
    ax = fig.subplots()
    names = list(dict.fromkeys(r["target"] for r in report["rows"]))
    for name in names:
        pts = sorted((r["megapixels"], r["median_s"]) for r in report["rows"]
                     if r["target"] == name and r["status"] == "ok")
        if pts:
            ax.plot(*zip(*pts), marker="o", label=name)
    if floor:
        ax.plot(*zip(*floor), "k--", label=f"cost-model floor ({peak})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("output megapixels")
    ax.set_ylabel("latency, median (s)")
    dev = report["device"]
    ax.set_title(f"InfGen decode, {report['model']['source']}; {dev['type']}: {dev['name']}"[:100], fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize=8)
    bottom = line_in * (len(notes) + 1) / height if notes else 0  # the notes' band, under the axes
    fig.tight_layout(rect=(0, bottom, 1, 1))
    if notes:
        fig.text(0.02, bottom, "\n".join(notes), va="top", ha="left", fontsize=7, family="monospace")
    return fig


def plot(report: dict, path: Path) -> None:
    """figure(report) saved as a PNG."""
    figure(report).savefig(path, dpi=110)


def write_json(report: dict, out_dir: str | Path) -> Path:
    """out_dir/profile.json, replaced whole (infgen.export.cache.replace_file: a temporary file, then renamed)."""
    return replace_file(Path(out_dir) / "profile.json", json.dumps(report, indent=2).encode())


def write_outputs(report: dict, out_dir: str | Path) -> tuple[Path, Path | None]:
    """profile.json and, when matplotlib is installed, profile.png; (json path, png path or None)."""
    jpath = write_json(report, out_dir)
    try:
        import matplotlib  # noqa: F401 - optional: the GPU image has none
    except ImportError:
        return jpath, None
    ppath = Path(out_dir) / "profile.png"
    plot(report, ppath)
    return jpath, ppath
