"""How the Ray driver (:mod:`lensteer.study.distributed`) merges finished cells into OUT.

Everything here runs on the driver, which never loads the model: it writes a cell's files into OUT
(names checked: a worker's file list is not trusted), adds its rows to the results table in a fresh serial
run's order, holds rows that wait for the baseline's row, and says what a threat model needs next
(:meth:`Merger.next_cells`).
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lensteer.core.io import write_with
from lensteer.errors import DataError
from lensteer.study.cells import Task, TaskResult, condition_blocks, key_of, serial_rank, with_baseline
from lensteer.study.config import StudyConfig
from lensteer.study.folder import (
    BUILT_DIR,
    CELLS_DIR,
    HELD_FILE,
    MARKER_FILES,
    RESULTS_FILE,
    ROBUSTNESS_FILE,
    STEERINGS_DIR,
    RunFolder,
)
from lensteer.study.identity import adopt_identity
from lensteer.study.plan import plan_conditions
from lensteer.study.records import ConditionResult
from lensteer.study.robustness import RobustnessTable, settings_for
from lensteer.study.runner import CONDITIONS_PER_BLOCK
from lensteer.study.table import SweepTable


def _read_files(folder: Path) -> dict[str, bytes]:
    return (
        {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        if folder.is_dir()
        else {}
    )


def _write_bytes(path: Path, data: bytes) -> None:
    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    write_with(path, write)


def confined(folder: Path, name: str) -> Path:
    """``folder / name`` for a relative POSIX path that stays inside ``folder``; a :class:`DataError` for an
    absolute path, a ``..`` part or anything else that would leave it (a worker's file list is not trusted)."""
    parts = name.split("/")
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise DataError(
            f"a worker sent the file name {name!r} for {folder}: only relative paths inside the "
            "cell folder are allowed (no absolute paths, no '..')"
        )
    return folder / Path(*parts)


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` into ``folder`` atomically, the markers (``finished.json``, ``located.json``) last:
    they say that what they describe is complete; every name is checked first (:func:`confined`), so a
    bad one writes nothing."""
    paths = {name: confined(folder, name) for name in files}
    for name in sorted(files, key=lambda n: n.rsplit("/", 1)[-1] in MARKER_FILES):
        _write_bytes(paths[name], files[name])


def _by_threat_model(rows: list[Any], config: StudyConfig, tm_of: Callable[[Any], str]) -> list[Any]:
    """Rows in the config's threat-model order (stable), as a serial run writes them."""
    order = {tm: i for i, tm in enumerate(config.threat_models)}
    return sorted(rows, key=lambda r: order.get(tm_of(r), len(order)))


def _robustness_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (
        r["setting"],
        r["threat_model"],
        r["method"],
        r["direction_from"],
        r.get("layer"),
        r.get("kl_budget"),
    )


def merge_cell(
    run: RunFolder, threat_model: str, config: StudyConfig, table: SweepTable, robust: RobustnessTable
) -> dict[str, Any]:
    """Merge the finished cell in ``OUT/cells/<tm>/`` into OUT (rows by key, robustness rows, examples,
    steerings; ``finished.json`` last) and return what was located for it. Merging twice changes nothing."""
    cell = run.cell(threat_model)
    adopt_identity(run.root, cell.root)
    merged = {r.key: r for r in table.rows} | {r.key: r for r in cell.table().rows}
    table.set_rows(_by_threat_model(list(merged.values()), config, lambda r: r.threat_model))
    mine = cell.robustness().rows
    if mine:
        new = {_robustness_key(r) for r in mine}
        kept, robust.rows = [r for r in robust.rows if _robustness_key(r) not in new], []
        robust.add(_by_threat_model(kept + mine, config, lambda r: r["threat_model"]))
    run.add_examples(threat_model, cell.examples().get(threat_model, {}))
    _write_files(run.steerings, _read_files(cell.steerings))
    located: dict[str, Any] = cell.finished()[threat_model]["located"]
    run.mark_finished(threat_model, config, located)
    return located


def _cell_finished(run: RunFolder, threat_model: str, config: StudyConfig) -> bool:
    """Is ``OUT/cells/<tm>/`` a finished cell of this config (written by a driver that stopped before merging)?"""
    return run.cell(threat_model).kept(threat_model, config) is not None


@dataclass(kw_only=True)
class Merger:
    """The driver's view of OUT while cells run: merges each finished cell and says what a threat model
    needs next (:meth:`next_cells`). Rows go into the table in a fresh serial run's order."""

    run: RunFolder
    config: StudyConfig
    log: Callable[[str], None]
    stages: dict[str, dict[str, float]]
    block_size: int = CONDITIONS_PER_BLOCK
    earlier_seconds: float = 0.0  # wall seconds of the earlier runs into OUT (timing.json's)
    started: float = field(default_factory=time.time)
    threads: int = 1  # per worker, for timing.json
    finished: dict[str, Any] = field(default_factory=dict)  # per finished threat model: what was located
    located: dict[str, dict[str, Any]] = field(default_factory=dict)  # located.json's, this run
    outstanding: dict[str, int] = field(default_factory=dict)  # cells queued or running per threat model
    given_up: set[str] = field(default_factory=set)  # threat models with a failed cell (a rerun retries)

    def __post_init__(self) -> None:
        self.table, self.robust = self.run.table(), self.run.robustness()

    def next_cells(self, tm: str) -> list[Task]:
        """The cells ``tm`` needs next given what is in OUT: locate it, evaluate the blocks of conditions
        without rows, or its robustness rows; none when it is finished (marked so here)."""
        found = self.run.located(tm, self.config)
        if found is None:
            return self._queued(tm, [Task(kind="locate", threat_model=tm)])
        self.located[tm] = found
        located, n_layers = found["located"], found["n_layers"]
        self._release(tm)
        held = {(r["method"], r["kl_budget"], r["layer"]) for r in self._held(tm)}
        planned = plan_conditions(self.config, int(located["layer"]), n_layers)
        blocks = condition_blocks(planned, self.block_size, lambda k: self.table.has(tm, *k) or k in held)
        if blocks:
            return self._queued(
                tm,
                [
                    Task(kind="block", threat_model=tm, located=located, n_layers=n_layers, keys=b)
                    for b in blocks
                ],
            )
        budget = self.config.kl_budgets[0]
        if not all(
            self.robust.has(s, tm, located["layer"], budget) for s in settings_for(tm, self.config.robustness)
        ):
            return self._queued(
                tm, [Task(kind="robustness", threat_model=tm, located=located, n_layers=n_layers)]
            )
        self.run.mark_finished(tm, self.config, located)
        self.finished[tm] = located
        self.log(f"[{tm}] finished")
        return []

    def _queued(self, tm: str, tasks: list[Task]) -> list[Task]:
        self.outstanding[tm] = self.outstanding.get(tm, 0) + len(tasks)
        return tasks

    def give_up(self, task: Task) -> None:
        """A cell of ``task``'s threat model failed: its other cells go on, it does not finish this run."""
        self.outstanding[task.threat_model] -= 1
        self.given_up.add(task.threat_model)

    def seed(self, task: Task) -> dict[str, bytes]:
        """The files of OUT a cell needs: the threat model's built and calibrated steerings (a block
        reloads those calibrated before); a robustness cell also the results and robustness tables."""
        if task.kind == "locate":
            return {}
        tm, root = task.threat_model, self.run.root
        cell = self.run.cell(tm).root / BUILT_DIR
        files = {f"{CELLS_DIR}/{tm}/{BUILT_DIR}/{k}": v for k, v in _read_files(cell).items()}
        files |= {
            f"{STEERINGS_DIR}/{k}": v
            for k, v in _read_files(self.run.steerings).items()
            if k.startswith(f"{tm}_")
        }
        if task.kind == "robustness":
            files |= {
                n: (root / n).read_bytes() for n in (RESULTS_FILE, ROBUSTNESS_FILE) if (root / n).is_file()
            }
        return files

    def merge(self, result: TaskResult) -> list[Task]:
        """Merge a finished cell into OUT (files, rows, examples, robustness rows); the cells it unblocks."""
        task, tm = result.task, result.task.threat_model
        # only the threat model's steerings and cell folder: the tables are merged row by row below
        ours = (f"{STEERINGS_DIR}/{tm}_", f"{CELLS_DIR}/{tm}/")
        _write_files(self.run.root, {k: v for k, v in result.files.items() if k.startswith(ours)})
        adopt_identity(self.run.root, self.run.cell(tm).root)
        for where, stages in result.stages.items():
            mine = self.stages.setdefault(where, {})
            for stage, seconds in stages.items():
                mine[stage] = mine.get(stage, 0.0) + seconds
        if task.kind == "block":
            self.run.add_examples(tm, self._examples(task, result.examples))
            self._add_rows(tm, task, list(result.rows))
        elif task.kind == "robustness":
            new = {_robustness_key(r) for r in result.robustness}
            kept, self.robust.rows = [r for r in self.robust.rows if _robustness_key(r) not in new], []
            self.robust.add(
                _by_threat_model(kept + list(result.robustness), self.config, lambda r: r["threat_model"])
            )
        self.outstanding[tm] = self.outstanding.get(tm, 1) - 1
        self.write_timing()  # a run cut later (a session's end, a failed cell) keeps what it merged
        if self.outstanding[tm] > 0 or tm in self.given_up:
            return []
        return self.next_cells(tm)

    def write_timing(self) -> float:
        """Write ``timing.json`` (the earlier runs' wall seconds plus this run's so far, and the merged
        stages); the seconds written."""
        seconds = self.earlier_seconds + time.time() - self.started
        self.run.write_timing(seconds, self.threads, executor="ray", stages=self.stages)
        return seconds

    def _examples(self, task: Task, examples: dict[str, Any]) -> dict[str, Any]:
        """A block's examples that a serial run keeps: ``examples.json`` has one entry per method (its
        ``random:<seed>`` key), and a serial run's last evaluated condition of that method writes it last."""
        found = self.located[task.threat_model]
        planned = plan_conditions(self.config, int(found["located"]["layer"]), found["n_layers"])
        last = {key_of(p)[0]: key_of(p) for p in planned if p.twin_of is None}
        return {k: v for k, v in examples.items() if last.get(k) in task.keys}

    def _add_rows(self, tm: str, task: Task, rows: list[dict[str, Any]]) -> None:
        """A block's rows: into the table if they have their ratios to the baseline (its block) or the
        baseline's row is in; else held until it is (``OUT/cells/<tm>/held.json``)."""
        if any(k[0] == "baseline" for k in task.keys):
            self._set_rows(rows)
            self._release(tm)
        else:
            self.run.cell(tm).write(HELD_FILE, {"rows": self._held(tm) + rows})
            self._release(tm)

    def _held(self, tm: str) -> list[dict[str, Any]]:
        held: list[dict[str, Any]] = self.run.cell(tm).read(HELD_FILE, {"rows": []})["rows"]
        return held

    def _release(self, tm: str) -> None:
        """Merge the held rows of ``tm`` with their ratios, once the baseline's row is in."""
        held = self._held(tm)
        layer = int(self.located[tm]["located"]["layer"])
        if held and self.table.has(tm, "baseline", None, layer):
            base = self.table.get(tm, "baseline", None, layer).to_dict()
            self._set_rows(with_baseline(held, base))
            self.run.cell(tm).write(HELD_FILE, {"rows": []})

    def _set_rows(self, rows: list[dict[str, Any]]) -> None:
        """Add ``rows`` (replacing any of the same key) and write the table in a fresh serial run's order:
        threat models in the config's order, each in plan order (twins last); rows of threat models not
        located in this run keep their place."""
        new = [ConditionResult.from_dict(r) for r in rows]
        merged = {r.key: r for r in self.table.rows} | {r.key: r for r in new}
        ranks = {
            tm: serial_rank(plan_conditions(self.config, int(f["located"]["layer"]), f["n_layers"]))
            for tm, f in self.located.items()
        }
        order = {tm: i for i, tm in enumerate(self.config.threat_models)}

        def rank(pos: int, r: ConditionResult) -> tuple[Any, ...]:
            at = ranks.get(r.threat_model, {}).get((r.method, r.kl_budget, r.layer))
            return (order.get(r.threat_model, len(order)), *(at or (2, pos)))

        rows_in = list(merged.values())
        self.table.set_rows([r for _, r in sorted(enumerate(rows_in), key=lambda p: rank(*p))])
