"""What a study will run and about how long each stage will take, before it runs (``lensteer run --plan``).

The plan lists, per threat model, the conditions the runner will evaluate (:func:`plan_conditions`, the
function the runner itself builds them from: baselines, each method per KL budget and layer, twins derived
not run, the paper regime, random controls) and the prompts of every set, and counts the work of every
stage ``timing.json`` records (:data:`~lensteer.study.runner.STAGES`, :mod:`lensteer.study.costs`): the
locate stage with its site choice, calibration, decoding, scoring, conversations, robustness. A short probe
(:func:`probe_rates`, about 10 s) measures this machine's decoding and teacher-forced speed at the study's
own shapes (its batch, its prompts), and each stage's estimate is its work at those rates.

The estimate is coarse (calibration and the site choice take a data-dependent number of passes, answers
stop early at end of turn): it says whether a run takes minutes or hours, not seconds.
"""

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lensteer import threats
from lensteer.core.bridge import Bridge
from lensteer.core.chat import tokenize_prompt
from lensteer.study.config import PAPER_REGIME, SELECTIVE_METHODS, StudyConfig
from lensteer.study.costs import (
    Block,
    Rates,
    Shapes,
    Shared,
    Sites,
    StagePlan,
    calibrate_stage,
    conversations_stage,
    decode_stage,
    locate_stage,
    robustness_stage,
    score_stage,
    sets_stage,
)
from lensteer.study.evaluation import _common_prefix
from lensteer.study.robustness import settings_for

__all__ = ["PlannedCondition", "Rates", "StagePlan", "ThreatModelPlan", "plan_conditions", "study_plan"]

# At matched KL these are the same edit as their original: StMP-push at scale 2a moves a token by
# 2a (tau - s), exactly as StMP (mirror) at scale a does. They differ only uncalibrated (the paper regime),
# so a twin is derived from its original, never run.
TWINS = {"StMP-push": "StMP"}


Kind = Literal["baseline", "prompting", "calibrated", "twin", "paper", "random"]


@dataclass(frozen=True, kw_only=True)
class PlannedCondition:
    """One condition of the plan.

    Attributes:
        method: The table's method name without a seed (``baseline``, ``prompting``, ``SwFC``, ``StTP:paper``,
            ``random`` ...).
        kind: How the runner makes it: no steering (``baseline``, ``prompting``), a steering calibrated to
            ``kl_budget`` (``calibrated``), derived from the calibrated ``twin_of`` (``twin``: evaluated
            once, under its original), uncalibrated at scale 1 (``paper``) or a random direction
            calibrated to ``kl_budget`` (``random``, with its ``seed``).
        kl_budget: The KL budget (``None``: unsteered or the paper regime).
        layer: The layer it steers at (the chosen one, or another layer of a layer sweep).
        seed: The random direction's seed.
        twin_of: The condition a ``twin`` duplicates at matched KL.
    """

    method: str
    kind: Kind
    layer: int
    kl_budget: float | None = None
    seed: int | None = None
    twin_of: str | None = None

    @property
    def key(self) -> str:
        """The table's method column: ``random`` controls carry their seed (``random:1``)."""
        return f"random:{self.seed}" if self.kind == "random" else self.method


def sweep_layers(config: StudyConfig, n_layers: int, chosen: int) -> list[int]:
    """The other layers of a layer sweep (``config.sweep_layers``, negative from the end), ascending."""
    return [x for x in sorted({x % n_layers for x in config.sweep_layers}) if x != chosen]


def twin_of(method: str, config: StudyConfig) -> str | None:
    """The method ``method`` duplicates at matched KL, if the study also runs that one."""
    original = TWINS.get(method)
    return original if original in config.methods else None


