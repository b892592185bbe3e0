"""The whole study, one threat model at a time: locate -> choose site -> calibrate -> evaluate.

For each threat model (refusal, compassion, honesty) the study

1. **locates**: probes the contrast at candidate layers and chooses the steering site by behaviour
   (:mod:`lensteer.study.site_choice`: candidates from probing and patching, each calibrated to the KL
   budget and scored on validation prompts by the first-token decision shift);
2. **builds** the seed paper's steerings at that site: SwFC along the chosen direction, StTP
   and StMP from the class projections (refusal adds a CAST-style prompt gate);
3. **calibrates** every method, and a random direction per seed, to each KL budget on held-apart
   harmless and borderline training prompts with its gate as deployed, capped by fluency bounds on its
   answers to held-apart target prompts (:mod:`lensteer.study.coherence`; selective methods are also
   kept uncalibrated, at scale 1: the paper's regime, rows ``StTP:paper`` ...; saved, so a rerun
   reloads them);
4. **evaluates** the conditions together, in blocks of :data:`CONDITIONS_PER_BLOCK`, on the test prompts:
   the unsteered and prompting baselines, each method, each random control (:mod:`lensteer.study.evaluation`).

Results go into one tidy table (one row per threat model x condition x KL budget x layer), written
as soon as a block of a threat model's conditions is evaluated, so an interrupted sweep resumes with what is done.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lensteer import threats
from lensteer.core.bridge import Bridge
from lensteer.core.models import EMBEDDED_MODEL_NAME, model_fingerprint
from lensteer.core.outdir import claim_folder, folder_lock
from lensteer.errors import DataError
from lensteer.steering.files import artifact_paths, load_steering, save_steering
from lensteer.steering.spec import Steering
from lensteer.study.coherence import Coherence, calibrate_coherent, coherence_for
from lensteer.study.config import PAPER_REGIME, StudyConfig
from lensteer.study.evaluation import Condition, calibration_probe, eval_sets, evaluate_conditions
from lensteer.study.folder import FINISHED_FILE, RunFolder
from lensteer.study.identity import (
    STUDY_COMPANIONS,
    STUDY_MARKERS,
    claim_identity,
    identity_hash,
    read_identity,
    study_identity,
)
from lensteer.study.layers import _candidate_layers, locate_threat_model
from lensteer.study.plan import PlannedCondition, plan_conditions
from lensteer.study.records import ConditionResult, StudyReport
from lensteer.study.report import build_report
from lensteer.study.robustness import (
    ORGANISM_PREFIX,
    RobustnessTable,
    bare_calibration_prompts,
    inducer_rows,
    organism_model,
    organism_rows,
    own_steerings,
    robustness_report,
    settings_for,
)
from lensteer.study.table import SweepTable

# timing.json's stages, per threat model (``sets``: the evaluation sets every threat model shares, under "shared");
# ``lensteer run --plan`` estimates the same ones
STAGES = ("sets", "locate", "calibrate", "decode", "score", "conversations", "robustness")


@dataclass(frozen=True, kw_only=True, eq=False)
class StudyResult:
    """Where a study wrote its outputs, and its report."""

    folder: Path
    report: StudyReport
    table: Any = field(repr=False)


def _calibrated(model: Bridge, built: Steering, path: Path, coherence: Coherence, budget: float) -> Steering:
    """The calibrated steering saved at ``path``, calibrating it as deployed (gate on; KL on held-apart
    harmless and borderline prompts, fluency on held-apart target prompts: :mod:`lensteer.study.coherence`)
    and saving it first if it is not there yet."""
    if artifact_paths(path)[1].exists():
        return load_steering(path, model=model)
    steering = calibrate_coherent(model, built, coherence, budget)
    save_steering(steering, path, model=model)
    return steering


def _robustness(
    cell: "_Cell", layer: int, conditions: list[Condition], table: SweepTable, robust: RobustnessTable
) -> None:
    """The robustness rows of one threat model (each setting once; see :mod:`lensteer.study.robustness`)."""
    model, tm, config, sets, log = cell.model, cell.threat_model, cell.config, cell.sets, cell.log
    budget = config.kl_budgets[0]
    steerings = {
        c.method: c.steering
        for c in conditions
        if c.steering is not None
        and c.method in config.robustness_methods
        and c.kl_budget == budget
        and c.layer == layer
    }
    heldout = {m: float(table.get(tm, m, budget, layer).get("kl_heldout")) for m in steerings}
    for setting in settings_for(tm, config.robustness):
        if robust.has(setting, tm, layer, budget):
            continue
        log(f"[{tm}] robustness: {setting}")
        if setting.startswith(ORGANISM_PREFIX):
            recipe = setting[len(ORGANISM_PREFIX) :]
            name = model_fingerprint(model).name
            organism = organism_model(
                Path(config.organisms_dir) / recipe,
                recipe,
                None if name == EMBEDDED_MODEL_NAME else name,
                log,
            )
            own = own_steerings(model, organism, tm, steerings, config, sets)
            rows = organism_rows(
                organism,
                tm,
                setting,
                steerings,
                own,
                config,
                sets,
                bare_calibration_prompts(tm, sets, config),
            )
        else:
            rows = inducer_rows(model, tm, setting, steerings, heldout, config)
        robust.add([{**r, "layer": layer, "kl_budget": budget} for r in rows])  # keyed like the sweep's rows


# Conditions evaluated (decoded jointly) per block; each block's rows are written before the next starts,
# so an interrupted paper run (hours per threat model on a CPU) loses at most one block. Six is the demo's
# whole set (baselines, three methods, one random seed: one decoding pass per prompt set instead of two),
# and the numbers do not depend on the grouping (tested).
CONDITIONS_PER_BLOCK = 6


def _push_twin(mirror: Steering, path: Path, model: Bridge) -> Steering:
    """StMP-push with the edit of a calibrated StMP (mirror): twice its scale (saved at ``path``)."""
    twin = replace(
        mirror.with_edit(stmp_variant="push", scale=2.0 * mirror.scale),
        info={
            **mirror.info,
            "calibration": {
                **mirror.info.get("calibration", {}),
                "derived_from": "StMP (mirror) at half this scale",
            },
        },
    )
    if not artifact_paths(path)[1].exists():
        save_steering(twin, path, model=model)
    return twin


def _add_stage(stages: dict[str, dict[str, float]], where: str, stage: str, since: float) -> float:
    """Add the wall seconds since ``since`` to ``stages[where][stage]`` (one of :data:`STAGES`); returns now."""
    now = time.time()
    mine = stages.setdefault(where, {})
    mine[stage] = mine.get(stage, 0.0) + now - since
    return now


def write_report(
    run: RunFolder,
    rows: list[ConditionResult],
    robustness_rows: list[dict[str, Any]],
    config: StudyConfig,
    located: dict[str, Any],
    model: dict[str, Any],
    *,
    seconds: float,
) -> StudyReport:
    """Build the study's report from its rows (and robustness rows) and write ``report.json``."""
    report = build_report(rows, config, located, model, seconds=seconds)
    if robustness_rows:
        report = report.with_robustness(robustness_report(robustness_rows))
    return run.write_report(report)


