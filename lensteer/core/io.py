"""Atomic file writes: the one way lensteer writes an artifact.

Every file is written to a temporary name in its own folder (same file system) and renamed into
place, so a reader never sees half a file and an interrupted run leaves the old file intact.
"""

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


@contextmanager
def atomic_path(path: "str | os.PathLike[str]") -> Iterator[Path]:
    """A temporary path beside ``path``; whatever is written there replaces ``path`` when the block ends.

    If the block raises, ``path`` is untouched and the temporary file is removed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: "str | os.PathLike[str]") -> str:
    """SHA-256 of a file's bytes (read in blocks)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text(path: "str | os.PathLike[str]", text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_with(path: "str | os.PathLike[str]", writer: Callable[[Path], None]) -> Path:
    """Let ``writer(tmp_path)`` produce the file, then move it to ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def _finite(obj: Any) -> Any:
    """NaN and infinities become ``null`` (JSON has no spelling for them)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: "str | os.PathLike[str]", payload: Any, *, indent: int = 2) -> Path:
    """Write ``payload`` as JSON atomically (tensors as lists, non-finite floats as ``null``)."""
    return write_text(path, json.dumps(_finite(payload), indent=indent, default=_json_default) + "\n")
