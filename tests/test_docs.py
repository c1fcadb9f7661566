"""README.md and docs/*.md run as written.

Every fenced block in a shell or Python language is run, in document order, in one temporary
working directory per document (so a block may use what an earlier block of the same document
wrote, e.g. z.npy), with the venv's executables first on PATH (`infgen`, `python` are the venv's).
The working directory looks like a checkout (its top-level entries are links to the repository's),
so `infgen_ref/assets/demo/coffee.jpg` and `scripts/...` resolve, and outputs land in the temp dir.

A block that cannot run on a 2-core CPU is marked on the line right before its fence:

    <!-- docs-test: skip (GPU only: why) -->
    <!-- docs-test: skip (TensorRT: why) -->
    <!-- docs-test: skip (serve-venv: why) -->
    <!-- docs-test: skip (long: about 25 min on 2 cores) -->

Listings (c, yaml, text) are declarations, not commands, and are not run.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
PYTHON = {"python", "py"}
LISTING = {"c", "yaml", "text"}
FENCE = re.compile(r"^\s*```(\S*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(.*?)\s*-->\s*$")
SKIP = re.compile(r"^skip \((.+)\)$")
REASONS = ("GPU only", "TensorRT", "serve-venv", "long")
DURATION = re.compile(r"\b\d+(\.\d+)?\s*(s|min|minutes?|h|hours?)\b")
BLOCK_TIMEOUT_S = 300


@dataclass
class Block:
    doc: str     # path relative to the repository
    line: int    # 1-based line of the opening fence
    lang: str
    text: str
    marker: str | None  # the docs-test comment right before the fence, if any

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def skip_reason(self) -> str | None:
        m = SKIP.match(self.marker or "")
        return m.group(1) if m else None


def blocks(text: str, doc: str = "<doc>") -> list[Block]:
    """The fenced blocks of a markdown text, each with the docs-test marker on the line before it."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and not FENCE.match(lines[i]):
            body.append(lines[i])
            i += 1
        prev = MARKER.match(lines[start - 1]) if start > 0 else None
        out.append(Block(doc, start + 1, m.group(1).lower(), "\n".join(body) + "\n",
                         prev.group(1) if prev else None))
        i += 1  # the closing fence
    return out


def markers(text: str) -> list[tuple[int, str]]:
    return [(n, m.group(1)) for n, line in enumerate(text.splitlines(), 1) if (m := MARKER.match(line))]


def doc_blocks(path: Path) -> list[Block]:
    return blocks(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))


def shell_script(block: Block) -> str:
    """A console block's commands are its `$ ` lines; other shell blocks run whole."""
    if block.lang != "console":
        return block.text
    return "\n".join(line[2:] for line in block.text.splitlines() if line.startswith("$ ")) + "\n"


def checkout_like(tmp: Path) -> Path:
    """tmp with a link to each top-level entry of the repository (not .git, caches or build dirs)."""
    for entry in ROOT.iterdir():
        if entry.name.startswith(".") or entry.name.startswith("build") or entry.name.endswith(".egg-info"):
            continue
        (tmp / entry.name).symlink_to(entry)
    return tmp


def venv_env() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    env.update(PATH=bin_dir + os.pathsep + env.get("PATH", ""), VIRTUAL_ENV=str(Path(bin_dir).parent),
               MPLBACKEND="Agg")
    return env


def run_block(block: Block, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    script = cwd / f".block_{block.line}"
    if block.lang in SHELL:
        script.write_text(shell_script(block))
        cmd = ["bash", "-eo", "pipefail", str(script)]
    else:
        script.write_text(block.text)
        cmd = [sys.executable, str(script)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)


# ----------------------------------------------------------------------------- the extractor itself
def test_extractor_finds_blocks_languages_and_markers():
    text = ("intro\n\n```bash\necho a\n```\n\n<!-- docs-test: skip (GPU only: CUDA) -->\n"
            "```python\nimport torch\n```\n\n  ```console\n  $ infgen --help\n  usage\n  ```\n```yaml\nk: v\n```\n")
    b = blocks(text)
    assert [(x.line, x.lang, x.marker) for x in b] == [(3, "bash", None), (8, "python", "skip (GPU only: CUDA)"),
                                                      (12, "console", None), (16, "yaml", None)]
    assert b[0].text == "echo a\n" and b[1].skip_reason == "GPU only: CUDA" and b[0].skip_reason is None
    assert shell_script(Block("d", 1, "console", "$ infgen --help\nusage: infgen\n$ ls\n", None)) == "infgen --help\nls\n"


def test_a_failing_block_is_reported(tmp_path):
    r = run_block(Block("d", 1, "bash", "true\nfalse\necho never\n", None), tmp_path, venv_env())
    assert r.returncode != 0 and "never" not in r.stdout
    r = run_block(Block("d", 2, "bash", "python -c 'import sys; print(sys.executable)'\ninfgen --help\n", None),
                  tmp_path, venv_env())
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith(str(Path(sys.executable).parent))


# ----------------------------------------------------------------------------- the documents
@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_block_runs_here_or_is_marked_with_a_reason(doc):
    text = doc.read_text(encoding="utf-8")
    found = doc_blocks(doc)
    problems = []
    fence_lines = {b.line for b in found}
    for n, marker in markers(text):
        if n + 1 not in fence_lines:
            problems.append(f"line {n}: docs-test marker not on the line right before a fence")
        m = SKIP.match(marker)
        if not m:
            problems.append(f"line {n}: marker must read 'skip (REASON)', got {marker!r}")
            continue
        reason = m.group(1)
        if not reason.startswith(REASONS):
            problems.append(f"line {n}: skip reason must start with one of {REASONS}, got {reason!r}")
        if reason.startswith("long") and not DURATION.search(reason):
            problems.append(f"line {n}: a long block must say how long it takes (e.g. 'about 25 min'), got {reason!r}")
    for b in found:
        if b.lang not in SHELL | PYTHON | LISTING:
            problems.append(f"line {b.line}: fence language {b.lang or '(none)'!r}: label it one of "
                            f"{sorted(SHELL | PYTHON | LISTING)}")
        if b.lang in LISTING and b.marker is not None:
            problems.append(f"line {b.line}: a {b.lang} listing is never run; drop its marker")
    assert not problems, "\n".join(problems)


RUNNABLE = [d for d in DOCS if any(b.lang in SHELL | PYTHON and b.skip_reason is None for b in doc_blocks(d))]


@pytest.mark.parametrize("doc", RUNNABLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_blocks_run_as_written(doc, tmp_path):
    cwd, env = checkout_like(tmp_path), venv_env()
    for b in doc_blocks(doc):
        if b.lang not in SHELL | PYTHON or b.skip_reason is not None:
            continue
        r = run_block(b, cwd, env)
        assert r.returncode == 0, (f"{b.where} ({b.lang}) exited {r.returncode}:\n{b.text}\n"
                                   f"--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}")