def plan_conditions(config: StudyConfig, layer: int, n_layers: int) -> list[PlannedCondition]:
    """Every condition of one threat model steered at ``layer`` of an ``n_layers``-layer model, in the
    order the runner builds and evaluates them: the baselines, each method at each KL budget at the chosen
    layer and then at each swept layer (a twin after its original), the paper regime of the selective
    methods, the random-direction controls."""
    out = [PlannedCondition(method="baseline", kind="baseline", layer=layer)]
    if config.prompting:
        out.append(PlannedCondition(method="prompting", kind="prompting", layer=layer))
    for at in (layer, *sweep_layers(config, n_layers, layer)):
        for method in sorted(config.methods, key=lambda m: m in TWINS):  # a twin after its original
            original = twin_of(method, config)
            out += [
                PlannedCondition(
                    method=method,
                    kind="calibrated" if original is None else "twin",
                    layer=at,
                    kl_budget=budget,
                    twin_of=original,
                )
                for budget in config.kl_budgets
            ]
    if config.regimes:  # the paper's rule as written: scale 1, no calibration
        out += [
            PlannedCondition(method=f"{m}{PAPER_REGIME}", kind="paper", layer=layer)
            for m in config.methods
            if m in SELECTIVE_METHODS
        ]
    out += [
        PlannedCondition(method="random", kind="random", layer=layer, kl_budget=config.kl_budgets[0], seed=s)
        for s in config.random_seeds
    ]
    return out


@dataclass(frozen=True, kw_only=True)
class ThreatModelPlan:
    """The conditions and prompt counts of one threat model."""

    threat_model: str
    conditions: int  # rows written (twins included)
    evaluated: int  # conditions decoded and scored (twins are copied from their original)
    steered: int
    calibrated: int
    n_eval: int
    n_harmless: int
    n_borderline: int
    labels: tuple[str, ...] = ()  # every row: method @ KL budget, and a swept layer's number


CHOSEN = -1  # the layer the site choice will pick, unknown before the run


def chosen_layer(config: StudyConfig, n_layers: int) -> int:
    """The layer the conditions are planned at: the configured one, else :data:`CHOSEN`."""
    return CHOSEN if config.layer is None else config.layer % n_layers


def condition_label(c: PlannedCondition, chosen: int) -> str:
    """``SwFC @ 0.1``, ``StTP:paper``, ``SwFC @ 0.1 L7`` (a layer other than ``chosen``), ``random:0 @ 0.1``."""
    budget = "" if c.kl_budget is None else f" @ {c.kl_budget:g}"
    return f"{c.key}{budget}{'' if c.layer == chosen else f' L{c.layer}'}"


def threat_model_plan(
    threat_model: str, config: StudyConfig, n_layers: int, shared: Shared | None = None
) -> ThreatModelPlan:
    """The rows the runner will write for ``threat_model`` on an ``n_layers``-layer model and the sizes of
    its prompt sets (with a layer sweep and the site chosen at run time, a swept layer the site choice picks
    is evaluated once: the run then holds that layer's rows once, the plan lists them twice)."""
    chosen = chosen_layer(config, n_layers)
    planned = plan_conditions(config, chosen, n_layers)
    evaluated = [c for c in planned if c.kind != "twin"]
    return ThreatModelPlan(
        threat_model=threat_model,
        conditions=len(planned),
        evaluated=len(evaluated),
        steered=sum(c.kind not in ("baseline", "prompting") for c in evaluated),
        calibrated=sum(c.kind in ("calibrated", "random") for c in planned),
        n_eval=len(threats.get(threat_model).load().test.stratified(config.n_eval)),
        n_harmless=shared.n_harmless if shared is not None else 0,
        n_borderline=shared.n_borderline if shared is not None else 0,
        labels=tuple(condition_label(c, chosen) for c in planned),
    )