def rebuild_report(out: "str | Path") -> StudyReport:
    """Rewrite ``out/report.json`` from the rows a finished run left on disk (``results.json``,
    ``robustness.json``, ``finished.json``) with this version's report code, without a model: for a
    report whose code changed after the run. The config, model fingerprint and wall time are the run's."""
    run = RunFolder(Path(out))
    if not run.report_path.is_file():
        raise DataError(f"{run.report_path} does not exist; run `lensteer run --out {run.root}` first")
    with folder_lock(run.root):  # no run may write rows while the report is rebuilt from them
        return _rebuild_report(run)


def _rebuild_report(run: RunFolder) -> StudyReport:
    old = run.read_report()
    config = StudyConfig.from_dict(dict(old.config), where=str(run.report_path))
    finished = run.finished()
    unfinished = [tm for tm in config.threat_models if tm not in finished]
    if unfinished:
        raise DataError(
            f"{run.root}: threat models {unfinished} did not finish (no entry in {FINISHED_FILE}); "
            f"resume them with `lensteer run --out {run.root}` and the run's config"
        )
    located = {tm: finished[tm]["located"] for tm in config.threat_models}
    return write_report(
        run,
        run.table().rows,
        run.robustness().rows,
        config,
        located,
        dict(old.model),
        seconds=old.seconds,
    )


