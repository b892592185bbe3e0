"""Choosing the steering site by what steering there does to the behaviour, with power and a margin.

Each :class:`~lensteer.locate.candidates.Candidate` (a direction at a layer and read position) becomes a
steering, is calibrated to the KL budget by a calibration the caller supplies, and is scored on validation
prompts by the shift it causes in the first-token decision (:func:`~lensteer.evaluate.decision.opening_log_odds`:
aligned-opening over misaligned-opening tokens, per prompt, with a bootstrap interval over prompts) and,
optionally, by the trait rate of short greedy generations. Arditi et al.'s (2024) filters apply: ablating the
direction costs at most ``max_ablation_kl`` nats on harmless prompts, the layer is not in the last
``skip_last_fraction`` of the depth, and adding the direction induces the behaviour (a positive shift).

The choice (:func:`choose`) is by the **lower** bootstrap bound of the shift, not its point estimate: a
candidate must be reliably good, not lucky on a few prompts. Candidates whose interval overlaps the leader's
and whose lower bound is within ``tie_margin`` of it are near-ties; among them a candidate whose layer
patching found (``from_patching``) goes first, so noise never decides between them. The winner must then beat
a random direction calibrated to the same KL at the same layer, on the same prompts (a paired permutation test);
if it does not, the next candidate in the order is tried. Every candidate's numbers are kept.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from lensteer.core.bridge import Bridge
from lensteer.core.chat import ChatPrompt, TokenizedPrompt
from lensteer.core.stats import PairedDifference, bootstrap_mean_ci, paired_permutation_test
from lensteer.errors import ConfigError, DataError
from lensteer.evaluate.decision import TokenIds, opening_log_odds
from lensteer.locate.candidates import Candidate, random_like
from lensteer.locate.direction_patching import ablation_kl as measure_ablation_kl
from lensteer.steering.calibration import KLProbe, steering_kl
from lensteer.steering.generation import generate
from lensteer.steering.spec import Steering

Calibrate = Callable[[Steering], Steering]
TraitScorer = Callable[[Sequence[ChatPrompt], Sequence[str]], Sequence[bool]]


@dataclass(frozen=True, kw_only=True)
class TraitCheck:
    """Short greedy generations on validation prompts, scored by a caller's trait scorer (``True`` = aligned)."""

    prompts: tuple[ChatPrompt, ...]
    scorer: TraitScorer
    max_new_tokens: int = 24

    def rate(self, model: Bridge, steering: Steering | None, batch_size: int = 16) -> float:
        texts = generate(
            model,
            list(self.prompts),
            steering=steering,
            max_new_tokens=self.max_new_tokens,
            batch_size=batch_size,
        ).texts
        flags = list(self.scorer(self.prompts, texts))
        if len(flags) != len(self.prompts):
            raise DataError(
                f"the trait scorer returned {len(flags)} verdicts for {len(self.prompts)} answers"
            )
        return sum(map(bool, flags)) / len(flags)


@dataclass(frozen=True, kw_only=True)
class CandidateScore:
    """One candidate's numbers (the ``report.json`` keys) and the filters it failed (none: it may be chosen).

    ``decision_shift`` is the mean change of the opening log-odds under the calibrated steering (nats; > 0:
    towards aligned), ``shifts`` the per-prompt changes it averages, ``kl_heldout`` its KL on held-out harmless
    prompts, ``ablation_kl`` what projecting the direction out costs there. ``None``: not measured (a
    candidate that failed a cheap filter is not calibrated unless asked).
    """

    source: str
    layer: int
    position: str
    from_patching: bool
    decision_shift: float | None = None
    decision_shift_ci: tuple[float, float] | None = None
    val_trait: float | None = None
    kl_heldout: float | None = None
    ablation_kl: float | None = None
    scale: float | None = None
    shifts: tuple[float, ...] = ()
    why_not: tuple[str, ...] = ()

    @property
    def passes(self) -> bool:
        return not self.why_not and self.decision_shift_ci is not None

    @property
    def label(self) -> str:
        return f"{self.source}@L{self.layer}:{self.position}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "layer": self.layer,
            "position": self.position,
            "decision_shift": self.decision_shift,
            "decision_shift_ci": list(self.decision_shift_ci) if self.decision_shift_ci is not None else None,
            "val_trait": self.val_trait,
            "kl_heldout": self.kl_heldout,
            "ablation_kl": self.ablation_kl,
            "from_patching": self.from_patching,
            "scale": self.scale,
            "passes": self.passes,
            "why_not": "; ".join(self.why_not),
        }


