"""The whole study, one threat model at a time: locate -> choose site -> calibrate -> steer -> evaluate.

For each threat model (refusal, compassion, honesty) the study

1. **locates**: probes the response-side contrast (aligned vs misaligned responses, averaged over
   response tokens) at candidate layers and picks the steering layer with
   :func:`~lensteer.study.recommend_site` (Arditi et al.'s rule: skip the last 20% of layers);
2. **builds** the seed paper's steerings at that layer: SwFC along the difference of means, StTP
   and StMP from the probe's boundary (refusal adds a CAST-style prompt gate from the
   harmful-vs-harmless probe, so harmless requests are left alone);
3. **calibrates** every method to each KL budget on harmless prompts (matched coherence cost);
4. **evaluates** each condition against the unsteered baseline and a random direction of the
   same norm at the same site: trait rate under the misaligning context, KL, perplexity of the
   outputs under the unsteered model (ratio to the baseline's), repetition over multi-turn
   conversations, over-refusal on harmless prompts, multiple-choice capability; rates carry
   bootstrap confidence intervals.

Results go into one tidy table (one row per threat model x method x KL budget), written after every
cell, so an interrupted sweep resumes where it stopped and never loses a finished cell.
"""

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lensteer.core.io import write_json
from lensteer.core.models import model_fingerprint
from lensteer.steering.calibration import calibrate
from lensteer.steering.spec import Steering
from lensteer.study.config import StudyConfig
from lensteer.study.evaluation import (
    _random_like,
    conversation_fields,
    eval_sets,
    evaluate_condition,
)
from lensteer.study.layers import _candidate_layers, locate_threat_model, steering_path
from lensteer.study.report import build_report
from lensteer.study.table import SweepTable

# Misaligning condition per threat model: refusal is probed with bare harmful requests (the embedded
# model already complies with them); the others with the bundled misaligning context.
# Follow-up user turns for the multi-turn (repetition) conversations; written by us.
# StudyConfig.positions -> the steerings' positions (see StudyConfig).


# -- trait scoring ----------------------------------------------------------------------------------


# -- the sweep table --------------------------------------------------------------------------------


# -- one threat model -----------------------------------------------------------------------------


# -- evaluation ------------------------------------------------------------------------------------


# -- the runner ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, eq=False)
class StudyResult:
    """Where a study wrote its outputs, and its report."""

    folder: Path
    report: dict[str, Any]
    table: Any = field(repr=False)


