"""The study cut into cells for the Ray executor (:mod:`lensteer.study.distributed`): what a worker runs.

A threat model is three kinds of cell, each run on a worker that loaded the model once:

1. ``locate``: locate the threat model and build its (uncalibrated) steerings there; one per threat model.
   The worker sends back what was located and the built steerings (``OUT/cells/<tm>/located.json`` and
   ``built/``).
2. ``block``: a block of its conditions (:func:`condition_blocks`), once it is located: calibrate their
   steerings to their KL budgets (or reload them from ``OUT/steerings``) and evaluate them together, as
   the serial runner evaluates a block; the worker sends back the rows, the examples and the calibrated
   steerings. A twin (``StMP-push``) goes with its original, whose row it copies.
3. ``robustness``: its robustness rows, once every row of it is in (they read the held-out KL).

Every cell is a pure function of the config, the model and what it is sent, so the rows equal a serial
run's whichever worker ran which cell, in whatever order (the grouping into blocks changes no number:
tested in the study's tests). One thing a block cannot know is the baseline's row when the baseline is
in another block: its rows come back without the ratios to the baseline and the driver adds them
(:func:`with_baseline`) once that row is in, exactly as the serial runner does for a later block.

A worker runs a cell in a scratch folder laid out as ``OUT`` (``steerings/``, ``cells/<tm>/``, and the
results table for a robustness cell), seeded with the files the cell needs; every file it changed goes
back to the driver, which writes it into ``OUT`` at the same path.
"""

import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lensteer.core.bridge import Bridge
from lensteer.core.io import write_json
from lensteer.core.models import model_fingerprint
from lensteer.steering.files import load_steering, save_steering
from lensteer.steering.spec import Steering
from lensteer.study.config import StudyConfig
from lensteer.study.evaluation import Condition, _against_baseline, eval_sets, evaluate_conditions
from lensteer.study.folder import RunFolder
from lensteer.study.identity import STUDY_FILE, config_key, identity_hash, study_identity
from lensteer.study.plan import PlannedCondition, plan_conditions
from lensteer.study.robustness import RobustnessTable
from lensteer.study.runner import _add_stage, _add_twins, _Cell, _result, _robustness, locate, make_conditions
from lensteer.study.table import SweepTable

Kind = Literal["locate", "block", "robustness"]
# a condition's row key within its threat model: (method, KL budget, layer)
Key = tuple[str, float | None, int | None]


@dataclass(frozen=True, kw_only=True)
class Task:
    """One cell: its kind, threat model, what was located (``block``, ``robustness``: ``layer`` ... and
    the model's ``n_layers``) and, for a ``block``, the keys of the conditions it evaluates."""

    kind: Kind
    threat_model: str
    located: dict[str, Any] | None = None
    n_layers: int | None = None
    keys: tuple[Key, ...] = ()

    @property
    def name(self) -> str:
        """``refusal: locate``, ``refusal: block of 3 (SwFC@0.1 L1 ...)``."""
        if self.kind != "block":
            return f"{self.threat_model}: {self.kind}"
        method, budget, layer = self.keys[0]
        first = f"{method}{'' if budget is None else f'@{budget:g}'} L{layer}"
        return (
            f"{self.threat_model}: block of {len(self.keys)} ({first}{' ...' if len(self.keys) > 1 else ''})"
        )

    @property
    def slug(self) -> str:
        """A file name for the cell's scratch folder (the same cell, the same name)."""
        digest = hashlib.sha256(json.dumps(self.keys).encode()).hexdigest()[:8]
        return f"{self.threat_model}-{self.kind}" + (f"-{digest}" if self.keys else "")


@dataclass(frozen=True, kw_only=True)
class TaskResult:
    """What a finished cell sends back: the files it wrote (relative POSIX path -> bytes; filled in by the
    worker), what was located (``locate``), rows and examples (``block``), robustness rows and the
    wall seconds per stage (``timing.json``'s, by threat model)."""

    task: Task
    located: dict[str, Any] | None = None
    n_layers: int | None = None
    rows: tuple[dict[str, Any], ...] = ()
    examples: dict[str, Any] = field(default_factory=dict)
    robustness: tuple[dict[str, Any], ...] = ()
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    host: str = ""


# -- planning (pure) ----------------------------------------------------------------------------------


def key_of(planned: PlannedCondition) -> Key:
    return (planned.key, planned.kl_budget, planned.layer)


def condition_blocks(
    planned: Sequence[PlannedCondition], size: int, done: Callable[[Key], bool]
) -> list[tuple[Key, ...]]:
    """The conditions still to evaluate, in plan order, ``size`` at a time (keys of evaluated conditions:
    a twin goes with its original). A condition is done when its row and its twins' rows are in (``done``)."""
    if size < 1:
        raise ValueError(f"block size must be >= 1, got {size}")
    twins: dict[Key, list[Key]] = {}
    for p in planned:
        if p.twin_of is not None:
            twins.setdefault((p.twin_of, p.kl_budget, p.layer), []).append(key_of(p))
    todo = [
        key_of(p)
        for p in planned
        if p.twin_of is None and not all(done(k) for k in (key_of(p), *twins.get(key_of(p), [])))
    ]
    return [tuple(todo[i : i + size]) for i in range(0, len(todo), size)]