@dataclass(frozen=True, kw_only=True, eq=False)
class Selection:
    """Every candidate's numbers, the chosen one (or ``None``) and why, and its test against random.

    ``steering`` is the chosen candidate's calibrated steering (not serialised).
    """

    candidates: tuple[CandidateScore, ...]
    chosen: CandidateScore | None
    why: str
    vs_random: PairedDifference | None = None
    steering: Steering | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        chosen = (
            None
            if self.chosen is None
            else {
                **self.chosen.to_dict(),
                "why": self.why,
                "vs_random": self.vs_random.to_dict() if self.vs_random is not None else None,
            }
        )
        return {
            "candidates": [c.to_dict() for c in self.candidates],
            "chosen": chosen,
            "why": self.why,
            "settings": dict(self.settings),
        }


def arditi_filters(
    layer: int,
    n_layers: int,
    ablation_kl: float | None,
    shift: float | None,
    *,
    skip_last_fraction: float = 0.2,
    max_ablation_kl: float = 0.1,
) -> tuple[str, ...]:
    """The filters a candidate fails (Arditi et al. 2024), in words; empty: it passes.

    Unmeasured values (``None``) fail nothing.
    """
    cutoff = round(n_layers * (1 - skip_last_fraction))
    fails = []
    if layer >= cutoff:
        fails.append(
            f"layer {layer} is in the last {skip_last_fraction:.0%} of the {n_layers} layers (>= {cutoff})"
        )
    if ablation_kl is not None and ablation_kl > max_ablation_kl:
        fails.append(f"ablation KL {ablation_kl:.3f} > {max_ablation_kl} nats on harmless prompts")
    if shift is not None and not shift > 0:
        fails.append(f"adding it does not induce the behaviour (decision shift {shift:+.3f} <= 0)")
    return tuple(fails)


def choose(
    scores: Sequence[CandidateScore],
    beats_random: Callable[[CandidateScore], PairedDifference],
    *,
    tie_margin: float = 0.1,
    alpha: float = 0.05,
    max_random_checks: int = 3,
) -> tuple[CandidateScore | None, str, PairedDifference | None]:
    """The winning candidate by the lower bootstrap bound of its decision shift, and why (pure: no model).

    Near-ties of the leader (interval overlapping it and lower bound within ``tie_margin``) are ordered
    patching-evidence first, then by lower bound, then earlier layer; the rest follow by lower bound. Down
    that order, the first candidate whose shift beats a same-KL random direction (``beats_random``, one-sided
    ``p < alpha``) wins, after at most ``max_random_checks`` tries.

    Returns:
        ``(chosen or None, why, its test against random or None)``.
    """
    if not math.isfinite(tie_margin) or tie_margin < 0:
        raise ConfigError(f"tie_margin must be a finite number >= 0, got {tie_margin}")
    passing = [s for s in scores if s.passes]
    if not passing:
        failed = "; ".join(f"{s.label}: {', '.join(s.why_not) or 'not measured'}" for s in scores)
        return None, f"no candidate passes the filters ({failed})", None

    def lo(s: CandidateScore) -> float:
        assert s.decision_shift_ci is not None
        return s.decision_shift_ci[0]

    def hi(s: CandidateScore) -> float:
        assert s.decision_shift_ci is not None
        return s.decision_shift_ci[1]

    leader = max(passing, key=lambda s: (lo(s), -s.layer))
    near = [s for s in passing if lo(s) >= lo(leader) - tie_margin and hi(s) >= lo(leader)]
    near.sort(key=lambda s: (not s.from_patching, -lo(s), s.layer))
    in_near = {id(s) for s in near}
    rest = sorted((s for s in passing if id(s) not in in_near), key=lambda s: (-lo(s), s.layer))
    tried: list[str] = []
    for s in (near + rest)[:max_random_checks]:
        test = beats_random(s)
        if test.p_value < alpha and test.mean_difference > 0:
            why = [
                f"the largest lower bound of the decision shift among {len(passing)} candidates that pass the "
                f"filters: {s.decision_shift:+.3f} nats [{lo(s):+.3f}, {hi(s):+.3f}]"
                if s is leader
                else f"decision shift {s.decision_shift:+.3f} nats [{lo(s):+.3f}, {hi(s):+.3f}]"
            ]
            if len(near) > 1 and id(s) in in_near:
                why.append(
                    f"{len(near)} near-ties (lower bounds within {tie_margin:g} of the best, intervals "
                    "overlapping), ordered by patching evidence first"
                    + ("; this one's layer came from patching" if s.from_patching else "")
                )
            if tried:
                why.append("earlier in the order, " + "; ".join(tried))
            why.append(
                f"beats a random direction at the same layer and KL by {test.mean_difference:+.3f} nats "
                f"(paired permutation test, one-sided p = {test.p_value:.2g} < {alpha:g})"
            )
            return s, "; ".join(why), test
        tried.append(
            f"{s.label} did not beat a same-KL random direction (difference {test.mean_difference:+.3f}, "
            f"p = {test.p_value:.2g})"
        )
    return None, "no candidate beats a random direction at the same KL: " + "; ".join(tried), None


