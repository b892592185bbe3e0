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

from lensteer.core.io import read_json as read_json_file
from lensteer.core.io import write_json
from lensteer.core.models import EMBEDDED_MODEL_NAME, model_fingerprint
from lensteer.core.outdir import claim_folder, folder_lock
from lensteer.errors import DataError
from lensteer.steering.files import artifact_paths, load_steering, save_steering
from lensteer.steering.spec import Steering
from lensteer.study.coherence import Coherence, calibrate_coherent, coherence_for
from lensteer.study.config import PAPER_REGIME, SELECTIVE_METHODS, StudyConfig
from lensteer.study.evaluation import (
    Condition,
    baseline_conditions,
    calibration_probe,
    eval_sets,
    evaluate_conditions,
)
from lensteer.study.identity import (
    STUDY_COMPANIONS,
    STUDY_MARKERS,
    claim_identity,
    config_key,
    identity_hash,
    read_identity,
    study_identity,
)
from lensteer.study.layers import _candidate_layers, locate_threat_model, steering_path
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

FINISHED_FILE = "finished.json"  # threat models done, with the config they were done under
EXAMPLES_FILE = "examples.json"
TIMING_FILE = "timing.json"  # wall seconds summed over every (resumed) run into a folder, and per stage
# timing.json's stages, per threat model (``sets``: the evaluation sets every threat model shares, under "shared");
# ``lensteer run --plan`` estimates the same ones
STAGES = ("sets", "locate", "calibrate", "decode", "score", "conversations", "robustness")


@dataclass(frozen=True, kw_only=True, eq=False)
class StudyResult:
    """Where a study wrote its outputs, and its report."""

    folder: Path
    report: dict[str, Any]
    table: Any = field(repr=False)


def _calibrated(model: Any, built: Steering, path: Path, coherence: Coherence, budget: float) -> Steering:
    """The calibrated steering saved at ``path``, calibrating it as deployed (gate on; KL on held-apart
    harmless and borderline prompts, fluency on held-apart target prompts: :mod:`lensteer.study.coherence`)
    and saving it first if it is not there yet."""
    if artifact_paths(path)[1].exists():
        return load_steering(path, model=model)
    steering = calibrate_coherent(model, built, coherence, budget)
    save_steering(steering, path, model=model)
    return steering


def _robustness(
    model: Any,
    tm: str,
    layer: int,
    conditions: list[Condition],
    table: SweepTable,
    robust: RobustnessTable,
    config: StudyConfig,
    sets: Any,
    log: Callable[[str], None],
) -> None:
    """The robustness rows of one threat model (each setting once; see :mod:`lensteer.study.robustness`)."""
    budget = config.kl_budgets[0]
    steerings = {
        c.method: c.steering
        for c in conditions
        if c.steering is not None
        and c.method in config.robustness_methods
        and c.kl_budget == budget
        and c.layer == layer
    }
    heldout = {m: float(table.get(tm, m, budget, layer)["kl_heldout"]) for m in steerings}
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


# At matched KL these are the same edit as their original: StMP-push at scale 2a moves a token by
# 2a (tau - s), exactly as StMP (mirror) at scale a does. They differ only uncalibrated (the paper regime).
_TWINS = {"StMP-push": "StMP"}