def block_plan(planned: Sequence[PlannedCondition], keys: Sequence[Key]) -> list[PlannedCondition]:
    """The planned conditions of a block: its keys' and their twins', in plan order."""
    mine = set(keys)
    return [p for p in planned if key_of(p) in mine or (p.twin_of, p.kl_budget, p.layer) in mine]


def serial_rank(planned: Sequence[PlannedCondition]) -> dict[Key, tuple[int, int]]:
    """Each condition's place in a fresh serial run's table: the evaluated ones in plan order, then the twins."""
    return {key_of(p): (int(p.twin_of is not None), i) for i, p in enumerate(planned)}


def with_baseline(rows: Sequence[dict[str, Any]], baseline: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows evaluated without the baseline's row, with their ratios and deltas to it added, as the serial
    runner adds them to a block evaluated after the baseline's."""
    out = [dict(r) for r in rows]
    _against_baseline(out, [Condition(method=r["method"]) for r in out], baseline)
    return out


# -- on the worker --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Built:
    """What :func:`~lensteer.study.runner.make_conditions` needs of a located threat model."""

    layer: int
    steerings: dict[str, Steering]
    sweep: dict[int, dict[str, Steering]]


def _save_built(run: RunFolder, tm: str, loc: Any, model: Bridge) -> None:
    for layer, steerings in {loc.layer: loc.steerings, **loc.sweep}.items():
        for method, steering in steerings.items():  # one file each: the methods share their gate's tensor
            save_steering(steering, run.built_path(tm, layer, method), model=model)


def _load_built(run: RunFolder, task: Task, config: StudyConfig, model: Bridge) -> _Built:
    assert task.located is not None and task.n_layers is not None
    layer = int(task.located["layer"])
    layers = {p.layer for p in plan_conditions(config, layer, task.n_layers)}
    built = {
        at: {
            path.stem.removeprefix(f"L{at}_"): load_steering(path.with_suffix(""), model=model)
            for path in sorted(run.built_path(task.threat_model, at, "*").parent.glob(f"L{at}_*.json"))
        }
        for at in sorted(layers)
    }
    return _Built(layer=layer, steerings=built.pop(layer), sweep=built)


def _sets(
    model: Bridge, config: StudyConfig, cache: dict[str, Any], stages: dict[str, dict[str, float]]
) -> Any:
    """The study's evaluation sets, built once per worker and config."""
    key = json.dumps(config_key(config), sort_keys=True)
    if key not in cache:
        started = time.time()
        cache[key] = eval_sets(model, config)
        _add_stage(stages, "shared", "sets", started)
    return cache[key]


def run_task(
    model: Bridge,
    config: StudyConfig,
    task: Task,
    work: Path,
    *,
    cache: dict[str, Any],
    log: Callable[[str], None],
) -> TaskResult:
    """Run one cell in ``work`` (a scratch folder laid out as ``OUT``, seeded with what the cell needs);
    ``cache``: the worker's, kept between its cells (the evaluation sets)."""
    run, tm = RunFolder(work), task.threat_model
    identity = study_identity(config, model_fingerprint(model).to_dict())
    write_json(run.cell(tm).path(STUDY_FILE), identity)  # the driver checks each worker's model against OUT's
    stages: dict[str, dict[str, float]] = {}
    cell = _Cell(
        model=model,
        threat_model=tm,
        config=config,
        run=run,
        identity=identity_hash(identity),
        sets=_sets(model, config, cache, stages),
        log=log,
        stages=stages,
    )
    if task.kind == "locate":
        loc, info = locate(cell)
        _save_built(run, tm, loc, model)
        n_layers = int(model.cfg.n_layers)
        run.mark_located(tm, config, info, n_layers)
        return TaskResult(task=task, located=info, n_layers=n_layers, stages=stages)
    built = _load_built(run, task, config, model)
    assert task.n_layers is not None
    planned = plan_conditions(config, built.layer, task.n_layers)
    if task.kind == "block":
        return _run_block(cell, task, block_plan(planned, task.keys), built)
    budget = config.kl_budgets[0]  # the robustness rows steer with these (runner._robustness)
    needed = [
        p
        for p in planned
        if p.kind == "calibrated"
        and p.layer == built.layer
        and p.kl_budget == budget
        and p.method in config.robustness_methods
    ]
    conditions, _ = make_conditions(cell, needed, built)
    robust = RobustnessTable(work)
    mark = time.time()
    _robustness(cell, built.layer, conditions, SweepTable(work), robust)
    _add_stage(stages, tm, "robustness", mark)
    mine = tuple(r for r in robust.rows if r["threat_model"] == tm)
    return TaskResult(task=task, robustness=mine, stages=stages)


def _run_block(cell: _Cell, task: Task, planned: list[PlannedCondition], built: _Built) -> TaskResult:
    """Calibrate (or reload) and evaluate one block; its rows (twins' too) and examples."""
    tm = cell.threat_model
    conditions, twins = make_conditions(cell, planned, built)
    rows, examples = evaluate_conditions(
        cell.model,
        tm,
        conditions,
        cell.config,
        cell.sets,
        log=cell.log,
        stages=cell.stages.setdefault(tm, {}),
    )
    with tempfile.TemporaryDirectory() as scratch:  # the twins' rows are derived from their originals'
        table = SweepTable(Path(scratch))
        table.set_rows([_result(tm, c, r) for c, r in zip(conditions, rows, strict=True)])
        _add_twins(tm, twins, table)
    return TaskResult(
        task=task, rows=tuple(r.to_dict() for r in table.rows), examples=examples, stages=cell.stages
    )
