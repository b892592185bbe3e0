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

from lensteer.errors import DataError, WriteError


@contextmanager
def atomic_path(path: "str | os.PathLike[str]") -> Iterator[Path]:
    """A temporary path beside ``path``; whatever is written there replaces ``path`` when the block ends.

    If the block raises, ``path`` is untouched and the temporary file is removed; an ``OSError`` (a full
    disk, no permission) becomes a :class:`~lensteer.errors.WriteError` that names ``path``. The file gets
    the permissions a plain ``open(path, "w")`` would give it (the old file's, or the umask's), not the
    owner-only mode of the temporary file it was written as.
    """
    target = Path(path)
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent
        )
        os.close(fd)
        tmp = Path(name)
        yield tmp
        tmp.chmod(target.stat().st_mode & 0o7777 if target.exists() else 0o666 & ~_umask())
        tmp.replace(target)
    except WriteError:
        raise
    except OSError as err:
        kept = "the old file is kept" if target.exists() else "nothing was written"
        raise WriteError(f"could not write {target}: {err.strerror or err}; {kept}") from err
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _umask() -> int:
    """The process's umask (read by setting it and putting it back: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_json(path: "str | os.PathLike[str]", *, what: str = "file", kind: type = dict) -> Any:
    """The JSON value in ``path``, of type ``kind``; a :class:`~lensteer.errors.DataError` naming the file if it
    is missing, not UTF-8, not valid JSON (e.g. half-written) or not a ``kind``."""
    p = Path(path)
    try:
        value = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DataError(f"{what} {p} does not exist") from err
    except UnicodeDecodeError as err:
        raise DataError(f"{what} {p} is not UTF-8 text ({err.reason} at byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise DataError(
            f"{what} {p} is not valid JSON ({err.msg}, line {err.lineno}); it may be half-written: "
            "restore it or remove it to start over"
        ) from err
    if not isinstance(value, kind):
        raise DataError(
            f"{what} {p} holds a JSON {type(value).__name__}, expected a JSON "
            f"{'object' if kind is dict else kind.__name__}"
        )
    return value


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


def as_json(payload: Any) -> Any:
    """``payload`` as it reads back from a file :func:`write_json` wrote (keys as strings, tuples and tensors
    as lists, non-finite floats as ``None``), so a value built in memory equals the one read from disk."""
    return json.loads(json.dumps(_finite(payload), default=_json_default))


def write_json(path: "str | os.PathLike[str]", payload: Any, *, indent: int = 2) -> Path:
    """Write ``payload`` as JSON atomically (tensors as lists, non-finite floats as ``null``)."""
    return write_text(path, json.dumps(_finite(payload), indent=indent, default=_json_default) + "\n")


def rows_of(path: "str | os.PathLike[str]", what: str) -> list[dict[str, Any]]:
    """The ``rows`` list of a results file written by :func:`write_json` (a :class:`DataError` naming it otherwise)."""
    rows = read_json(path, what=what).get("rows")
    if not isinstance(rows, list) or any(not isinstance(r, dict) for r in rows):
        raise DataError(f"{what} {path} has no list of row objects under 'rows'")
    return rows