def chosen_steering(
    out: "str | Path", threat_model: str, method: str, kl_budget: float | None = None
) -> Path:
    """Where a finished study in ``out`` saved ``method``'s steering of ``threat_model`` at its chosen layer
    (``kl_budget``: the study's first; ``None`` with a ``:paper`` method: the paper regime), as a stem for
    :func:`~lensteer.load_steering`. A legacy folder (no ``study.json``) has the earlier names."""
    run = RunFolder(Path(out))
    finished = run.finished()
    if threat_model not in finished:
        raise DataError(
            f"{run.root}: threat model {threat_model!r} did not finish (no entry in {FINISHED_FILE}); "
            f"finished: {sorted(finished)}"
        )
    paper = method.endswith(PAPER_REGIME)
    name = method.removesuffix(PAPER_REGIME)
    identity = read_identity(run.root)
    if kl_budget is None and not paper:
        config = identity["config"] if identity is not None else run.read("report.json", {}).get("config", {})
        kl_budget = float(config["kl_budgets"][0])
    budget = None if paper else kl_budget
    if identity is None:
        return run.legacy_steering_path(threat_model, name, budget)
    layer = int(finished[threat_model]["located"]["layer"])
    return run.steering_path(threat_model, name, budget, layer, identity_hash(identity))


def _random_like(steering: Steering, seed: int) -> Steering:
    """A random unit direction with the same mode, positions, gate and starting scale (to be calibrated)."""
    unit = torch.randn(steering.d_model, generator=torch.Generator().manual_seed(seed))
    return replace(steering, unit=unit, info={**steering.info, "control": f"random direction, seed {seed}"})


def run_study(
    model: Bridge,
    config: StudyConfig,
    out: "str | Path",
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    force: bool = False,
) -> StudyResult:
    """Run the study and write ``study.json``, ``report.json``, ``results.csv``/``results.json``,
    ``steerings/``, ``examples.json`` into ``out`` (:class:`~lensteer.study.folder.RunFolder`). Re-running
    into the same folder resumes: a threat model finished under the same config is kept whole
    (``finished.json``, no re-locating), calibrated steerings are reloaded and finished conditions and
    robustness settings are kept.

    ``out`` must be new, empty or a study folder (:mod:`lensteer.core.outdir`; locked while the study
    runs), and a rerun must have the first run's identity (:mod:`lensteer.study.identity`): another config,
    model weights, data or lensteer version is refused, or with ``force=True`` starts afresh (the earlier
    results moved aside)."""
    with claim_folder(out, STUDY_MARKERS, "study", STUDY_COMPANIONS) as folder:
        identity = claim_identity(
            folder, study_identity(config, model_fingerprint(model).to_dict()), force=force, log=log
        )
        assert identity is not None
        return _run_study(model, config, RunFolder(folder), identity, progress=progress, log=log)


@dataclass(frozen=True, kw_only=True)
class _Cell:
    """What running one threat model needs besides its plan (one argument instead of eight)."""

    model: Bridge
    threat_model: str
    config: StudyConfig
    run: RunFolder
    identity: str
    sets: Any
    log: Callable[[str], None]
    stages: dict[str, dict[str, float]]  # timing.json's wall seconds per threat model and stage (STAGES)
    progress: bool = False  # a bar with an ETA per stage (totals from the plan's counts)


def _located_info(loc: Any) -> dict[str, Any]:
    """What ``finished.json`` and the report keep of a located threat model."""
    info = {
        "layer": loc.layer,
        "site": loc.site,
        "reasons": loc.reasons,
        "reference_norm": loc.reference_norm,
        "probe_auroc": {r["layer"]: r["probe_auroc"] for r in loc.probing["rows"]},
        **(loc.selection or {}),  # candidates, chosen, selection settings
        "massive_tokens": loc.massive,
        "selective_fit": loc.fit,
    }
    if loc.gate_search is not None:
        info["gate"] = loc.gate_search
        info["gate_curve"] = loc.gate_curve
    return info


