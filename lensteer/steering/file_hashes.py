"""The integrity of a saved steering: one recorded hash covers its JSON and (through the tensor file's own
hash, which the JSON records) its tensors (:mod:`.files` writes and reads the pair).

A pair whose tensor file was swapped, or whose JSON was edited after saving (a scale changed from 2 to
500), is refused; ``verify=False`` loads it with a warning instead.
"""

import hashlib
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lensteer.core.io import sha256_file
from lensteer.errors import DataError


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 of a steering record's canonical JSON without its own ``record_sha256`` (it names the
    tensor file's hash, so one value covers both files)."""
    body = json.loads(json.dumps({k: v for k, v in record.items() if k != "record_sha256"}, allow_nan=False))
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _refuse_or_warn(problem: str, verify: bool) -> None:
    if verify:
        raise DataError(
            f"{problem}. Save the steering again, or load it with verify=False if you changed it on purpose"
        )
    warnings.warn(f"{problem}; loading it anyway (verify=False)", UserWarning, stacklevel=4)


def verify_tensors(record: Mapping[str, Any], st_path: Path, json_path: Path, verify: bool) -> None:
    """Refuse a tensor file that is not the one the JSON was saved with (``verify=False``: warn)."""
    if record["safetensors_sha256"] != sha256_file(st_path):
        _refuse_or_warn(
            f"{st_path} is not the tensor file {json_path} was saved with (SHA-256 differs); "
            "the pair was overwritten or mixed up",
            verify,
        )


def verify_record(record: Mapping[str, Any], json_path: Path, verify: bool) -> None:
    """Refuse a JSON edited after saving (checked once its values decode, so a malformed value is named
    first; files saved before ``record_sha256`` existed carry none)."""
    recorded = record.get("record_sha256")
    if recorded is not None and recorded != record_hash(record):
        _refuse_or_warn(
            f"{json_path} was edited after it was saved (its record_sha256 {str(recorded)[:12]}... "
            "no longer matches its content)",
            verify,
        )
