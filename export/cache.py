"""The file cache of built artifacts: exported ONNX files (export/onnx.py: cached_export) and
TensorRT engines (export/trt.py: engine_for). One format for both:

    <file>          the artifact, as built
    <file>.json     its sidecar, a JSON object {"key", "size", "sha256", ...caller's fields}:
                    key   what makes the file valid (the caller's digest of its inputs)
                    size  bytes of the file and of its external data <file>.data, if any
                    sha256  file_sha256 of the same bytes

The sidecar is the commit: `store` removes it, puts the file in place, then writes the sidecar,
each write to a temporary name then os.replace. No sidecar, no load: `check` refuses an entry
whose sidecar is missing, too large, not UTF-8, not a JSON object, for another key, or whose
bytes differ in size or sha256 (another file put at the path, a truncated file, a flipped byte),
and says why; the caller builds the entry again, never raising on a damaged one. Standard
library only (no torch, no TensorRT).
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

__all__ = ["MAX_SIDECAR_BYTES", "sidecar_path", "data_path", "file_sha256", "check", "read", "store", "replace_file"]

MAX_SIDECAR_BYTES = 1 << 20  # a sidecar is a few KB (an engine's holds its plan); larger is not ours


def sidecar_path(path: str | Path) -> Path:
    """The sidecar of the entry at path: path + '.json'."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def data_path(path: str | Path) -> Path:
    """The external data file an ONNX file may have beside it: path + '.data'."""
    path = Path(path)
    return path.with_name(path.name + ".data")


def _digest(path: Path, head: bytes | None = None) -> tuple[int, str]:
    """(size, sha256 hex) of the file at path (or of head, its bytes already read) followed by its
    .data file when one exists. FileNotFoundError if path is missing and head is None."""
    if head is None:
        with open(path, "rb") as f:
            h = hashlib.file_digest(f, "sha256")
        size = path.stat().st_size
    else:
        h, size = hashlib.sha256(head), len(head)
    extra = data_path(path)
    if extra.is_file():
        with open(extra, "rb") as f:
            hashlib.file_digest(f, lambda: h)  # continues h
        size += extra.stat().st_size
    return size, h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 hex of a file and, when it has one, its external data file (path + '.data')."""
    return _digest(Path(path))[1]


def check(path: str | Path, key: str, head: bytes | None = None) -> str | None:
    """None if the entry at path may be loaded for key, else why it must be built again.
    head: the file's bytes when the caller has read them (those are checked, so what is checked
    is what is loaded), else the file on disk is hashed."""
    path = Path(path)
    side = sidecar_path(path)
    if not side.is_file() or (head is None and not path.is_file()):
        return "not cached"
    with open(side, "rb") as f:
        raw = f.read(MAX_SIDECAR_BYTES + 1)
    if len(raw) > MAX_SIDECAR_BYTES:
        return f"sidecar too large (over {MAX_SIDECAR_BYTES} bytes)"
    try:
        meta = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return "sidecar is not UTF-8 text"
    except (ValueError, RecursionError) as exc:
        return f"sidecar is not JSON ({type(exc).__name__})"
    if not isinstance(meta, dict):
        return "sidecar is not a JSON object"
    if meta.get("key") != key:
        return f"key mismatch (cached {str(meta.get('key'))[:12]}, wanted {key[:12]})"
    size, sha = _digest(path, head)
    if meta.get("size") != size:
        return f"size mismatch (sidecar {str(meta.get('size'))[:20]}, file {size})"
    if meta.get("sha256") != sha:
        return "bytes do not match their sha256 (corrupt)"
    return None


def read(path: str | Path, key: str) -> tuple[bytes | None, str]:
    """(the file's bytes, "ok") if the entry at path is valid for key, else (None, why not)."""
    path = Path(path)
    if not path.is_file():
        return None, "not cached"
    data = path.read_bytes()
    reason = check(path, key, data)
    return (data, "ok") if reason is None else (None, reason)


def replace_file(path: str | Path, data: bytes) -> Path:
    """Write data to path atomically: a temporary file beside it, then os.replace (a reader, or a
    process killed midway, sees the old file or the new one, never a part)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _temporary(path: Path) -> Path:
    """A name beside path that no other writer uses (its process id and a random part), with
    path's suffix; created with the usual permissions when written (unlike tempfile.mkstemp's 0600)."""
    return path.with_name(f".tmp-{os.getpid()}-{secrets.token_hex(6)}{path.suffix}")


def store(path: str | Path, key: str, write, **fields) -> Path:
    """Put the entry for key at path and return path. write(tmp) writes the artifact to tmp, a
    temporary file beside path, as one file (an ONNX file names its .data file, so a pair cannot
    be renamed: cached_export refuses external data); tmp then replaces path and the sidecar
    {key, size, sha256, **fields} follows, last. A failing write leaves no entry and no
    temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    side = sidecar_path(path)
    side.unlink(missing_ok=True)  # from here until the sidecar is back, the entry is not loadable
    tmp = _temporary(path)
    try:
        write(tmp)
        size, sha = _digest(tmp)
        data_path(path).unlink(missing_ok=True)  # a stale one would be hashed into the entry
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        data_path(tmp).unlink(missing_ok=True)
    replace_file(side, json.dumps({"key": key, "size": size, "sha256": sha, **fields}, indent=1).encode())
    return path