def _shift_ci(shifts: torch.Tensor, n_boot: int, seed: int) -> tuple[float, float]:
    return bootstrap_mean_ci(shifts, n_boot=n_boot, seed=seed) if len(shifts) > 1 else (float(shifts[0]),) * 2


def _index(scores: Sequence[CandidateScore], score: CandidateScore) -> int:
    return next(i for i, s in enumerate(scores) if s is score)


def default_steering(candidate: Candidate) -> Steering:
    """SwFC along the candidate's direction at its layer and site (scale 1, set by the calibration)."""
    return Steering.from_direction(
        candidate.direction,
        mode="swfc",
        scale=1.0,
        info={"candidate": {"source": candidate.source, "position": candidate.position}},
    )


@dataclass(frozen=True, kw_only=True)
class DecisionProbe:
    """Validation prompts (never test) the decision is read on, e.g. harmful requests in the misaligning
    setting, or tokenized decision stems (:func:`~lensteer.evaluate.decision.first_difference`), with the
    aligned and misaligned opening token ids (see :func:`~lensteer.evaluate.opening_log_odds`); the issue
    asks for >= 48 prompts."""

    prompts: Sequence["str | ChatPrompt | TokenizedPrompt"]
    aligned_ids: TokenIds
    misaligned_ids: TokenIds


@dataclass(frozen=True, kw_only=True)
class HarmlessChecks:
    """What a candidate costs where change is unwanted: ``prompts`` for the ablation-KL filter and a
    held-out harmless KL probe for ``kl_heldout`` (``None``: not measured)."""

    prompts: Sequence["str | ChatPrompt"] | None = None
    heldout: KLProbe | None = None


@dataclass(frozen=True, kw_only=True)
class SelectionRules:
    """The filters and the choice's settings (Arditi et al.'s filters, :func:`choose`'s margin and test).

    ``score_filtered``: also calibrate and score candidates that fail the layer or ablation filter.
    """

    skip_last_fraction: float = 0.2
    max_ablation_kl: float = 0.1
    tie_margin: float = 0.1
    alpha: float = 0.05
    max_random_checks: int = 3
    score_filtered: bool = False
    n_boot: int = 1000
    seed: int = 0
    batch_size: int = 16
    progress: bool = False

    def filters(
        self, layer: int, n_layers: int, ablation_kl: float | None, shift: float | None
    ) -> tuple[str, ...]:
        return arditi_filters(
            layer,
            n_layers,
            ablation_kl,
            shift,
            skip_last_fraction=self.skip_last_fraction,
            max_ablation_kl=self.max_ablation_kl,
        )