def run_study(
    model: Any,
    config: StudyConfig,
    out: "str | Path",
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> StudyResult:
    """Run the study and write ``report.json``, ``results.csv``/``results.json``, ``steerings/``,
    ``examples.json`` into ``out``. Re-running into the same folder resumes: finished cells are kept."""
    from lensteer.steering.files import artifact_paths, load_steering, save_steering

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    table = SweepTable(folder)
    examples_path = folder / "examples.json"
    examples: dict[str, Any] = json.loads(examples_path.read_text()) if examples_path.exists() else {}
    started = time.time()
    log(f"building the KL calibration set ({config.n_kl} harmless prompts)")
    sets = eval_sets(model, config)
    harmless = sets.harmless
    located_info: dict[str, Any] = {}
    cells = [(tm, m, b) for tm in config.threat_models for m in config.methods for b in config.kl_budgets]
    bar = tqdm(total=len(cells) + len(config.threat_models) * (2 if config.random_control else 1),
               desc="study", disable=not progress, unit="cell")
    for tm in config.threat_models:
        log(f"[{tm}] locating (probing {len(_candidate_layers(model, config)) if config.layer is None else 1} layers)")
        loc = locate_threat_model(model, tm, config, harmless, sets.kl)
        located_info[tm] = {"layer": loc.layer, "site": loc.site, "reasons": loc.reasons,
                            "reference_norm": loc.reference_norm, "steerability": loc.steerability,
                            "probe_auroc": {r["layer"]: r["probe_auroc"] for r in loc.probing["rows"]}}
        gate = next((s.gate for s in loc.steerings.values() if s.gate is not None), None)
        if gate is not None:
            located_info[tm]["gate"] = {"layer": gate.layer, "site": gate.site, "threshold": gate.threshold,
                                        "position": gate.position}
        log(f"[{tm}] steering at layer {loc.layer} {loc.site}: {'; '.join(loc.reasons)[:200]}")
        if not table.has(tm, "baseline", None, loc.layer):
            row, ex = evaluate_condition(model, tm, None, config, sets, conversations=False)
            table.add({"threat_model": tm, "method": "baseline", "kl_budget": None, "layer": loc.layer, **row})
            examples.setdefault(tm, {})["baseline"] = ex
            write_json(examples_path, examples)
        bar.update(1)
        base = table.get(tm, "baseline", None, loc.layer)
        if loc.sweep:  # the layer sweep's cells, now that the chosen layer is known
            bar.total += len(loc.sweep) * len(config.methods) * len(config.kl_budgets)
            bar.refresh()
        for layer, built in ((loc.layer, loc.steerings), *sorted(loc.sweep.items())):
            at = "" if layer == loc.layer else f" (layer sweep: L{layer})"
            for method in config.methods:
                for budget in config.kl_budgets:
                    bar.update(1)
                    if table.has(tm, method, budget, layer):
                        continue
                    path = steering_path(folder, tm, method, budget, layer, loc.layer)
                    if artifact_paths(path)[1].exists():
                        steering = load_steering(path, model=model)
                        cal_info = steering.info.get("calibration", {})
                    else:
                        # calibrate the raw edit (no gate): the gate would hide its cost on harmless prompts
                        cal = calibrate(model, replace(built[method], gate=None), sets.kl, budget)
                        steering = replace(cal.steering, gate=built[method].gate)
                        save_steering(steering, path, model=model)
                        cal_info = steering.info["calibration"]
                    log(f"[{tm}] {method} @ KL {budget:g}{at}: scale {steering.scale:.4g} "
                        f"(KL {cal_info.get('kl', math.nan):.3f}{'' if cal_info.get('reached', True) else ', budget not reached'})")
                    row, ex = evaluate_condition(model, tm, steering, config, sets, baseline=base, conversations=False)
                    table.add({"threat_model": tm, "method": method, "kl_budget": budget, "layer": layer,
                               "scale": steering.scale, "coefficient": steering.coefficient,
                               "calibrated_kl": cal_info.get("kl"), "kl_reached": cal_info.get("reached"), **row})
                    if layer == loc.layer:
                        examples.setdefault(tm, {})[f"{method}@{budget:g}"] = ex
                        write_json(examples_path, examples)
        if config.random_control and "SwFC" in config.methods and not table.has(tm, "random", config.kl_budgets[0], loc.layer):
            sw = load_steering(steering_path(folder, tm, "SwFC", config.kl_budgets[0], loc.layer, loc.layer), model=model)
            control = _random_like(sw, config.seed)
            row, ex = evaluate_condition(model, tm, control, config, sets, baseline=base, conversations=False)
            table.add({"threat_model": tm, "method": "random", "kl_budget": config.kl_budgets[0], "layer": loc.layer,
                       "scale": control.scale, "coefficient": control.coefficient, **row})
            examples.setdefault(tm, {})["random"] = ex
            write_json(examples_path, examples)
        if config.n_conversations > 0:
            _add_conversations(model, tm, config, table, folder, loc.layer, log)
        bar.update(1)
    bar.close()
    report = build_report(table.rows, config, located_info, model_fingerprint(model).to_dict(),
                          seconds=time.time() - started)
    write_json(folder / "report.json", report)
    return StudyResult(folder=folder, report=report, table=table.to_frame())


def _add_conversations(model: Any, tm: str, config: StudyConfig, table: SweepTable, folder: Path, chosen: int,
                       log: Callable[[str], None]) -> None:
    """Add multi-turn repetition to this threat model's rows that lack it, all conditions in one go."""
    from lensteer.steering.files import load_steering

    pending = [r for r in table.rows if r["threat_model"] == tm and "repetition_by_turn" not in r]
    if not pending:
        return

    def condition(r: dict[str, Any]) -> Steering | None:
        if r["method"] == "baseline":
            return None
        if r["method"] == "random":
            sw = load_steering(steering_path(folder, tm, "SwFC", r["kl_budget"], r["layer"], chosen), model=model)
            return _random_like(sw, config.seed)
        return load_steering(steering_path(folder, tm, r["method"], r["kl_budget"], r["layer"], chosen), model=model)

    log(f"[{tm}] {config.n_turns}-turn conversations for {len(pending)} conditions, decoded together")
    fields = conversation_fields(model, tm, [condition(r) for r in pending], config)
    for r, extra in zip(pending, fields, strict=True):
        table.add({**r, **extra})