def _make_condition(
    cell: _Cell,
    planned: PlannedCondition,
    loc: Any,
    coherence: Coherence,
    made: dict[tuple[Any, ...], Condition],
) -> Condition:
    """Build (calibrate, or reload) the steering of one planned condition."""
    tm, model = cell.threat_model, cell.model
    key = (planned.method, planned.kl_budget, planned.layer)
    stem = f"random{planned.seed}" if planned.kind == "random" else planned.method.removesuffix(PAPER_REGIME)
    path = cell.run.steering_path(tm, stem, planned.kl_budget, planned.layer, cell.identity)
    if planned.kind in ("baseline", "prompting"):
        system = threats.get(tm).aligned_system if planned.kind == "prompting" else None
        return Condition(method=planned.method, system=system, layer=planned.layer)
    if planned.kind == "twin":  # the same edit as its original at matched KL: derived, not re-run
        first = made[(planned.twin_of, planned.kl_budget, planned.layer)]
        assert first.steering is not None
        steering = _push_twin(first.steering, path, model)
    elif planned.kind == "paper":
        if not artifact_paths(path)[1].exists():
            save_steering(loc.steerings[stem], path, model=model)
        steering = load_steering(path, model=model)
    elif planned.kind == "random":
        assert planned.seed is not None and planned.kl_budget is not None
        template = loc.steerings.get("SwFC") or next(iter(loc.steerings.values()))
        steering = _calibrated(
            model, _random_like(template, planned.seed), path, coherence, planned.kl_budget
        )
    else:
        assert planned.kl_budget is not None
        built = loc.steerings if planned.layer == loc.layer else loc.sweep[planned.layer]
        steering = _calibrated(model, built[planned.method], path, coherence, planned.kl_budget)
        cal = steering.info.get("calibration", {})
        at = "" if planned.layer == loc.layer else f" (layer sweep: L{planned.layer})"
        cell.log(
            f"[{tm}] {planned.method} @ KL {planned.kl_budget:g}{at}: scale {steering.scale:.4g} "
            f"(KL {cal.get('kl', math.nan):.3f}{'' if cal.get('reached', True) else ', budget not reached'}"
            f"{'' if cal.get('binding', 'kl') == 'kl' else ', set by ' + cal['binding']})"
        )
    condition = Condition(
        method=planned.method,
        steering=steering,
        kl_budget=planned.kl_budget,
        layer=planned.layer,
        seed=planned.seed,
    )
    made[key] = condition
    return condition


def _result(tm: str, cond: Condition, row: dict[str, Any]) -> ConditionResult:
    """One evaluated condition as a table row (with its steering's scale and calibration)."""
    s = cond.steering
    steering = (
        {
            "scale": s.scale,
            "coefficient": s.coefficient,
            "calibrated_kl": s.info.get("calibration", {}).get("kl"),
            "kl_reached": s.info.get("calibration", {}).get("reached"),
        }
        if s is not None
        else {}
    )
    head = {"threat_model": tm, "method": cond.key, "kl_budget": cond.kl_budget, "layer": cond.layer}
    return ConditionResult.from_dict({**head, **steering, **row})


def _evaluate(cell: _Cell, conditions: list[Condition], table: SweepTable, layer: int) -> None:
    """Evaluate the conditions not yet in the table, a block at a time, each block's rows written at once."""
    tm = cell.threat_model
    pending = [c for c in conditions if not table.has(tm, c.key, c.kl_budget, c.layer)]
    if pending:
        cell.log(
            f"[{tm}] evaluating {len(pending)} conditions ({', '.join(c.key for c in pending)}), "
            f"{CONDITIONS_PER_BLOCK} at a time"
        )
    bar = tqdm(total=len(pending), desc=f"{tm} evaluate", disable=not cell.progress, unit="condition")
    for start in range(
        0, len(pending), CONDITIONS_PER_BLOCK
    ):  # each block's rows are on disk before the next
        block = pending[start : start + CONDITIONS_PER_BLOCK]
        earlier = (
            table.get(tm, "baseline", None, layer).to_dict()
            if table.has(tm, "baseline", None, layer)
            else None
        )
        rows, ex = evaluate_conditions(
            cell.model,
            tm,
            block,
            cell.config,
            cell.sets,
            baseline=earlier,
            log=cell.log,
            stages=cell.stages.setdefault(tm, {}),
        )
        for cond, row in zip(block, rows, strict=True):
            table.add(_result(tm, cond, row))
        cell.run.add_examples(tm, ex)
        bar.update(len(block))
    bar.close()


def _add_twins(tm: str, twins: list[tuple[Condition, str]], table: SweepTable) -> None:
    """A twin's row is its original's (the same edit at matched KL), with its own scale and ``same_as``."""
    for twin, original in twins:
        mine, theirs = (
            (tm, twin.method, twin.kl_budget, twin.layer),
            (tm, original, twin.kl_budget, twin.layer),
        )
        if not table.has(*mine) and table.has(*theirs):
            assert twin.steering is not None
            table.add(
                replace(
                    table.get(*theirs),
                    method=twin.method,
                    scale=twin.steering.scale,
                    coefficient=twin.steering.coefficient,
                    same_as=original,
                )
            )


def locate(cell: _Cell) -> tuple[Any, dict[str, Any]]:
    """Locate one threat model and build its uncalibrated steerings there; the located object (``layer``,
    ``steerings`` at that layer, ``sweep``: those at a layer sweep's other layers) and what
    ``finished.json`` keeps of it (:func:`_located_info`)."""
    model, tm, config = cell.model, cell.threat_model, cell.config
    n_probed = len(_candidate_layers(model, config)) if config.layer is None else 1
    cell.log(f"[{tm}] locating (probing {n_probed} layers)")
    mark = time.time()
    probe = calibration_probe(
        model, tm, config, cell.sets
    )  # the study's calibration set of this threat model
    loc = locate_threat_model(model, tm, config, cell.sets.calibration_prompts, probe, progress=cell.progress)
    _add_stage(cell.stages, tm, "locate", mark)
    cell.log(f"[{tm}] steering at layer {loc.layer} {loc.site}: {'; '.join(loc.reasons)[:200]}")
    return loc, _located_info(loc)