def select_candidate(
    model: Bridge,
    candidates: Sequence[Candidate],
    decision: DecisionProbe,
    *,
    calibrate: Calibrate,
    steering_for: Callable[[Candidate], Steering] = default_steering,
    harmless: HarmlessChecks | None = None,
    trait: TraitCheck | None = None,
    rules: SelectionRules | None = None,
) -> Selection:
    """Score every candidate on validation prompts and :func:`choose` one.

    Args:
        candidates: From :func:`~lensteer.locate.candidates.build_candidates`.
        decision: The validation prompts and opening tokens the decision shift is read on.
        calibrate: Maps a steering to the same steering at the scale that costs the KL budget (the
            calibration set and budget are the caller's).
        steering_for: Builds a candidate's (uncalibrated) steering; the random control is built the same way.
        harmless: The ablation-KL filter's prompts and the held-out KL probe (``None``: neither measured).
        trait: Optional generation check for ``val_trait``.
        rules: Filters and choice settings (defaults: :class:`SelectionRules`).
    """
    rules = rules or SelectionRules()
    harmless = harmless or HarmlessChecks()
    if not candidates:
        raise ConfigError("select_candidate needs at least one candidate")
    prompts = decision.prompts
    if isinstance(prompts, str) or len(prompts) == 0:
        raise DataError("select_candidate needs a non-empty list of validation prompts")
    n_layers, batch_size = int(model.cfg.n_layers), rules.batch_size
    base = opening_log_odds(
        model, prompts, decision.aligned_ids, decision.misaligned_ids, batch_size=batch_size
    )
    unsteered_trait = trait.rate(model, None, batch_size) if trait is not None else None
    scores: list[CandidateScore] = []
    steerings: dict[int, Steering] = {}

    def shifts_of(steering: Steering) -> torch.Tensor:
        odds = opening_log_odds(
            model,
            prompts,
            decision.aligned_ids,
            decision.misaligned_ids,
            steering=steering,
            batch_size=batch_size,
        )
        return odds - base

    for k, cand in enumerate(
        tqdm(candidates, desc="candidates", disable=not rules.progress, unit="candidate")
    ):
        abl = (
            measure_ablation_kl(model, harmless.prompts, cand.direction.unit, batch_size=batch_size)
            if harmless.prompts is not None
            else None
        )
        score = CandidateScore(
            source=cand.source,
            layer=cand.layer,
            position=cand.position,
            from_patching=cand.from_patching,
            ablation_kl=abl,
        )
        cheap = rules.filters(cand.layer, n_layers, abl, None)
        if cheap and not rules.score_filtered:
            scores.append(replace(score, why_not=cheap))
            continue
        cal = calibrate(steering_for(cand))
        shifts = shifts_of(cal)
        mean = float(shifts.mean())
        steerings[k] = cal
        scores.append(
            replace(
                score,
                decision_shift=mean,
                decision_shift_ci=_shift_ci(shifts, rules.n_boot, rules.seed),
                shifts=tuple(shifts.tolist()),
                scale=cal.scale,
                kl_heldout=steering_kl(model, cal, harmless.heldout)
                if harmless.heldout is not None
                else None,
                val_trait=trait.rate(model, cal, batch_size) if trait is not None else None,
                why_not=rules.filters(cand.layer, n_layers, abl, mean),
            )
        )

    controls: dict[
        tuple[int, str], torch.Tensor
    ] = {}  # the random direction's shifts, once per layer and site

    def beats_random(score: CandidateScore) -> PairedDifference:
        cand = candidates[_index(scores, score)]
        key = (cand.layer, cand.direction.site)
        if key not in controls:
            controls[key] = shifts_of(calibrate(steering_for(random_like(cand, rules.seed))))
        return paired_permutation_test(
            torch.tensor(score.shifts),
            controls[key],
            alternative="greater",
            n_boot=rules.n_boot,
            seed=rules.seed,
        )

    chosen, why, test = choose(
        scores,
        beats_random,
        tie_margin=rules.tie_margin,
        alpha=rules.alpha,
        max_random_checks=rules.max_random_checks,
    )
    settings = {
        "n_prompts": len(prompts),
        "n_candidates": len(candidates),
        "n_layers": n_layers,
        "skip_last_fraction": rules.skip_last_fraction,
        "max_ablation_kl": rules.max_ablation_kl,
        "tie_margin": rules.tie_margin,
        "alpha": rules.alpha,
        "unsteered_decision_log_odds": float(base.mean()),
        "unsteered_trait": unsteered_trait,
    }
    return Selection(
        candidates=tuple(scores),
        chosen=chosen,
        why=why,
        vs_random=test,
        steering=steerings[_index(scores, chosen)] if chosen is not None else None,
        settings=settings,
    )
