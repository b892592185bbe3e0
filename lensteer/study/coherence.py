"""Coherence-aware scaling: the study's one calibration, priced where change is unwanted.

A steering's scale is the largest at which

1. its KL (nats per token, vs the unsteered model) on **held-apart harmless and borderline prompts** stays
   within the budget, measured with its gate as deployed (a gate that stays closed on a prompt spares it),
   along the unsteered continuations of those prompts; and
2. its answers to **held-apart target prompts** (the threat model's, in its misaligning context) stay
   fluent: their perplexity under the unsteered model at most ``max_perplexity_ratio`` times that of
   the unsteered answers, and their rep-4 (share of repeated word 4-grams) at most ``max_rep4`` (never
   below the unsteered answers' own).

No KL is read on the target prompts: their answers are the ones the steering is meant to change, so a
KL there grows with how well a direction works and would shrink the scale of the best directions. The
fluency bounds watch those answers for what a budget on harmless text cannot see: text a large scale
breaks (word salad, loops). They also cap a selective or gated method that barely fires on harmless
text, whose KL there stays under any budget at every scale. Every prompt here comes from the held-apart
rows of the training splits (:attr:`~lensteer.core.datasets.ContrastSet.held_apart`): none fits a
direction, probe or gate, and none is a prompt a number is reported on.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

from lensteer import threats
from lensteer.core.bridge import Bridge
from lensteer.core.chat import ChatPrompt
from lensteer.core.datasets import load_dataset
from lensteer.evaluate.metrics import response_perplexity
from lensteer.evaluate.repetition import rep_n
from lensteer.steering.calibration import KLProbe, calibrate, kl_probe, steering_kl
from lensteer.steering.generation import generate
from lensteer.steering.spec import Steering
from lensteer.study.config import StudyConfig

GROW_STEPS = 6  # doublings tried above a KL-calibrated scale whose budget is out of reach (x64)
SHRINK_STEPS = 8  # halvings tried below a scale whose answers break the fluency bounds (/256)
KL_TOLERANCE = 0.05  # a raised scale may exceed the KL budget by calibrate's own tolerance
BISECT_STEPS = 3  # geometric bisections between the last fluent and the first broken scale (within ~9%)


def calibration_prompts(config: StudyConfig) -> list[str]:
    """The KL calibration prompts: ``n_kl`` held-apart harmless twins of the refusal set and ``n_kl``
    held-apart borderline prompts (harmless requests that only sound dangerous), each category in turn."""
    harmless = load_dataset(threats.HARMLESS_DATASET).held_apart.stratified(config.n_kl).paired_prompts
    borderline = load_dataset("borderline").held_apart.stratified(config.n_kl).prompts
    return [*harmless, *borderline]


def calibration_set(model: Bridge, config: StudyConfig) -> tuple[list[str], KLProbe]:
    """:func:`calibration_prompts` and their KL probe (unsteered greedy continuations of ``kl_tokens``)."""
    prompts = calibration_prompts(config)
    return prompts, kl_probe(
        model, prompts, continuation_tokens=config.kl_tokens, batch_size=config.batch_size
    )


@dataclass(frozen=True, kw_only=True)
class Fluency:
    """Fluency of steered answers: perplexity under the unsteered model relative to the unsteered answers'
    (``perplexity_ratio``) and mean rep-4 (``rep4``)."""

    perplexity_ratio: float
    rep4: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class FluencyBound:
    """The ceilings of :class:`Fluency` (``max_rep4`` already raised to the unsteered answers' rep-4)."""

    max_perplexity_ratio: float
    max_rep4: float

    def admits(self, fluency: Fluency) -> bool:
        return fluency.perplexity_ratio <= self.max_perplexity_ratio and fluency.rep4 <= self.max_rep4


def mean_rep4(texts: Sequence[str]) -> float:
    """Mean rep-4 of the texts (0 for none)."""
    return sum(rep_n(t, 4) for t in texts) / len(texts) if texts else 0.0


def _perplexity(model: Bridge, prompts: Sequence[ChatPrompt], texts: Sequence[str], batch_size: int) -> float:
    """Corpus perplexity of the texts under ``model`` (an empty answer stands as "." so it still counts)."""
    answers = [t if t.strip() else "." for t in texts]
    return response_perplexity(model, list(prompts), answers, batch_size=batch_size).corpus


@dataclass(frozen=True, kw_only=True, eq=False)
class FluencyProbe:
    """Held-apart target prompts with the unsteered answers' perplexity and rep-4: what
    :meth:`measure` compares a steering's answers to."""

    prompts: tuple[ChatPrompt, ...]
    baseline_perplexity: float
    baseline_rep4: float
    max_new_tokens: int
    batch_size: int

    def measure(self, model: Bridge, steering: Steering) -> Fluency:
        """The steering's greedy answers to the probe's prompts, scored by the unsteered model."""
        gens = generate(
            model,
            list(self.prompts),
            steering=steering,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
        )
        ppl = _perplexity(model, self.prompts, gens.texts, self.batch_size)
        return Fluency(perplexity_ratio=ppl / self.baseline_perplexity, rep4=mean_rep4(gens.texts))

    def bound(self, config: StudyConfig) -> FluencyBound:
        return FluencyBound(
            max_perplexity_ratio=config.max_perplexity_ratio,
            max_rep4=max(config.max_rep4, self.baseline_rep4),
        )


def fluency_probe(model: Bridge, threat_model: str, config: StudyConfig) -> FluencyProbe | None:
    """``n_fluency`` held-apart target prompts of the threat model in its misaligning context, with the
    unsteered answers' perplexity and rep-4 (``None`` when ``n_fluency`` is 0: no fluency bound)."""
    if config.n_fluency == 0:
        return None
    tm = threats.get(threat_model)
    prompts = tm.load().held_apart.stratified(config.n_fluency).chat_prompts(context=tm.misaligning_context)
    gens = generate(model, prompts, max_new_tokens=config.max_new_tokens, batch_size=config.batch_size)
    return FluencyProbe(
        prompts=tuple(prompts),
        baseline_perplexity=_perplexity(model, prompts, gens.texts, config.batch_size),
        baseline_rep4=mean_rep4(gens.texts),
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
    )


@dataclass(frozen=True, kw_only=True)
class ScaleSearch:
    """The outcome of :func:`largest_admitted_scale`: the scale, whether any tried scale was admitted,
    and every (scale, admitted) tried, in order."""

    scale: float
    admitted: bool
    tried: tuple[tuple[float, bool], ...]


def largest_admitted_scale(start: float, admits: Callable[[float], bool], *, grow: bool) -> ScaleSearch:
    """The largest scale ``admits`` accepts, searched geometrically from ``start`` (> 0).

    If ``start`` is admitted: it is the answer, unless ``grow``, in which case the scale doubles (at
    most :data:`GROW_STEPS` times) until a doubling is refused. If not: it halves (at most
    :data:`SHRINK_STEPS` times) until one is admitted. Between the last admitted and the first refused
    scale, :data:`BISECT_STEPS` geometric bisections. Nothing admitted: the smallest scale tried, with
    ``admitted=False``. Assumes (as for fluency) that what a scale breaks, a larger one breaks too.
    """
    tried: list[tuple[float, bool]] = []

    def ok(scale: float) -> bool:
        verdict = admits(scale)
        tried.append((scale, verdict))
        return verdict

    lo: float | None
    hi: float | None
    if ok(start):
        lo, hi = start, None
        for _ in range(GROW_STEPS if grow else 0):
            if not ok(2.0 * lo):
                hi = 2.0 * lo
                break
            lo *= 2.0
        if hi is None:
            return ScaleSearch(scale=lo, admitted=True, tried=tuple(tried))
    else:
        lo, hi = None, start
        for _ in range(SHRINK_STEPS):
            if ok(hi / 2.0):
                lo = hi / 2.0
                break
            hi /= 2.0
        if lo is None:
            return ScaleSearch(scale=hi, admitted=False, tried=tuple(tried))
    for _ in range(BISECT_STEPS):
        mid = math.sqrt(lo * hi)
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return ScaleSearch(scale=lo, admitted=True, tried=tuple(tried))


@dataclass(frozen=True, kw_only=True, eq=False)
class Coherence:
    """What prices a steering's scale in the study: the KL probe of held-apart harmless and borderline
    prompts, the fluency probe of held-apart target prompts (``None``: no fluency bound) and its bound."""

    kl: KLProbe
    fluency: FluencyProbe | None
    bound: FluencyBound | None


def coherence_for(model: Bridge, threat_model: str, config: StudyConfig, kl: KLProbe) -> Coherence:
    """The study's :class:`Coherence` for one threat model (``kl``: the shared calibration probe)."""
    probe = fluency_probe(model, threat_model, config)
    return Coherence(kl=kl, fluency=probe, bound=None if probe is None else probe.bound(config))


def calibrate_coherent(model: Bridge, steering: Steering, coherence: Coherence, budget: float) -> Steering:
    """``steering`` at the largest scale within the KL budget (held-apart harmless and borderline prompts,
    gate as deployed) and the fluency bounds (held-apart target prompts); ``info["calibration"]`` says
    which bound set it (``binding``: ``"kl"`` or ``"fluency"``), the KL and the fluency there.

    The KL calibration (:func:`~lensteer.calibrate`) comes first. If its scale breaks the fluency bounds
    the scale is lowered until it does not; if the budget is out of reach (the gate or a selective mode
    keeps the edit off these prompts), the scale is raised while the answers stay fluent and the KL within
    budget (:func:`largest_admitted_scale`)."""
    cal = calibrate(model, steering, coherence.kl, budget)
    info = dict(cal.steering.info["calibration"])
    if coherence.fluency is None or coherence.bound is None:
        return cal.steering
    fluency_probe_, bound = coherence.fluency, coherence.bound
    measured: dict[float, Fluency] = {}
    kls: dict[float, float] = {cal.scale: cal.kl}
    refused_by: dict[float, str] = {}

    def kl_at(scale: float) -> float:
        if scale not in kls:
            kls[scale] = steering_kl(model, steering.with_scale(scale), coherence.kl)
        return kls[scale]

    def admits(scale: float) -> bool:
        measured[scale] = fluency_probe_.measure(model, steering.with_scale(scale))
        if not bound.admits(measured[scale]):
            refused_by[scale] = "fluency"
        elif kl_at(scale) > budget * (1 + KL_TOLERANCE):
            refused_by[scale] = "kl"
        return scale not in refused_by

    grow = not cal.reached and cal.kl < budget  # the budget is out of reach: only fluency can cap the scale
    search = largest_admitted_scale(cal.scale, admits, grow=grow)
    scale = search.scale
    above = [s for s in refused_by if s > scale]
    binding = refused_by[min(above)] if above else ("search_limit" if grow else "kl")
    info |= {
        "kl_scale": cal.scale,
        "kl": kl_at(scale),
        "reached": info["reached"] and scale == cal.scale,
        "binding": binding,
        "fluency": measured[scale].to_dict(),
        "fluency_bound": asdict(bound),
        "fluency_admitted": search.admitted,
        "fluency_evaluations": len(search.tried),
    }
    return replace(cal.steering.with_scale(scale), info={**cal.steering.info, "calibration": info})


def build_steering(
    model: Bridge,
    threat_model: str,
    method: str,
    kl_budget: float,
    config: StudyConfig,
    *,
    progress: bool = False,
) -> Steering:
    """Locate, build and calibrate one steering as the study does (what ``lensteer steer`` shows side by
    side): on the held-apart calibration set, gate as deployed, within the fluency bounds."""
    from lensteer.study.layers import locate_threat_model  # layers imports the evaluation, which imports this

    del progress  # the study's calibration shows no bar
    prompts, probe = calibration_set(model, config)
    one = replace(config, methods=(method,), kl_budgets=(kl_budget,))
    loc = locate_threat_model(model, threat_model, one, prompts, probe)
    return calibrate_coherent(
        model, loc.steerings[method], coherence_for(model, threat_model, one, probe), kl_budget
    )
