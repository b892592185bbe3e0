"""Statistics used across lensteer: AUROC, d', balanced accuracy, bootstrap intervals and rates with intervals."""

import math
import statistics
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float

from lensteer.errors import DataError

Scores = Float[torch.Tensor, " n"]


def auroc(pos: Float[torch.Tensor, " n_pos"], neg: Float[torch.Tensor, " n_neg"]) -> float:
    """Area under the ROC curve: P(score of a random positive > a random negative), ties count half."""
    greater = (pos[:, None] > neg[None, :]).float().mean()
    ties = (pos[:, None] == neg[None, :]).float().mean()
    return float(greater + 0.5 * ties)


def d_prime(pos: Float[torch.Tensor, " n_pos"], neg: Float[torch.Tensor, " n_neg"]) -> float:
    """(mean+ - mean-) / sqrt((var+ + var-) / 2)."""
    pooled = ((pos.var() + neg.var()) / 2).sqrt().clamp(min=1e-12)
    return float((pos.mean() - neg.mean()) / pooled)


def balanced_accuracy(
    pos: Float[torch.Tensor, " n_pos"], neg: Float[torch.Tensor, " n_neg"], threshold: float
) -> float:
    """Mean of the true-positive rate (pos > threshold) and true-negative rate (neg <= threshold)."""
    return float(0.5 * ((pos > threshold).float().mean() + (neg <= threshold).float().mean()))


def bootstrap_ci(
    statistic: Callable[[torch.Tensor, torch.Tensor], float],
    pos: Float[torch.Tensor, " n_pos"],
    neg: Float[torch.Tensor, " n_neg"],
    *,
    n_boot: int = 500,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(pos, neg)``, resampling each class's examples."""
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(n_boot):
        ip = torch.randint(0, len(pos), (len(pos),), generator=gen)
        ineg = torch.randint(0, len(neg), (len(neg),), generator=gen)
        values.append(statistic(pos[ip], neg[ineg]))
    v = torch.tensor(values)
    alpha = (1 - level) / 2
    return float(v.quantile(alpha)), float(v.quantile(1 - alpha))


@dataclass(frozen=True, kw_only=True)
class Rate:
    """A share of ``n`` items with a percentile-bootstrap interval ``[low, high]``."""

    value: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        """Plain-JSON form."""
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}


def rate_with_ci(flags: Sequence[bool], *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Rate:
    """Share of ``True`` in ``flags`` with a bootstrap CI (resampling the items, via :func:`~lensteer.core.stats.bootstrap_ci`)."""
    if isinstance(flags, str) or len(flags) == 0:
        raise DataError("rate_with_ci needs a non-empty list of booleans")
    x = torch.tensor([float(bool(f)) for f in flags])
    low, high = bootstrap_ci(lambda a, _b: float(a.mean()), x, x[:1], n_boot=n_boot, level=level, seed=seed)
    return Rate(value=float(x.mean()), low=low, high=high, n=len(x))


def bootstrap_mean_ci(
    values: Float[torch.Tensor, " n"], *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one sample, resampled with replacement)."""
    if values.numel() == 0:
        raise DataError("bootstrap_mean_ci needs at least one value")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(values), (n_boot, len(values)), generator=gen)
    means = values[idx].mean(-1)
    alpha = (1 - level) / 2
    return float(means.quantile(alpha)), float(means.quantile(1 - alpha))


def wilson_interval(successes: int, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927).

    Unlike the percentile bootstrap it is not degenerate at 0/n or n/n (0 of 16 gives [0, 0.19], not
    [0, 0]) and keeps close to nominal coverage at small n (Brown, Cai & DasGupta 2001).
    """
    if n <= 0 or not 0 <= successes <= n:
        raise DataError(f"wilson_interval needs 0 <= successes <= n and n > 0, got {successes} of {n}")
    z = statistics.NormalDist().inv_cdf(0.5 + level / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True, kw_only=True)
class PairedTest:
    """Exact McNemar test of two conditions scored on the same items.

    ``a_only``: items where only condition A succeeded; ``b_only``: only B. The p-value is two-sided,
    from the binomial distribution of the discordant pairs under H0 (each discordant pair equally
    likely to go either way); concordant pairs carry no information about the difference.
    """

    n: int
    a_only: int
    b_only: int
    p_value: float

    @property
    def difference(self) -> float:
        """Rate of A minus rate of B, over the ``n`` paired items."""
        return (self.a_only - self.b_only) / self.n

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha

    def to_dict(self) -> dict[str, float | int]:
        return {
            "n": self.n,
            "a_only": self.a_only,
            "b_only": self.b_only,
            "p_value": self.p_value,
            "difference": self.difference,
        }


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> PairedTest:
    """Exact (binomial) McNemar test that conditions A and B succeed equally often on the same items."""
    if len(a) != len(b) or len(a) == 0:
        raise DataError(
            f"mcnemar_exact needs two equally long, non-empty lists of paired outcomes, got {len(a)} "
            f"and {len(b)}"
        )
    a_only = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    b_only = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    discordant = a_only + b_only
    if discordant == 0:
        return PairedTest(n=len(a), a_only=0, b_only=0, p_value=1.0)
    k = min(a_only, b_only)
    tail = sum(math.comb(discordant, i) for i in range(k + 1)) / 2**discordant
    return PairedTest(n=len(a), a_only=a_only, b_only=b_only, p_value=min(1.0, 2 * tail))


@dataclass(frozen=True, kw_only=True)
class Agreement:
    """How well a scorer agrees with reference labels: accuracy (Wilson interval) and Cohen's kappa
    (with a percentile-bootstrap interval over items)."""

    n: int
    accuracy: float
    accuracy_ci: tuple[float, float]
    kappa: float
    kappa_ci: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "accuracy_ci": list(self.accuracy_ci),
            "kappa": self.kappa,
            "kappa_ci": list(self.kappa_ci),
        }