def _push_twin(mirror: Steering, path: Path, model: Any) -> Steering:
    """StMP-push with the edit of a calibrated StMP (mirror): twice its scale (saved at ``path``)."""
    twin = replace(
        mirror,
        stmp_variant="push",
        scale=2.0 * mirror.scale,
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


def read_json(path: Path, default: Any) -> Any:
    """The JSON object at ``path``, or ``default`` if there is no such file (a fresh folder); a half-written
    or foreign file is a :class:`DataError` naming it."""
    return read_json_file(path, what="study file") if path.exists() else default


def kept_located(
    finished: dict[str, Any], threat_model: str, config: StudyConfig, robust: RobustnessTable
) -> dict[str, Any] | None:
    """What was located for ``threat_model`` if a run finished it under this config (and every robustness
    setting of it is in ``robust``), so it is kept whole; ``None`` if it must (still) run."""
    done = finished.get(threat_model)
    if done is None or done["config"] != config_key(config):
        return None
    layer = done["located"].get("layer")
    if not all(
        robust.has(s, threat_model, layer, config.kl_budgets[0])
        for s in settings_for(threat_model, config.robustness)
    ):
        return None
    located: dict[str, Any] = done["located"]
    return located


def mark_finished(
    folder: Path, finished: dict[str, Any], threat_model: str, config: StudyConfig, located: dict[str, Any]
) -> None:
    """Record ``threat_model`` as finished under this config in ``finished.json`` (a resume keeps it)."""
    finished[threat_model] = {"config": config_key(config), "located": located}
    write_json(folder / FINISHED_FILE, finished)


def write_report(
    folder: Path,
    rows: list[dict[str, Any]],
    robustness_rows: list[dict[str, Any]],
    config: StudyConfig,
    located: dict[str, Any],
    model: dict[str, Any],
    *,
    seconds: float,
) -> dict[str, Any]:
    """Build the study's report from its rows (and robustness rows) and write ``report.json``."""
    report = build_report(rows, config, located, model, seconds=seconds)
    if robustness_rows:
        report["robustness"] = robustness_report(robustness_rows)
    write_json(folder / "report.json", report)
    return report


def rebuild_report(out: "str | Path") -> dict[str, Any]:
    """Rewrite ``out/report.json`` from the rows a finished run left on disk (``results.json``,
    ``robustness.json``, ``finished.json``) with this version's report code, without a model: for a
    report whose code changed after the run. The config, model fingerprint and wall time are the run's."""
    folder = Path(out)
    if not (folder / "report.json").is_file():
        raise DataError(f"{folder / 'report.json'} does not exist; run `lensteer run --out {folder}` first")
    with folder_lock(folder):  # no run may write rows while the report is rebuilt from them
        return _rebuild_report(folder)


def _rebuild_report(folder: Path) -> dict[str, Any]:
    old = read_json(folder / "report.json", None)
    missing = [key for key in ("config", "model", "seconds") if key not in old]
    if missing or not isinstance(old["config"], dict):
        raise DataError(
            f"{folder / 'report.json'} lacks {missing or ['config']}; it is not a finished study's report"
        )
    config = StudyConfig.from_dict(old["config"], where=str(folder / "report.json"))
    finished = read_json(folder / FINISHED_FILE, {})
    unfinished = [tm for tm in config.threat_models if tm not in finished]
    if unfinished:
        raise DataError(
            f"{folder}: threat models {unfinished} did not finish (no entry in {FINISHED_FILE}); "
            f"resume them with `lensteer run --out {folder}` and the run's config"
        )
    located = {tm: finished[tm]["located"] for tm in config.threat_models}
    return write_report(
        folder,
        SweepTable(folder).rows,
        RobustnessTable(folder).rows,
        config,
        located,
        old["model"],
        seconds=old["seconds"],
    )


def chosen_steering(
    out: "str | Path", threat_model: str, method: str, kl_budget: float | None = None
) -> Path:
    """Where a finished study in ``out`` saved ``method``'s steering of ``threat_model`` at its chosen layer
    (``kl_budget``: the study's first; ``None`` with a ``:paper`` method: the paper regime), as a stem for
    :func:`~lensteer.load_steering`. A legacy folder (no ``study.json``) has the earlier names."""
    folder = Path(out)
    finished = read_json(folder / FINISHED_FILE, {})
    if threat_model not in finished:
        raise DataError(
            f"{folder}: threat model {threat_model!r} did not finish (no entry in {FINISHED_FILE}); "
            f"finished: {sorted(finished)}"
        )
    paper = method.endswith(PAPER_REGIME)
    name = method.removesuffix(PAPER_REGIME)
    identity = read_identity(folder)
    if kl_budget is None and not paper:
        config = (
            identity["config"]
            if identity is not None
            else read_json(folder / "report.json", {}).get("config", {})
        )
        kl_budget = float(config["kl_budgets"][0])
    if identity is None:
        return (
            folder
            / "steerings"
            / (f"{threat_model}_{name}_paper" if paper else f"{threat_model}_{name}_kl{kl_budget:g}")
        )
    layer = int(finished[threat_model]["located"]["layer"])
    return steering_path(
        folder, threat_model, name, None if paper else kl_budget, layer, identity_hash(identity)
    )


def _random_like(steering: Steering, seed: int) -> Steering:
    """A random unit direction with the same mode, positions, gate and starting scale (to be calibrated)."""
    unit = torch.randn(steering.d_model, generator=torch.Generator().manual_seed(seed))
    return replace(steering, unit=unit, info={**steering.info, "control": f"random direction, seed {seed}"})


def run_study(
    model: Any,
    config: StudyConfig,
    out: "str | Path",
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    force: bool = False,
) -> StudyResult:
    """Run the study and write ``study.json``, ``report.json``, ``results.csv``/``results.json``,
    ``steerings/``, ``examples.json`` into ``out``. Re-running into the same folder resumes: a threat model
    finished under the same config is kept whole (``finished.json``, no re-locating), calibrated steerings
    are reloaded and finished conditions and robustness settings are kept.

    ``out`` must be new, empty or a study folder (:mod:`lensteer.core.outdir`; locked while the study
    runs), and a rerun must have the first run's identity (:mod:`lensteer.study.identity`): another config,
    model weights, data or lensteer version is refused, or with ``force=True`` starts afresh (the earlier
    results moved aside)."""
    with claim_folder(out, STUDY_MARKERS, "study", STUDY_COMPANIONS) as folder:
        identity = claim_identity(
            folder, study_identity(config, model_fingerprint(model).to_dict()), force=force, log=log
        )
        assert identity is not None
        return _run_study(model, config, folder, identity, progress=progress, log=log)


def _run_study(
    model: Any,
    config: StudyConfig,
    folder: Path,
    identity: str,
    *,
    progress: bool,
    log: Callable[[str], None],
) -> StudyResult:
    table = SweepTable(folder)
    robust = RobustnessTable(folder)
    examples_path, timing_path = folder / EXAMPLES_FILE, folder / TIMING_FILE
    examples: dict[str, Any] = read_json(examples_path, {})
    earlier = read_json(timing_path, {"seconds": 0.0})
    earlier_seconds = float(earlier["seconds"])
    stages: dict[str, dict[str, float]] = earlier.get("stages", {})
    started = time.time()
    log(f"building the KL calibration set ({config.n_kl} harmless training prompts) and the evaluation sets")
    sets = eval_sets(model, config)
    _add_stage(stages, "shared", "sets", started)
    located_info: dict[str, Any] = {}
    bar = tqdm(total=len(config.threat_models), desc="study", disable=not progress, unit="threat model")
    finished: dict[str, Any] = read_json(folder / FINISHED_FILE, {})  # a resume skips these whole
    for tm in config.threat_models:
        kept = kept_located(finished, tm, config, robust)
        if kept is not None:
            log(f"[{tm}] finished in an earlier run with this config; kept")
            located_info[tm] = kept
            bar.update(1)
            continue
        log(
            f"[{tm}] locating (probing {len(_candidate_layers(model, config)) if config.layer is None else 1} layers)"
        )
        mark = time.time()
        probe = calibration_probe(model, tm, config, sets)  # the study's calibration set of this threat model
        loc = locate_threat_model(model, tm, config, sets.calibration_prompts, probe)
        mark = _add_stage(stages, tm, "locate", mark)
        located_info[tm] = {
            "layer": loc.layer,
            "site": loc.site,
            "reasons": loc.reasons,
            "reference_norm": loc.reference_norm,
            "probe_auroc": {r["layer"]: r["probe_auroc"] for r in loc.probing["rows"]},
            **(loc.selection or {}),  # candidates, chosen, selection settings
        }
        located_info[tm] |= {"massive_tokens": loc.massive, "selective_fit": loc.fit}
        if loc.gate_search is not None:
            located_info[tm]["gate"] = loc.gate_search
            located_info[tm]["gate_curve"] = loc.gate_curve
        log(f"[{tm}] steering at layer {loc.layer} {loc.site}: {'; '.join(loc.reasons)[:200]}")
        conditions = [replace(c, layer=loc.layer) for c in baseline_conditions(tm, config)]
        twins: list[tuple[str, str, float, int, Steering]] = []
        # held-apart target prompts (fluency), with the held-apart harmless + borderline KL probe
        coherence = coherence_for(model, tm, config, probe)
        for layer, built in ((loc.layer, loc.steerings), *sorted(loc.sweep.items())):
            at = "" if layer == loc.layer else f" (layer sweep: L{layer})"
            for method in sorted(config.methods, key=lambda m: m in _TWINS):  # a twin after its original
                for budget in config.kl_budgets:
                    path = steering_path(folder, tm, method, budget, layer, identity)
                    original = _TWINS.get(method) if _TWINS.get(method) in config.methods else None
                    if (
                        original is not None
                    ):  # the same edit as its original at matched KL: derived, not re-run
                        first = next(
                            c
                            for c in conditions
                            if (c.method, c.kl_budget, c.layer) == (original, budget, layer)
                        )
                        assert first.steering is not None
                        steering = _push_twin(first.steering, path, model)
                        twins.append((method, original, budget, layer, steering))
                        continue
                    steering = _calibrated(model, built[method], path, coherence, budget)
                    cal = steering.info.get("calibration", {})
                    log(
                        f"[{tm}] {method} @ KL {budget:g}{at}: scale {steering.scale:.4g} "
                        f"(KL {cal.get('kl', math.nan):.3f}{'' if cal.get('reached', True) else ', budget not reached'}"
                        f"{'' if cal.get('binding', 'kl') == 'kl' else ', set by ' + cal['binding']})"
                    )
                    conditions.append(
                        Condition(method=method, steering=steering, kl_budget=budget, layer=layer)
                    )
        if config.regimes:  # the paper's rule as written: scale 1, no calibration
            for method in (m for m in config.methods if m in SELECTIVE_METHODS):
                path = steering_path(folder, tm, method, None, loc.layer, identity)
                if not artifact_paths(path)[1].exists():
                    save_steering(loc.steerings[method], path, model=model)
                conditions.append(
                    Condition(
                        method=f"{method}{PAPER_REGIME}",
                        steering=load_steering(path, model=model),
                        layer=loc.layer,
                    )
                )
        if config.random_seeds:
            template = loc.steerings.get("SwFC") or next(iter(loc.steerings.values()))
            budget = config.kl_budgets[0]
            for seed in config.random_seeds:
                path = steering_path(folder, tm, f"random{seed}", budget, loc.layer, identity)
                control = _calibrated(model, _random_like(template, seed), path, coherence, budget)
                conditions.append(
                    Condition(method="random", steering=control, kl_budget=budget, layer=loc.layer, seed=seed)
                )
        mark = _add_stage(stages, tm, "calibrate", mark)
        pending = [c for c in conditions if not table.has(tm, c.key, c.kl_budget, c.layer)]
        if pending:
            log(
                f"[{tm}] evaluating {len(pending)} conditions ({', '.join(c.key for c in pending)}), "
                f"{CONDITIONS_PER_BLOCK} at a time"
            )
        for start in range(
            0, len(pending), CONDITIONS_PER_BLOCK
        ):  # each block's rows are on disk before the next
            block = pending[start : start + CONDITIONS_PER_BLOCK]
            earlier = (
                table.get(tm, "baseline", None, loc.layer)
                if table.has(tm, "baseline", None, loc.layer)
                else None
            )
            rows, ex = evaluate_conditions(
                model, tm, block, config, sets, baseline=earlier, log=log, stages=stages.setdefault(tm, {})
            )
            for cond, row in zip(block, rows, strict=True):
                s = cond.steering
                table.add(
                    {
                        "threat_model": tm,
                        "method": cond.key,
                        "kl_budget": cond.kl_budget,
                        "layer": cond.layer,
                        **(
                            {
                                "scale": s.scale,
                                "coefficient": s.coefficient,
                                "calibrated_kl": s.info.get("calibration", {}).get("kl"),
                                "kl_reached": s.info.get("calibration", {}).get("reached"),
                            }
                            if s is not None
                            else {}
                        ),
                        **row,
                    }
                )
            examples.setdefault(tm, {}).update({k: v for k, v in ex.items()})
            write_json(examples_path, examples)
        for method, original, budget, layer, steering in twins:
            if not table.has(tm, method, budget, layer) and table.has(tm, original, budget, layer):
                table.add(
                    {
                        **table.get(tm, original, budget, layer),
                        "method": method,
                        "scale": steering.scale,
                        "coefficient": steering.coefficient,
                        "same_as": original,
                    }
                )
        if config.robustness:
            mark = time.time()
            _robustness(model, tm, loc.layer, conditions, table, robust, config, sets, log)
            _add_stage(stages, tm, "robustness", mark)
        mark_finished(folder, finished, tm, config, located_info[tm])
        write_json(
            timing_path,
            {
                "seconds": earlier_seconds + time.time() - started,
                "threads": torch.get_num_threads(),
                "stages": stages,
            },
        )
        bar.update(1)
    bar.close()
    report = write_report(
        folder,
        table.rows,
        robust.rows,
        config,
        located_info,
        model_fingerprint(model).to_dict(),
        seconds=earlier_seconds + time.time() - started,
    )
    return StudyResult(folder=folder, report=report, table=table.to_frame())
