"""What a study will run and about how long each stage will take, before it runs (``lensteer run --plan``).

The plan counts, per threat model, the conditions the runner will evaluate (the same rule as
:mod:`lensteer.study.runner`: baselines, each method per KL budget and layer, twins derived not run, the
paper regime, random controls), the prompts of every set, and the work of each stage in two units:
tokens **decoded** (generated, each a forward step of the whole batch) and tokens run **teacher-forced**
(prompts prefilled, KL, perplexity, capability passes). A short probe on the model measures this
machine's rate of each (:func:`probe_rates`, about 10 s), and each stage's estimate is its work over
those rates. The stages are the ones ``timing.json`` records (:data:`~lensteer.study.runner.STAGES`).

:func:`plan_conditions` lists the conditions themselves, a pure function of the config, the chosen layer and
the model's depth, in the order the runner builds, calibrates and evaluates them.

The estimate is coarse (calibration and layer choice take a data-dependent number of passes, answers
stop early at end of turn): it says whether a run takes minutes or hours, not seconds.
"""

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lensteer import threats
from lensteer.core.chat import tokenize_prompt
from lensteer.core.datasets import load_dataset
from lensteer.evaluate.capability import load_mc_items, load_paragraphs
from lensteer.study.config import PAPER_REGIME, SELECTIVE_METHODS, StudyConfig
from lensteer.study.evaluation import _common_prefix
from lensteer.study.robustness import settings_for

CALIBRATION_EVALUATIONS = 10  # KL evaluations per calibrated scale (bracket, then bisect to 5%): typical
# At matched KL these are the same edit as their original: StMP-push at scale 2a moves a token by
# 2a (tau - s), exactly as StMP (mirror) at scale a does. They differ only uncalibrated (the paper regime),
# so a twin is derived from its original, never run.
TWINS = {"StMP-push": "StMP"}
MC_OPTION_TOKENS = 8  # an option's tokens, roughly
PARAGRAPH_TOKENS = 150  # a bundled paragraph's tokens, roughly


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
class Rates:
    """This machine's throughput on the model, measured by :func:`probe_rates`."""

    decode_tokens_per_s: float  # generated tokens per second (rows x steps), at the study's batch
    forward_tokens_per_s: float  # teacher-forced tokens per second


@dataclass(frozen=True, kw_only=True)
class StagePlan:
    """One stage of one threat model (``shared`` for the sets every threat model uses)."""

    where: str
    stage: str
    work: str  # what runs, in words
    decode_tokens: int
    forward_tokens: int

    def seconds(self, rates: Rates) -> float:
        return (
            self.decode_tokens / rates.decode_tokens_per_s + self.forward_tokens / rates.forward_tokens_per_s
        )


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


def _mean_tokens(model: Any, prompts: Sequence[Any]) -> float:
    return sum(tokenize_prompt(model, p).n_tokens for p in prompts) / max(len(prompts), 1)


def threat_model_plan(threat_model: str, config: StudyConfig) -> ThreatModelPlan:
    """The rows the runner will write for ``threat_model`` and the sizes of its prompt sets."""
    methods = [m for m in config.methods if TWINS.get(m) not in config.methods]  # twins are derived
    layers = 1 + len(config.sweep_layers)
    calibrated = len(methods) * len(config.kl_budgets) * layers + len(config.random_seeds)
    twins = (len(config.methods) - len(methods)) * len(config.kl_budgets) * layers
    regimes = sum(m in SELECTIVE_METHODS for m in config.methods) if config.regimes else 0
    baselines = 1 + int(config.prompting)
    refusal = load_dataset(threats.HARMLESS_DATASET)
    n_borderline = (
        0
        if config.n_borderline == 0
        else len(load_dataset("borderline").test.stratified(config.n_borderline))
    )
    return ThreatModelPlan(
        threat_model=threat_model,
        conditions=baselines + calibrated + twins + regimes,
        evaluated=baselines + calibrated + regimes,
        steered=calibrated + regimes,
        calibrated=calibrated,
        n_eval=len(threats.get(threat_model).load().test.stratified(config.n_eval)),
        n_harmless=len(refusal.test.stratified(config.n_harmless)),
        n_borderline=n_borderline,
    )