def cohen_kappa(labels: Sequence[Hashable], predictions: Sequence[Hashable]) -> float:
    """Cohen's kappa of two raters over any categories (two for booleans, three for "refuses / complies /
    neither"): agreement beyond what their marginal rates give by chance. 1 when both use one category only
    and agree."""
    if len(labels) != len(predictions) or not labels:
        raise DataError(
            f"cohen_kappa needs two equally long, non-empty lists, got {len(labels)} and {len(predictions)}"
        )
    n = len(labels)
    observed = sum(a == b for a, b in zip(labels, predictions, strict=True)) / n
    rater_a, rater_b = Counter(labels), Counter(predictions)
    expected = sum(rater_a[c] * rater_b[c] for c in rater_a) / (n * n)
    return 1.0 if expected == 1.0 else (observed - expected) / (1 - expected)


def agreement(
    labels: Sequence[Hashable], predictions: Sequence[Hashable], *, n_boot: int = 1000, seed: int = 0
) -> Agreement:
    """Accuracy and Cohen's kappa of ``predictions`` against reference ``labels`` (booleans or any
    categories), with intervals: Wilson for the accuracy, percentile bootstrap over items for kappa."""
    kappa = cohen_kappa(labels, predictions)
    n = len(labels)
    correct = sum(a == b for a, b in zip(labels, predictions, strict=True))
    gen = torch.Generator().manual_seed(seed)
    boot = []
    for _ in range(n_boot):
        idx = torch.randint(0, n, (n,), generator=gen).tolist()
        boot.append(cohen_kappa([labels[i] for i in idx], [predictions[i] for i in idx]))
    values = torch.tensor(boot)
    return Agreement(
        n=n,
        accuracy=correct / n,
        accuracy_ci=wilson_interval(correct, n),
        kappa=kappa,
        kappa_ci=(float(values.quantile(0.025)), float(values.quantile(0.975))),
    )


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (Holm 1979), in the order given.

    Sort the ``m`` p-values ascending; the ``i``-th smallest (0-based) is multiplied by ``m - i``, a running
    maximum keeps the adjusted values monotone, and each is capped at 1. Rejecting where the adjusted value
    is below ``alpha`` controls the family-wise error rate at ``alpha`` under any dependence. The same
    numbers as ``statsmodels.stats.multitest.multipletests(p, method="holm")[1]``.
    """
    if isinstance(pvalues, str):
        raise DataError("holm needs a list of p-values, not a string")
    values = [float(p) for p in pvalues]
    bad = [p for p in values if not 0.0 <= p <= 1.0]  # also catches NaN
    if bad:
        raise DataError(f"p-values must lie in [0, 1], got {bad[0]!r}")
    m = len(values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda k: values[k])):
        running = max(running, min(1.0, (m - rank) * values[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True, kw_only=True)
class PairedDifference:
    """A sign-flip permutation test of the mean paired difference ``a - b`` (the same items under two conditions).

    ``ci`` is the percentile-bootstrap interval of the mean difference; ``p_value`` is one-sided
    (``alternative="greater"``: is ``a`` larger?) or two-sided, with the ``+1`` correction of Phipson &
    Smyth (2010), so it is never 0.
    """

    n: int
    mean_difference: float
    ci: tuple[float, float]
    p_value: float
    alternative: str

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "mean_difference": self.mean_difference,
            "ci": list(self.ci),
            "p_value": self.p_value,
            "alternative": self.alternative,
        }


def paired_permutation_test(
    a: Float[torch.Tensor, " n_a"],
    b: Float[torch.Tensor, " n_b"],
    *,
    alternative: str = "two-sided",
    n_perm: int = 10_000,
    n_boot: int = 1000,
    seed: int = 0,
) -> PairedDifference:
    """Is the mean of ``a - b`` over paired items different from 0 (``"two-sided"``) or above it (``"greater"``)?

    Under H0 each item's difference is as likely to have either sign, so the null distribution of the
    mean is drawn by flipping signs at random (exact in distribution for symmetric differences, no normality
    assumed): the paired test for continuous scores, as :func:`mcnemar_exact` is for successes.
    """
    if alternative not in ("two-sided", "greater"):
        raise DataError(f"alternative must be 'two-sided' or 'greater', got {alternative!r}")
    if a.shape != b.shape or a.ndim != 1 or a.numel() == 0:
        raise DataError(
            f"paired_permutation_test needs two equally long, non-empty 1-d tensors, got shapes "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    diff = a.double() - b.double()
    if not torch.isfinite(diff).all():
        raise DataError("paired_permutation_test got NaN or Inf scores")
    observed = float(diff.mean())
    gen = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (n_perm, len(diff)), generator=gen).double() * 2 - 1
    null = (signs * diff).mean(-1)
    tol = 1e-12 * max(1.0, abs(observed))  # a flip that reproduces the observed mean counts as extreme
    extreme = null >= observed - tol if alternative == "greater" else null.abs() >= abs(observed) - tol
    p = (int(extreme.sum()) + 1) / (n_perm + 1)
    return PairedDifference(
        n=len(diff),
        mean_difference=observed,
        ci=bootstrap_mean_ci(diff.float(), n_boot=n_boot, seed=seed),
        p_value=p,
        alternative=alternative,
    )
