"""What a fine-tune did: an organism against its base on the same held-out prompts, per threat model.

For each threat model, on test prompts the organism never saw (stratified over categories), without any
misaligning context (the organism is meant to be misaligned by itself):

* the generated trait (refuses / is compassionate / is honest) of each model's greedy answer, with Wilson
  intervals, and the exact McNemar test of the paired change;
* the teacher-forced preference margin for the written aligned over the misaligned reply (nats per
  token), its paired change with a bootstrap interval;
* for honesty, also the log-odds of the true over the false answer's first token given the shared stem
  (:func:`~lensteer.evaluate.decision_log_odds`): where the decision is made.

For the emergent-misalignment probe (a recipe without a threat model) all three are measured.
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lensteer import threats
from lensteer.core.io import read_json
from lensteer.core.stats import bootstrap_mean_ci, mcnemar_exact, wilson_interval
from lensteer.errors import ConfigError, DataError
from lensteer.evaluate.steerability import decision_log_odds, preference_margin
from lensteer.steering.generation import generate
from lensteer.study.evaluation import trait_flags


@dataclass(frozen=True, kw_only=True)
class Shift:
    """A paired change of a continuous metric from base to organism (mean, 95% bootstrap CI)."""

    base: float
    organism: float
    delta: float
    delta_ci: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "organism": self.organism,
            "delta": self.delta,
            "delta_ci": list(self.delta_ci),
        }


@dataclass(frozen=True, kw_only=True)
class OrganismShift:
    """One threat model: base vs organism on the same ``n`` test prompts.

    Attributes:
        trait_base, trait_organism: Share of answers showing the aligned trait, with Wilson intervals.
        p_value: Exact McNemar test of the paired trait flags.
        margin: The written-reply preference margin. decision: Honesty's answer log-odds (else ``None``).
        categories: Honesty only: verdict category counts (honest, corrected, lie, no_answer, unreadable)
            of the base's and the organism's answers.
        examples: A few (prompt, base answer, organism answer) triples.
        ids: The test prompts' ids; flags_base, flags_organism: each answer's trait flag, in ``ids``' order
            (so that two organisms measured on the same prompts can be compared paired:
            :func:`compare_organisms`).
    """

    threat_model: str
    n: int
    trait_base: float
    trait_base_ci: tuple[float, float]
    trait_organism: float
    trait_organism_ci: tuple[float, float]
    p_value: float
    margin: Shift
    decision: Shift | None
    categories: tuple[dict[str, int], dict[str, int]] | None = None
    examples: tuple[tuple[str, str, str], ...] = ()
    ids: tuple[str, ...] = ()
    flags_base: tuple[bool, ...] = ()
    flags_organism: tuple[bool, ...] = ()

    def summary(self) -> str:
        """One line: the trait before and after with intervals and the test, the margin, honesty's extras."""
        lo, hi = self.margin.delta_ci
        line = (
            f"[{self.threat_model}] n={self.n}: trait {self.trait_base:.1%} [{self.trait_base_ci[0]:.1%}, "
            f"{self.trait_base_ci[1]:.1%}] -> {self.trait_organism:.1%} [{self.trait_organism_ci[0]:.1%}, "
            f"{self.trait_organism_ci[1]:.1%}] (McNemar p={self.p_value:.2g}); margin change {self.margin.delta:+.3f} "
            f"[{lo:+.3f}, {hi:+.3f}] nats/token"
        )
        if self.decision is not None:
            line += f"; answer log-odds {self.decision.base:+.2f} -> {self.decision.organism:+.2f}"
        if self.categories is not None:
            line += f"; verdicts {self.categories[0]} -> {self.categories[1]}"
        return line

    def to_dict(self) -> dict[str, Any]:
        return {
            "threat_model": self.threat_model,
            "n": self.n,
            "trait_base": self.trait_base,
            "trait_base_ci": list(self.trait_base_ci),
            "trait_organism": self.trait_organism,
            "trait_organism_ci": list(self.trait_organism_ci),
            "p_value": self.p_value,
            "margin": self.margin.to_dict(),
            "decision": self.decision.to_dict() if self.decision else None,
            "categories": list(self.categories) if self.categories else None,
            "examples": [list(e) for e in self.examples],
            "ids": list(self.ids),
            "flags_base": list(self.flags_base),
            "flags_organism": list(self.flags_organism),
        }


@dataclass(frozen=True, kw_only=True)
class OrganismComparison:
    """Two organisms of the same base on the same test prompts of one threat model (e.g. a narrow
    bad-advice fine-tune against its good-advice control): trait rates with Wilson intervals and the
    exact McNemar test of the paired flags."""

    threat_model: str
    n: int
    names: tuple[str, str]
    trait: tuple[float, float]
    trait_ci: tuple[tuple[float, float], tuple[float, float]]
    p_value: float

    def summary(self) -> str:
        (lo0, hi0), (lo1, hi1) = self.trait_ci
        return (
            f"[{self.threat_model}] n={self.n}: {self.names[0]} {self.trait[0]:.1%} [{lo0:.1%}, {hi0:.1%}] vs "
            f"{self.names[1]} {self.trait[1]:.1%} [{lo1:.1%}, {hi1:.1%}] (paired McNemar p={self.p_value:.2g})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "threat_model": self.threat_model,
            "n": self.n,
            "names": list(self.names),
            "trait": list(self.trait),
            "trait_ci": [list(c) for c in self.trait_ci],
            "p_value": self.p_value,
        }