def _blocks(threat_model: str, config: StudyConfig, n_layers: int, *, first: bool) -> list[Block]:
    """The evaluated conditions in the runner's blocks (``runner.CONDITIONS_PER_BLOCK``)."""
    from lensteer.study.runner import CONDITIONS_PER_BLOCK  # the runner imports this module

    gate = threats.get(threat_model).prompt_gate
    evaluated = [
        c for c in plan_conditions(config, chosen_layer(config, n_layers), n_layers) if c.kind != "twin"
    ]
    out = []
    for start in range(0, len(evaluated), CONDITIONS_PER_BLOCK):
        block = evaluated[start : start + CONDITIONS_PER_BLOCK]
        out.append(
            Block(
                conditions=len(block),
                steered=sum(c.kind not in ("baseline", "prompting") for c in block),
                gated=sum(gate and c.kind == "calibrated" for c in block),
                cached=0 if first else sum(c.kind == "baseline" for c in block),
            )
        )
    return out


def _sites(model: Bridge, config: StudyConfig) -> Sites:
    """The candidate layers the site choice screens (the stride's, plus at most ``patching_layers`` more)."""
    from lensteer.study.site_choice import candidate_layer_set, cutoff_layer

    n = int(model.cfg.n_layers)
    sweep = len(sweep_layers(config, n, chosen_layer(config, n)))
    if config.layer is not None:
        return Sites(screened=1, sweep=sweep)
    strided = candidate_layer_set(model, config, ())
    spare = max(cutoff_layer(n) - len(strided), 0)
    return Sites(screened=len(strided) + min(config.patching_layers, spare), sweep=sweep)


def study_plan(model: Bridge, config: StudyConfig) -> tuple[list[ThreatModelPlan], list[StagePlan]]:
    """Every threat model's conditions and every stage's work, in the order the runner runs them."""
    n_layers = int(model.cfg.n_layers)
    shared = Shared.of(model, config)
    sites = _sites(model, config)
    stages = [sets_stage(shared, config)]
    plans = []
    for k, tm in enumerate(config.threat_models):
        p = threat_model_plan(tm, config, n_layers, shared)
        plans.append(p)
        sh = Shapes.of(model, tm, config)
        blocks = _blocks(tm, config, n_layers, first=k == 0)
        stages += [
            locate_stage(sh, shared, config, sites),
            calibrate_stage(sh, shared, config, p.calibrated),
            decode_stage(sh, shared, config, blocks),
            score_stage(sh, shared, config, blocks, first=k == 0),
        ]
        if config.n_conversations > 0:
            stages.append(conversations_stage(sh, config, p.evaluated))
        if config.robustness:  # the runner times the stage whenever robustness is configured
            stages.append(robustness_stage(sh, config, settings_for(tm, config.robustness)))
    return plans, stages