def study_plan(
    model: Any, config: StudyConfig, n_candidates: int
) -> tuple[list[ThreatModelPlan], list[StagePlan]]:
    """Every threat model's conditions and every stage's work (tokens decoded and teacher-forced).

    ``n_candidates``: the layers the locate stage probes (1 when ``config.layer`` is set)."""
    refusal = load_dataset(threats.HARMLESS_DATASET)
    calibration = refusal.train.stratified(config.n_kl).paired_prompts
    harmless = refusal.test.stratified(config.n_harmless).paired_prompts
    l_cal, l_harm = _mean_tokens(model, calibration), _mean_tokens(model, harmless)
    new, kl_new = config.max_new_tokens, config.kl_tokens
    stages = [
        StagePlan(
            where="shared",
            stage="sets",
            work=f"{len(calibration)} calibration + {len(harmless)} held-out harmless continuations",
            decode_tokens=(len(calibration) + len(harmless)) * kl_new,
            forward_tokens=round(len(calibration) * (l_cal + kl_new) + len(harmless) * l_harm),
        )
    ]
    plans = []
    n_mc = len(load_mc_items()[: config.n_mc]) if config.n_mc != 0 else 0
    n_par = len(load_paragraphs()[: config.n_paragraphs]) if config.n_paragraphs != 0 else 0
    for tm in config.threat_models:
        p = threat_model_plan(tm, config)
        plans.append(p)
        t = threats.get(tm)
        evals = t.load().test.stratified(config.n_eval).chat_prompts(context=t.misaligning_context)
        # a context every prompt shares (a few-shot history) is computed once per batch, not once per row
        shared = _common_prefix(model, evals) if len(evals) > 1 else 0
        l_eval = _mean_tokens(model, evals) - shared * (1 - 1 / config.batch_size)
        probe_rows = 2 * len(calibration)  # harmless + misaligned training prompts
        probe_tokens = probe_rows * ((l_cal + l_eval) / 2 + kl_new)
        fit = config.n_train * 2  # selective fit: the model's own answers, aligned and misaligned
        answers = p.n_eval + p.n_harmless + p.n_borderline
        distinct = p.evaluated  # capability once per distinct edit and system prompt (twins are not run)
        stages += [
            StagePlan(
                where=tm,
                stage="locate",
                work=f"{n_candidates} candidate layer(s): probe {config.n_train} pairs, calibrate one steering each",
                decode_tokens=fit * new,
                forward_tokens=round(
                    fit * (l_eval + new) + n_candidates * CALIBRATION_EVALUATIONS * probe_tokens
                ),
            ),
            StagePlan(
                where=tm,
                stage="calibrate",
                work=f"{p.calibrated} steerings to {len(config.kl_budgets)} KL budget(s) on {probe_rows} prompts",
                decode_tokens=probe_rows * kl_new,
                forward_tokens=round(p.calibrated * CALIBRATION_EVALUATIONS * probe_tokens),
            ),
            StagePlan(
                where=tm,
                stage="decode",
                work=f"{p.evaluated} conditions x {answers} prompts x {new} tokens",
                decode_tokens=p.evaluated * answers * new,
                forward_tokens=round(
                    p.evaluated * (p.n_eval * l_eval + (p.n_harmless + p.n_borderline) * l_harm)
                ),
            ),
            StagePlan(
                where=tm,
                stage="score",
                work=f"KL (held-out, rollout, calibration), perplexity, {n_mc} MC items, {n_par} paragraphs",
                decode_tokens=0,
                forward_tokens=round(
                    p.steered
                    * (2 * p.n_eval * (l_eval + new) + p.n_harmless * (l_harm + kl_new) + probe_tokens)
                    + p.evaluated * p.n_harmless * (l_harm + new)
                    + distinct * (n_mc * 4 * MC_OPTION_TOKENS + n_mc * l_harm + n_par * PARAGRAPH_TOKENS)
                ),
            ),
        ]
        if config.n_conversations > 0:
            rows = p.evaluated * config.n_conversations
            stages.append(
                StagePlan(
                    where=tm,
                    stage="conversations",
                    work=f"{rows} conversations of {config.n_turns} turns",
                    decode_tokens=rows * config.n_turns * new,
                    forward_tokens=round(rows * config.n_turns * (l_eval + config.n_turns * new / 2)),
                )
            )
        settings = settings_for(tm, config.robustness)
        if settings:
            rows = len(settings) * (1 + len(config.robustness_methods)) * p.n_eval
            stages.append(
                StagePlan(
                    where=tm,
                    stage="robustness",
                    work=f"{len(settings)} setting(s) x {1 + len(config.robustness_methods)} conditions",
                    decode_tokens=rows * new,
                    forward_tokens=round(rows * (l_eval + new)),
                )
            )
    return plans, stages