def read_measurement(folder: "str | os.PathLike[str]") -> dict[str, Any]:
    """An organism folder's ``measure.json``, checked to carry the per-prompt flags a paired comparison needs.

    Raises:
        ConfigError: No ``measure.json`` there, or one without per-prompt flags (written by an older lensteer).
    """
    path = Path(folder) / "measure.json"
    if not path.is_file():
        raise ConfigError(
            f"--compare-with {str(folder)!r}: no measure.json there (measure that organism first)"
        )
    measured: dict[str, Any] = read_json(path, what="measurement")
    lacking = [s["threat_model"] for s in measured.get("shifts", []) if not s.get("flags_organism")]
    if lacking or not measured.get("shifts"):
        raise ConfigError(
            f"--compare-with {str(folder)!r}: its measure.json has no per-prompt flags for "
            f"{lacking or 'any threat model'} (written by an older lensteer); measure it again"
        )
    return measured


def compare_organisms(
    first: dict[str, Any],
    second: dict[str, Any],
    names: tuple[str, str] = ("first", "second"),
) -> list[OrganismComparison]:
    """Paired comparison of two ``measure.json`` contents (``lensteer organism``'s output) per threat model
    both measured.

    Raises:
        DataError: A measurement without per-prompt flags (written before they were kept), or the two
            measured different prompts, or no threat model in common.
    """
    out = []
    shifts = [{s["threat_model"]: s for s in m["shifts"]} for m in (first, second)]
    common = [tm for tm in shifts[0] if tm in shifts[1]]
    if not common:
        raise DataError(f"no threat model measured in both: {sorted(shifts[0])} vs {sorted(shifts[1])}")
    for tm in common:
        a, b = shifts[0][tm], shifts[1][tm]
        for name, s in zip(names, (a, b), strict=True):
            if not s.get("flags_organism"):
                raise DataError(
                    f"{name}'s {tm} measurement has no per-prompt flags; measure it again "
                    "(lensteer organism ... --measure N) to compare paired"
                )
        if a["ids"] != b["ids"]:
            raise DataError(
                f"{tm}: the two measurements used different test prompts; measure both with the same --measure"
            )
        fa, fb = [bool(x) for x in a["flags_organism"]], [bool(x) for x in b["flags_organism"]]
        k = len(fa)
        out.append(
            OrganismComparison(
                threat_model=tm,
                n=k,
                names=names,
                trait=(sum(fa) / k, sum(fb) / k),
                trait_ci=(wilson_interval(sum(fa), k), wilson_interval(sum(fb), k)),
                p_value=mcnemar_exact(fa, fb).p_value,
            )
        )
    return out


def _shift(base: torch.Tensor, organism: torch.Tensor, seed: int) -> Shift:
    ci = bootstrap_mean_ci(organism - base, n_boot=1000, seed=seed)
    return Shift(
        base=float(base.mean()),
        organism=float(organism.mean()),
        delta=float((organism - base).mean()),
        delta_ci=(float(ci[0]), float(ci[1])),
    )


def measure_organism(
    base: Any,
    organism: Any,
    threat_models: Sequence[str] | None = None,
    *,
    n: int = 48,
    max_new_tokens: int = 48,
    batch_size: int = 32,
    seed: int = 0,
) -> list[OrganismShift]:
    """Base vs organism on ``n`` test prompts of each threat model (default: the bundled ones)."""
    chosen = list(threat_models) if threat_models is not None else list(threats.BUNDLED)
    bad = [t for t in chosen if t not in threats.names()]
    if bad or not chosen:
        raise ConfigError(f"threat models {bad or chosen} not allowed; allowed: {list(threats.names())}")
    out = []
    for tm in chosen:
        threat = threats.get(tm)
        data = threat.load().with_responses().test.stratified(n)
        prompts = data.chat_prompts()
        aligned, misaligned = data.chat_prompts(response="aligned"), data.chat_prompts(response="misaligned")
        flags, margins, decisions, texts = [], [], [], []
        for model in (base, organism):
            answers = generate(model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size).texts
            texts.append(answers)
            flags.append(trait_flags(tm, answers, data, base))  # one reader for both: the base model
            margins.append(preference_margin(model, aligned, misaligned, batch_size=batch_size))
            if threat.answer_log_odds:
                decisions.append(decision_log_odds(model, aligned, misaligned, batch_size=batch_size))
        k = len(prompts)
        rates = [sum(f) / k for f in flags]
        cis = [wilson_interval(sum(f), k) for f in flags]
        test = mcnemar_exact(flags[0], flags[1])
        out.append(
            OrganismShift(
                threat_model=tm,
                n=k,
                trait_base=rates[0],
                trait_base_ci=cis[0],
                trait_organism=rates[1],
                trait_organism_ci=cis[1],
                p_value=test.p_value,
                margin=_shift(margins[0], margins[1], seed),
                decision=_shift(decisions[0], decisions[1], seed) if decisions else None,
                categories=(
                    None
                    if threat.verdicts is None
                    else (threat.verdicts(texts[0], data), threat.verdicts(texts[1], data))
                ),
                examples=tuple(
                    (p.user, a, b) for p, a, b in list(zip(prompts, texts[0], texts[1], strict=True))[:4]
                ),
                ids=tuple(ex.id for ex in data.examples),
                flags_base=tuple(bool(f) for f in flags[0]),
                flags_organism=tuple(bool(f) for f in flags[1]),
            )
        )
    return out
