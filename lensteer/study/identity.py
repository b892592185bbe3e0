"""A study folder's identity: what must match for a rerun to resume into it (``OUT/study.json``).

The first run into a folder writes ``study.json``: the config (less what may grow between runs: the
threat-model list and the robustness settings), the model fingerprint with its weights' SHA-256, the
hashes of the bundled data and the lensteer version. A rerun with another identity is refused with a
message listing what differs, instead of keeping rows computed under the old one (``force=True``, or
``lensteer run --force``, moves the old results aside into ``OUT/superseded-<hash>/`` and starts afresh:
nothing is deleted and nothing is mixed). Saved steerings carry the identity's short hash in their names.

A results folder without ``study.json`` (written by an older lensteer, like the committed ``docs/study``)
is *legacy*: ``lensteer report`` reads it as before, but a run refuses to resume into it (its identity
cannot be checked) unless forced.
"""

import hashlib
import json
import shutil
from functools import cache
from pathlib import Path
from typing import Any

from lensteer._version import __version__
from lensteer.core.bundled import bundled_dir
from lensteer.core.io import sha256_file, write_json
from lensteer.errors import ConfigError
from lensteer.study.config import StudyConfig

STUDY_FILE = "study.json"
FORMAT = "lensteer.study"
# What a run leaves that depends on the identity (moved aside by a forced rerun). Any of them marks a
# folder as a lensteer study, so the output-folder guard accepts it (a legacy one too).
RESULT_FILES = (
    "report.json",
    "results.json",
    "results.csv",
    "robustness.json",
    "finished.json",
    "examples.json",
    "timing.json",
    "cells",
)
STUDY_MARKERS = (STUDY_FILE, *RESULT_FILES)
# What the other subcommands write under ``results/`` (run's default OUT) by default, and run's own
# figures: a folder holding only these is no foreign folder.
STUDY_COMPANIONS = ("probe", "steer", "evaluate", "locate", "figures", "steerings")
DATA_FOLDERS = ("contrast", "scoring", "capability")  # the bundled data a study reads


def config_key(config: StudyConfig) -> dict[str, Any]:
    """The config as the identity sees it: all but the threat-model list and the robustness settings (new
    ones run on their own), as plain JSON."""
    skip = {"threat_models", "robustness"}
    return json.loads(json.dumps({k: v for k, v in config.to_dict().items() if k not in skip}))


@cache
def data_hashes() -> dict[str, str]:
    """SHA-256 of each bundled data folder (its files' relative paths and bytes)."""
    out = {}
    for name in DATA_FOLDERS:
        root = bundled_dir(name)
        digest = hashlib.sha256()
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            digest.update(f"{path.relative_to(root).as_posix()}:{sha256_file(path)}\n".encode())
        out[name] = digest.hexdigest()
    return out


def study_identity(config: StudyConfig, model: dict[str, Any]) -> dict[str, Any]:
    """What ``study.json`` records: config key, model fingerprint (with weights hash), data hashes, version."""
    return {
        "format": FORMAT,
        "config": config_key(config),
        "model": dict(model),
        "data": data_hashes(),
        "lensteer": __version__,
    }


def identity_hash(identity: dict[str, Any]) -> str:
    """A short hash of an identity (what saved steerings carry in their names)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]


def _flat(obj: Any, path: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        return {
            k: v
            for key, value in obj.items()
            for k, v in _flat(value, f"{path}.{key}" if path else key).items()
        }
    return {path: obj}


def identity_diff(old: dict[str, Any], new: dict[str, Any], *, skip: tuple[str, ...] = ()) -> list[str]:
    """``"key: old -> new"`` for each leaf that differs (``skip``: top-level parts left out)."""
    a = _flat({k: v for k, v in old.items() if k not in skip})
    b = _flat({k: v for k, v in new.items() if k not in skip})
    return [
        f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


def read_identity(folder: Path) -> dict[str, Any] | None:
    """The folder's ``study.json`` (``None`` if it has none)."""
    path = folder / STUDY_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path} is not valid JSON ({err}); move the folder aside or pass --force") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a lensteer study identity (no format {FORMAT!r})")
    return data


def _supersede(folder: Path, label: str) -> Path:
    """Move the folder's results into ``superseded-<label>/`` (a new name if that exists)."""
    target, n = folder / f"superseded-{label}", 1
    while target.exists():
        n += 1
        target = folder / f"superseded-{label}-{n}"
    target.mkdir()
    for name in (*RESULT_FILES, STUDY_FILE):
        if (folder / name).exists():
            shutil.move(str(folder / name), str(target / name))
    return target


def claim_identity(
    folder: Path,
    identity: dict[str, Any],
    *,
    force: bool = False,
    log: Any = print,
    skip: tuple[str, ...] = (),
) -> str | None:
    """Check ``identity`` against ``folder/study.json`` (write it on a first run) and return its short hash.

    Args:
        skip: Top-level parts not compared (the Ray driver, which never loads the model, skips ``model``
            and checks it when the cells come back); with ``skip`` a first run writes nothing and
            returns ``None`` (the caller writes the whole identity once it knows it).

    Raises:
        ConfigError: The folder holds a study of another identity (the message lists what differs), or
            results without ``study.json``; ``force=True`` moves them aside instead.
    """
    old = read_identity(folder)
    legacy = old is None and any((folder / name).exists() for name in RESULT_FILES)
    differ = identity_diff(old, identity, skip=skip) if old is not None else []
    if legacy or differ:
        if not force:
            what = (
                f"holds results without {STUDY_FILE} (written by an older lensteer), so whether they belong "
                "to this study cannot be checked"
                if legacy
                else f"holds a study of another identity; differs: {'; '.join(differ)}"
            )
            raise ConfigError(
                f"{folder} {what}. Resuming would mix its rows with this run's: use a new --out "
                "folder, or --force (force=True) to move its results aside and start afresh"
            )
        moved = _supersede(folder, "legacy" if legacy else identity_hash(old or {}))
        log(f"--force: moved the earlier results of {folder} into {moved}")
        old = None
    if old is None:
        if skip:
            return None
        write_json(folder / STUDY_FILE, identity)
        return identity_hash(identity)
    return identity_hash(old)


def adopt_identity(folder: Path, cell: Path) -> None:
    """A Ray cell's ``study.json`` (its worker loaded the model, so it has the weights hash) must be the
    driver's ``folder``'s; the first cell of a new folder gives the folder its identity."""
    mine = read_identity(cell)
    if mine is None:
        raise ConfigError(f"cell {cell} has no {STUDY_FILE}; it was not written by this lensteer's run_study")
    out = read_identity(folder)
    if out is None:
        write_json(folder / STUDY_FILE, mine)
        return
    differ = identity_diff(out, mine)
    if differ:
        raise ConfigError(
            f"cell {cell} was computed for another study than {folder} holds; differs: "
            f"{'; '.join(differ)}. Use a new --out folder, or --force to start {folder} afresh"
        )