def _probe_prompts(model: Bridge, config: StudyConfig) -> tuple[list[Any], list[Any]]:
    """The probe's two batches of the study's test prompts in their misaligning contexts: ``batch_size`` rows
    of the threat model with the longest shared context (prefilled once per batch, as the study decodes
    them) and an eighth as many of every threat model in turn (no shared context)."""
    sets = []
    for name in config.threat_models:
        tm = threats.get(name)
        sets.append(tm.load().test.stratified(None).chat_prompts(context=tm.misaligning_context))
    longest = max(sets, key=lambda group: _common_prefix(model, group[:2]) if len(group) > 1 else 0)
    mixed = [p for group in zip(*sets, strict=False) for p in group] or longest
    rows = max(config.batch_size, 2)
    big = [longest[i % len(longest)] for i in range(rows)]
    return big, [mixed[i % len(mixed)] for i in range(max(1, rows // 8))]


@dataclass(frozen=True, kw_only=True)
class _Timed:
    step: float  # seconds per decoding step of the batch
    prefill: float  # seconds of the batch's prefill (a teacher-forced pass over its prompts)


def _timed_batch(model: Bridge, prompts: Sequence[Any], steps: int) -> _Timed:
    """One batch of ``prompts`` decoded 2 and ``2 + steps`` tokens: a step's seconds (the extra time over the
    steps actually taken: rows may stop at end of turn; the prefill cancels) and the prefill's (the short
    run less its steps)."""
    from lensteer.steering.generation import generate

    def run(n: int) -> tuple[float, int]:
        start = time.perf_counter()
        gen = generate(model, prompts, max_new_tokens=n, batch_size=len(prompts))
        return time.perf_counter() - start, max(len(t) for t in gen.tokens)

    short, n_short = run(2)
    long, n_long = run(2 + steps)
    step = max(long - short, 1e-6) / max(n_long - n_short, 1)
    return _Timed(step=step, prefill=max(short - n_short * step, short / 10))


def probe_rates(model: Bridge, config: StudyConfig, *, steps: int = 6) -> Rates:
    """This machine's speed on ``model`` at the study's shapes (seconds to a minute on the embedded model):
    a batch of ``batch_size`` of the study's test prompts, its few-shot context shared as the study shares it,
    and one of an eighth as many decode ``steps`` more tokens than a 2-token run: a step's fixed cost and
    each row's cost, from the two. The small batch's prefill (every threat model's prompts, their contexts
    in full) gives the teacher-forced rate. After a warm-up: the first call through the bridge pays for
    setting itself up."""
    from lensteer.steering.generation import generate

    big, small = _probe_prompts(model, config)
    generate(model, small[:2], max_new_tokens=2, batch_size=2)  # warm-up
    at_big, at_small = _timed_batch(model, big, steps), _timed_batch(model, small, steps)
    row = max((at_big.step - at_small.step) / max(len(big) - len(small), 1), at_big.step / len(big) / 10)
    shared = _common_prefix(model, small) if len(small) > 1 else 0  # prefilled once
    n_tokens = sum(tokenize_prompt(model, p).n_tokens for p in small) - shared * (len(small) - 1)
    return Rates(
        step_seconds=max(at_big.step - len(big) * row, 0.0),
        row_seconds=row,
        forward_tokens_per_s=n_tokens / at_small.prefill,
        batch=len(big),
        context=round(sum(tokenize_prompt(model, p).n_tokens for p in big) / len(big)),
    )


def format_plan(plans: Sequence[ThreatModelPlan], stages: Sequence[StagePlan], rates: Rates) -> str:
    """The plan as text: conditions and prompts per threat model, then each stage's work and estimate."""
    lines = [
        f"rates measured now at the study's shapes ({rates.context}-token prompts): decoding "
        f"{rates.decode_tokens_per_s(rates.batch):.0f} tokens/s at {rates.batch} rows a batch, "
        f"{rates.decode_tokens_per_s(max(rates.batch // 8, 1)):.0f} at {max(rates.batch // 8, 1)} "
        f"({1000 * rates.step_seconds:.0f} ms a step + {1000 * rates.row_seconds:.1f} ms a row); "
        f"teacher-forced {rates.forward_tokens_per_s:.0f} tokens/s",
        "",
    ]
    for p in plans:
        lines.append(
            f"{p.threat_model}: {p.conditions} conditions ({p.steered} steered, {p.calibrated} calibrated); "
            f"{p.n_eval} test, {p.n_harmless} harmless, {p.n_borderline} borderline prompts each"
        )
        lines.append(f"  {', '.join(p.labels)}")
    lines += [
        "",
        "| where | stage | work | decoded tokens (steps) | teacher-forced tokens | estimate |",
        "|---|---|---|---|---|---|",
    ]
    total = 0.0
    for s in stages:
        secs = s.seconds(rates)
        total += secs
        lines.append(
            f"| {s.where} | {s.stage} | {s.work} | {s.decode_tokens} ({s.decode_steps}) | {s.forward_tokens} "
            f"| {_duration(secs)} |"
        )
    lines.append(f"\nestimated total: {_duration(total)} (coarse: minutes or hours, not seconds)")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