def probe_rates(model: Any, config: StudyConfig, *, rows: int = 16, steps: int = 8) -> Rates:
    """This machine's decode and teacher-forced rates on ``model`` (about 10 s on the embedded model, 2
    cores): ``rows`` training harmless prompts decoded ``steps`` tokens in one batch, and the same prompts
    chat-formatted run teacher-forced, each after a warm-up (the first call through the bridge pays for
    setting itself up), the faster of two timings."""
    from lensteer.evaluate.capability import text_cross_entropy
    from lensteer.steering.generation import generate

    prompts = load_dataset(threats.HARMLESS_DATASET).train.head(rows).paired_prompts[:rows]
    batch = min(len(prompts), config.batch_size)
    texts = [model.tokenizer.decode(tokenize_prompt(model, p).tokens) for p in prompts]
    n_tokens = sum(tokenize_prompt(model, t, chat=False).n_tokens for t in texts)
    generate(model, prompts[:2], max_new_tokens=2, batch_size=2)  # warm-up
    text_cross_entropy(model, texts[:2], batch_size=2)
    decode, forward = 0.0, 0.0
    for _ in range(2):
        start = time.perf_counter()
        generate(model, prompts, max_new_tokens=steps, batch_size=batch)
        decode = max(decode, len(prompts) * steps / max(time.perf_counter() - start, 1e-6))
        start = time.perf_counter()
        text_cross_entropy(model, texts, batch_size=batch)
        forward = max(forward, n_tokens / max(time.perf_counter() - start, 1e-6))
    return Rates(decode_tokens_per_s=decode, forward_tokens_per_s=forward)


def format_plan(plans: Sequence[ThreatModelPlan], stages: Sequence[StagePlan], rates: Rates) -> str:
    """The plan as text: conditions and prompts per threat model, then each stage's work and estimate."""
    lines = [
        f"rates measured now: {rates.decode_tokens_per_s:.1f} decoded tokens/s, "
        f"{rates.forward_tokens_per_s:.0f} teacher-forced tokens/s",
        "",
    ]
    for p in plans:
        lines.append(
            f"{p.threat_model}: {p.conditions} conditions ({p.steered} steered, {p.calibrated} calibrated); "
            f"{p.n_eval} test, {p.n_harmless} harmless, {p.n_borderline} borderline prompts each"
        )
    lines += [
        "",
        "| where | stage | work | decoded tokens | teacher-forced tokens | estimate |",
        "|---|---|---|---|---|---|",
    ]
    total = 0.0
    for s in stages:
        secs = s.seconds(rates)
        total += secs
        lines.append(
            f"| {s.where} | {s.stage} | {s.work} | {s.decode_tokens} | {s.forward_tokens} | {_duration(secs)} |"
        )
    lines.append(f"\nestimated total: {_duration(total)} (coarse: minutes or hours, not seconds)")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