def make_conditions(
    cell: _Cell, planned: list[PlannedCondition], built: Any
) -> tuple[list[Condition], list[tuple[Condition, str]]]:
    """Build (calibrate, or reload from the run folder) the steerings of ``planned`` from ``built`` (what
    :func:`locate` built: ``layer``, ``steerings``, ``sweep``); the conditions to evaluate and the twins
    (each with the method it duplicates), which are derived, never evaluated. A twin's original must be
    in ``planned`` before it (as :func:`~lensteer.study.plan.plan_conditions` orders them)."""
    mark = time.time()
    key = f"coherence:{cell.threat_model}"  # the fluency probe decodes: once per threat model and process
    if key not in cell.sets.cache:
        # held-apart target prompts (fluency), with the held-apart harmless + borderline KL probe
        probe = calibration_probe(cell.model, cell.threat_model, cell.config, cell.sets)
        cell.sets.cache[key] = coherence_for(cell.model, cell.threat_model, cell.config, probe)
    made: dict[tuple[Any, ...], Condition] = {}
    conditions: list[Condition] = []
    twins: list[tuple[Condition, str]] = []
    bar = tqdm(planned, desc=f"{cell.threat_model} calibrate", disable=not cell.progress, unit="condition")
    for p in bar:
        cond = _make_condition(cell, p, built, cell.sets.cache[key], made)
        if p.twin_of is not None:
            twins.append((cond, p.twin_of))
        else:
            conditions.append(cond)
    _add_stage(cell.stages, cell.threat_model, "calibrate", mark)
    return conditions, twins


def _run_threat_model(cell: _Cell, table: SweepTable, robust: RobustnessTable) -> dict[str, Any]:
    """Locate, build, calibrate and evaluate one threat model (and its robustness rows); what was located."""
    loc, info = locate(cell)
    planned = plan_conditions(cell.config, loc.layer, int(cell.model.cfg.n_layers))
    conditions, twins = make_conditions(cell, planned, loc)
    _evaluate(cell, conditions, table, loc.layer)
    _add_twins(cell.threat_model, twins, table)
    if cell.config.robustness:
        mark = time.time()
        _robustness(cell, loc.layer, conditions, table, robust)
        _add_stage(cell.stages, cell.threat_model, "robustness", mark)
    return info


def _run_study(
    model: Bridge,
    config: StudyConfig,
    run: RunFolder,
    identity: str,
    *,
    progress: bool,
    log: Callable[[str], None],
) -> StudyResult:
    table, robust = run.table(), run.robustness()
    earlier = run.timing()
    earlier_seconds = float(earlier["seconds"])
    stages: dict[str, dict[str, float]] = earlier.get("stages", {})
    started = time.time()
    log(
        f"building the KL calibration set ({config.n_kl} held-apart harmless and {config.n_kl} borderline "
        "prompts) and the evaluation sets"
    )
    sets = eval_sets(model, config)
    _add_stage(stages, "shared", "sets", started)
    located_info: dict[str, Any] = {}
    bar = tqdm(total=len(config.threat_models), desc="study", disable=not progress, unit="threat model")
    for tm in config.threat_models:
        kept = run.kept(tm, config)  # a resume skips these whole
        if kept is not None:
            log(f"[{tm}] finished in an earlier run with this config; kept")
            located_info[tm] = kept
        else:
            cell = _Cell(
                model=model,
                threat_model=tm,
                config=config,
                run=run,
                identity=identity,
                sets=sets,
                log=log,
                stages=stages,
                progress=progress,
            )
            located_info[tm] = _run_threat_model(cell, table, robust)
            run.mark_finished(tm, config, located_info[tm])
            run.write_timing(earlier_seconds + time.time() - started, torch.get_num_threads(), stages=stages)
        bar.update(1)
    bar.close()
    report = write_report(
        run,
        table.rows,
        robust.rows,
        config,
        located_info,
        model_fingerprint(model).to_dict(),
        seconds=earlier_seconds + time.time() - started,
    )
    return StudyResult(folder=run.root, report=report, table=table.to_frame())
