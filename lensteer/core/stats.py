"""Small statistics used across lensteer: AUROC, d', balanced accuracy and bootstrap intervals."""

from collections.abc import Callable

import torch
from jaxtyping import Float

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
