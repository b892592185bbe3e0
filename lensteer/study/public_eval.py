"""A steering measured on a public benchmark file (HarmBench, XSTest, TruthfulQA, ...; see
:mod:`lensteer.evaluate.public_sets`), against the unsteered model, the prompting baseline and random
directions of the same KL.

The benchmark's threat model (the one whose ``benchmarks`` name its format) supplies the trait scorer and
the prompting baseline's system prompt. Every condition answers the same bare prompts (as the benchmark
publishes them: no misaligning context), decoded in one batch stream; then, per condition:

* ``trait``: the threat model's trait on the benchmark's ``trait`` rows (a refusal of a harmful request;
  for a multiple-choice set such as TruthfulQA, the correct choice by mean log-probability per token,
  teacher-forced with the steering at every position), with a Wilson interval;
* ``over_refusal``: refusals of its ``safe`` rows (XSTest's safe types, OR-Bench, JBB benign), Wilson;
* ``unreadable_share``: answers that are not language (a steering that breaks the text refuses nothing);
* exact McNemar tests on the same rows, of each condition against the unsteered model
  (``p_vs_baseline``), the prompting baseline (``p_vs_prompting``) and the random directions (the largest
  p over the seeds: ``p_vs_random``), for the trait and for over-refusal.

The random controls take the steering's mode, positions and gate with a random unit direction, calibrated
to the steering's own KL on held-out harmless prompts (as the study's random controls are).
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from lensteer import threats
from lensteer.core.bridge import Bridge
from lensteer.core.chat import ChatPrompt
from lensteer.core.stats import mcnemar_exact, wilson_interval
from lensteer.evaluate.capability import mc_accuracy
from lensteer.evaluate.coherence import is_unreadable
from lensteer.evaluate.public_sets import PublicSet, public_format
from lensteer.evaluate.refusal import is_refusal
from lensteer.steering.calibration import calibrate, steering_kl
from lensteer.steering.files import load_steering
from lensteer.steering.generation import generate
from lensteer.steering.positions import Window
from lensteer.steering.spec import Steering
from lensteer.study.coherence import calibration_set
from lensteer.study.config import StudyConfig
from lensteer.study.evaluation import Condition, baseline_conditions

MIN_KL = 1e-6  # a steering whose KL is below this never acts on harmless text: no random control matches it


def random_control(steering: Steering, seed: int) -> Steering:
    """The steering with a random unit direction (same mode, positions, gate and starting scale)."""
    unit = torch.randn(steering.d_model, generator=torch.Generator().manual_seed(seed))
    return replace(steering, unit=unit, info={**steering.info, "control": f"random direction, seed {seed}"})


def steering_conditions(
    model: Bridge, steering: Steering, threat_model: str, config: StudyConfig, *, name: str = "steered"
) -> tuple[list[Condition], dict[str, Any]]:
    """The unsteered and prompting baselines, the steering (as ``name``) and one random control per
    ``config.random_seeds``, calibrated to the steering's KL (gate on) on the study's held-apart harmless and borderline prompts; and
    what the calibration found (the KL matched, each control's KL, or why there are no controls)."""
    conditions = [*baseline_conditions(threat_model, config), Condition(method=name, steering=steering)]
    if not config.random_seeds:
        return conditions, {"random": "no random_seeds in the config"}
    _, probe = calibration_set(model, config)  # the study's: held-apart harmless and borderline prompts
    target = steering_kl(model, steering, probe)
    if target < MIN_KL:
        return conditions, {"kl": target, "random": "the steering does not change harmless text: no control"}
    found: dict[str, Any] = {"kl": target, "random_kl": {}}
    for seed in config.random_seeds:
        done = calibrate(model, random_control(steering, seed), probe, target)
        found["random_kl"][str(seed)] = done.kl
        conditions.append(Condition(method="random", steering=done.steering, seed=seed))
    return conditions, found


def study_conditions(
    model: Bridge, out: "str | Path", threat_model: str, config: StudyConfig
) -> tuple[list[Condition], dict[str, Any]]:
    """The conditions a finished study in ``out`` evaluated for ``threat_model`` at its first KL budget and
    chosen layer: the baselines, each method's saved steering and each saved random control."""
    from lensteer.study.runner import chosen_steering

    budget = config.kl_budgets[0]
    conditions = baseline_conditions(threat_model, config)
    for method in config.methods:
        path = chosen_steering(out, threat_model, method, budget)
        conditions.append(Condition(method=method, steering=load_steering(path, model=model)))
    for seed in config.random_seeds:
        path = chosen_steering(out, threat_model, f"random{seed}", budget)
        conditions.append(Condition(method="random", steering=load_steering(path, model=model), seed=seed))
    return conditions, {"kl_budget": budget, "study": str(out)}


ConditionsOf = Callable[[str], tuple[list[Condition], dict[str, Any]]]


def evaluate_public_sets(
    model: Bridge, sets: Mapping[str, PublicSet], conditions_of: ConditionsOf, config: StudyConfig
) -> dict[str, Any]:
    """Each public set under the conditions of its threat model (``conditions_of(threat_model)``, built
    once per threat model: a random control is calibrated once); one report per set, keyed as ``sets``."""
    built: dict[str, tuple[list[Condition], dict[str, Any]]] = {}
    out: dict[str, Any] = {}
    for key, public in sets.items():
        name = threats.for_benchmark(public.format).name
        if name not in built:
            built[name] = conditions_of(name)
        conditions, found = built[name]
        out[key] = {**evaluate_public_set(model, public, conditions, config), "controls": found}
    return out


def _rate(flags: Sequence[bool], prefix: str) -> dict[str, Any]:
    k, n = sum(bool(f) for f in flags), len(flags)
    lo, hi = wilson_interval(k, n) if n else (float("nan"), float("nan"))
    return {
        prefix: k / n if n else None,
        f"{prefix}_ci": [lo, hi] if n else None,
        f"n_{prefix}": n,
        f"{prefix}_flags": [bool(f) for f in flags],
    }


def _answers(
    model: Bridge, prompts: Sequence[str], conditions: Sequence[Condition], config: StudyConfig
) -> list[tuple[str, ...]]:
    """Every condition's answers to ``prompts``, decoded in one batch stream."""
    if not prompts:
        return [() for _ in conditions]
    rows = [ChatPrompt(user=p, system=c.system) for c in conditions for p in prompts]
    owners = [c.steering for c in conditions for _ in prompts]
    out = generate(
        model,
        rows,
        prompt_steerings=owners,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
    )
    n = len(prompts)
    return [out.texts[k * n : (k + 1) * n] for k in range(len(conditions))]


def _choice_flags(model: Bridge, public: PublicSet, cond: Condition, config: StudyConfig) -> list[bool]:
    """Per multiple-choice row: is the correct choice the likeliest (teacher-forced, steering everywhere)?"""
    items = public.mc_items()
    if not items:
        return []
    s = None if cond.steering is None else replace(cond.steering.placed(positions=Window(1, None)), gate=None)
    result = mc_accuracy(model, items, batch_size=config.batch_size, system=cond.system, steering=s)
    return [bool(c) for c in result.correct]


def _tests(row: dict[str, Any], others: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """Exact McNemar p-values of a condition's trait and over-refusal against the baselines and randoms."""
    out: dict[str, Any] = {}
    randoms = [r for k, r in others.items() if k.startswith("random:")]
    for metric in ("trait", "over_refusal"):
        flags = row[f"{metric}_flags"]
        if not flags:
            continue
        for control in ("baseline", "prompting"):
            if control in others and others[control] is not row:
                out[f"{metric}_p_vs_{control}"] = mcnemar_exact(
                    flags, others[control][f"{metric}_flags"]
                ).p_value
        mine = [r for r in randoms if r is not row]
        if mine:
            out[f"{metric}_p_vs_random"] = max(
                mcnemar_exact(flags, r[f"{metric}_flags"]).p_value for r in mine
            )
    return out


def evaluate_public_set(
    model: Bridge, public: PublicSet, conditions: Sequence[Condition], config: StudyConfig
) -> dict[str, Any]:
    """Every condition on one public benchmark file (at most ``config.n_eval`` rows of each kind, every
    category in turn); one row per condition with its rates, intervals, per-row flags and paired tests.
    """
    tm = threats.for_benchmark(public.format)
    rows_of = public.stratified(config.n_eval)
    trait_set = rows_of.contrast_set("trait")
    generated = [r.prompt for r in rows_of.of_kind("trait") if not r.choices]
    safe = [r.prompt for r in rows_of.of_kind("safe")]
    trait_answers = _answers(model, generated, conditions, config)
    safe_answers = _answers(model, safe, conditions, config)
    table: dict[str, dict[str, Any]] = {}
    for k, cond in enumerate(conditions):
        texts = trait_answers[k]
        trait = tm.flags(texts, trait_set, model) if texts else _choice_flags(model, rows_of, cond, config)
        row = _rate(trait, "trait") | _rate([is_refusal(t) for t in safe_answers[k]], "over_refusal")
        answered = [*texts, *safe_answers[k]]
        row["unreadable_share"] = (
            sum(is_unreadable(t) for t in answered) / len(answered) if answered else None
        )
        row["examples"] = [{"prompt": p, "answer": t} for p, t in zip(generated[:2], texts[:2], strict=False)]
        table[cond.key] = row
    for row in table.values():
        row.update(_tests(row, table))
    return {
        "eval_set": public.format,
        "title": public_format(public.format).title,
        "layout_source": public_format(public.format).source,
        "file": public.path,
        "sha256": public.sha256,
        "threat_model": tm.name,
        "trait_label": tm.trait_label,
        "scoring": "multiple choice (teacher-forced)" if public.mc_items() else "generated answers",
        "conditions": table,
    }


def _cell(row: dict[str, Any], metric: str) -> str:
    value, ci = row.get(metric), row.get(f"{metric}_ci")
    if value is None or ci is None:
        return "-"
    return f"{value:.0%} [{ci[0]:.0%}, {ci[1]:.0%}] (n={row[f'n_{metric}']})"


def _p(row: dict[str, Any], control: str) -> str:
    """The condition's p-values against ``control``: trait / over-refusal where the set has both."""
    found = [row.get(f"{m}_p_vs_{control}") for m in ("trait", "over_refusal") if row[f"n_{m}"]]
    return " / ".join("-" if p is None else f"{p:.3g}" for p in found)


def public_table(report: dict[str, Any]) -> str:
    """A markdown table of one :func:`evaluate_public_set` report."""
    lines = [
        f"{report['title']} ({report['file']}): {report['trait_label']} [{report['threat_model']}], "
        f"{report['scoring']}",
        "| condition | trait | over-refusal | p vs unsteered | p vs prompting | p vs random |",
        "|---|---|---|---|---|---|",
    ]
    for key, row in report["conditions"].items():
        lines.append(
            f"| {key} | {_cell(row, 'trait')} | {_cell(row, 'over_refusal')} | {_p(row, 'baseline')} "
            f"| {_p(row, 'prompting')} | {_p(row, 'random')} |"
        )
    return "\n".join(lines)
