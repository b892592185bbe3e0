"""Statistics used across lensteer: AUROC, d', balanced accuracy, bootstrap intervals and rates with intervals."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


def balanced_accuracy(pos: Float[torch.Tensor, " n_pos"], neg: Float[torch.Tensor, " n_neg"], threshold: float) -> float:
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


def bootstrap_mean_ci(values: Float[torch.Tensor, " n"], *, n_boot: int = 1000, level: float = 0.95,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one sample, resampled with replacement)."""
    if values.numel() == 0:
        raise DataError("bootstrap_mean_ci needs at least one value")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(values), (n_boot, len(values)), generator=gen)
    means = values[idx].mean(-1)
    alpha = (1 - level) / 2
    return float(means.quantile(alpha)), float(means.quantile(1 - alpha))
