"""Find bundled data folders (inside the wheel as ``lensteer/_data/<name>``, or the repo's ``data/<name>``)."""

import json
from pathlib import Path
from typing import Any

from lensteer.errors import DataError


def bundled_dir(name: str) -> Path:
    """Folder ``<name>`` of the bundled data (``contrast``, ``scoring``, ``capability``)."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "_data" / name, package.parent / "data" / name):
        if candidate.is_dir():
            return candidate
    raise DataError(f"bundled data folder {name!r} not found; reinstall lensteer")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a bad line is a :class:`DataError` naming the file and line."""
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path.name} line {i}: not valid JSON ({err.msg})") from err
        if not isinstance(row, dict):
            raise DataError(f"{path.name} line {i}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    if not rows:
        raise DataError(f"{path.name} has no rows")
    return rows
