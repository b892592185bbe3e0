"""What exact, attribution and direction-level patching share: the metric, the result, checked inputs.

The metric sees only the logits at the last position, [batch, d_vocab] -> [batch], by default a
logit difference between an aligned and a misaligned first token. Results are reported raw and
normalised so that 0 = the unpatched target run and 1 = the unpatched source run.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import torch
from jaxtyping import Float, Int

from lensteer.core.bridge import Bridge
from lensteer.core.chat import ChatPrompt, tokenize_prompt
from lensteer.core.forward import last_logits, last_position_logits
from lensteer.core.sites import head_hook_name, normalize_layers
from lensteer.errors import ConfigError, DataError, LensteerError

Metric = Callable[[torch.Tensor], torch.Tensor]


PatchDirection = Literal["denoising", "noising"]
# Clean or corrupted inputs: chat prompts (tokenized here; one token length) or a token tensor.
PatchInputs: TypeAlias = Sequence[str | ChatPrompt] | Int[torch.Tensor, "n_examples pos"]


class PatchingError(LensteerError, ValueError):
    """Patching inputs or the metric are inconsistent."""


def logit_diff_metric(aligned_token: int | Sequence[int], misaligned_token: int | Sequence[int]) -> Metric:
    """Metric: logit of the aligned next token minus the misaligned one, per example.

    Token ids may be one id for every example or one per example.
    """
    aligned = torch.as_tensor(aligned_token).long()
    misaligned = torch.as_tensor(misaligned_token).long()

    def metric(last_logits: torch.Tensor) -> torch.Tensor:
        n = last_logits.shape[0]
        a = aligned.expand(n) if aligned.ndim == 0 else aligned.repeat(n // len(aligned))
        b = misaligned.expand(n) if misaligned.ndim == 0 else misaligned.repeat(n // len(misaligned))
        rows = torch.arange(n)
        return last_logits[rows, a.to(last_logits.device)] - last_logits[rows, b.to(last_logits.device)]

    return metric


@dataclass(frozen=True, kw_only=True, eq=False)
class PatchResult:
    """Patching metric per cell and example.

    Attributes:
        per_example: ``[n_layers, n_cols, n_examples]`` metric of each patched run. Columns are
            positions (``kind="position"``), heads (``"head"``) or one whole-layer column (``"layer"``).
        source: ``[n_examples]`` metric of the unpatched source run (clean when denoising).
        target: ``[n_examples]`` metric of the unpatched target run (corrupted when denoising).
        layers: Layer of each row.
        site: Hook site patched (``"resid_pre"``, ``"attn_out"``, ``"mlp_out"``, ``"z"``).
        kind: ``"position"``, ``"head"`` or ``"layer"``.
        direction: ``"denoising"`` or ``"noising"``.
        col_labels: Label of each column (the source prompt's tokens for positions).
        method: ``"exact"`` (patched forward passes) or ``"attribution"`` (gradient estimate).
    """

    per_example: Float[torch.Tensor, "n_layers n_cols n_examples"]
    source: Float[torch.Tensor, " n_examples"]
    target: Float[torch.Tensor, " n_examples"]
    layers: tuple[int, ...]
    site: str
    kind: str
    direction: str
    col_labels: tuple[str, ...]
    method: str = "exact"

    def mean(self) -> Float[torch.Tensor, "n_layers n_cols"]:
        """Metric averaged over examples."""
        return self.per_example.mean(-1)

    def normalized(self) -> Float[torch.Tensor, "n_layers n_cols"]:
        """``(M_patched - M_target) / (M_source - M_target)`` of example means: 0 = target, 1 = source."""
        gap = float(self.source.mean() - self.target.mean())
        if abs(gap) < 1e-9:
            raise PatchingError("source and target runs give the same metric: nothing to normalise by")
        return (self.mean() - self.target.mean()) / gap

    def top_cells(self, k: int = 5) -> list[tuple[int, str, float]]:
        """The ``k`` cells with the largest normalised effect: ``(layer, column label, effect)``."""
        norm = self.normalized()
        flat = norm.flatten().topk(min(k, norm.numel()))
        n_cols = norm.shape[1]
        return [
            (self.layers[int(i) // n_cols], self.col_labels[int(i) % n_cols], float(v))
            for v, i in zip(flat.values, flat.indices, strict=True)
        ]

    def correlation(self, other: "PatchResult") -> float:
        """Pearson correlation of the two results' example-mean effects over all cells."""
        if self.per_example.shape[:2] != other.per_example.shape[:2]:
            raise PatchingError(
                f"cannot correlate results of shapes {tuple(self.mean().shape)} and {tuple(other.mean().shape)}"
            )
        a, b = self.mean().flatten(), other.mean().flatten()
        a, b = a - a.mean(), b - b.mean()
        return float((a @ b) / (a.norm() * b.norm()).clamp(min=1e-12))

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers),
            "site": self.site,
            "kind": self.kind,
            "direction": self.direction,
            "method": self.method,
            "col_labels": list(self.col_labels),
            "normalized": self.normalized().tolist(),
            "mean": self.mean().tolist(),
            "source_mean": float(self.source.mean()),
            "target_mean": float(self.target.mean()),
        }


def as_tokens(model: Bridge, prompts: "Sequence[str | ChatPrompt] | torch.Tensor", name: str) -> torch.Tensor:
    if isinstance(prompts, torch.Tensor):
        if prompts.ndim != 2 or prompts.shape[0] == 0:
            raise PatchingError(f"{name} tokens must be [n_examples > 0, pos], got {tuple(prompts.shape)}")
        return prompts.long()
    if isinstance(prompts, str) or len(prompts) == 0:
        raise DataError(f"{name} must be a non-empty list of prompts or a token tensor")
    toks = [tokenize_prompt(model, p).tokens for p in prompts]
    lengths = sorted({len(t) for t in toks})
    if len(lengths) > 1:
        raise PatchingError(
            f"{name} prompts have different token lengths {lengths}; patching needs one length "
            "(use lensteer.locate.equal_length_pairs to select pairs)"
        )
    return torch.stack(toks)


def equal_length_pairs(
    model: Bridge, clean: Sequence["str | ChatPrompt"], corrupted: Sequence["str | ChatPrompt"]
) -> list[int]:
    """Indices of pairs whose clean and corrupted prompts tokenize to the most common shared length."""
    if len(clean) != len(corrupted):
        raise DataError(f"clean has {len(clean)} prompts, corrupted {len(corrupted)}; they must pair up")
    lengths = [
        (tokenize_prompt(model, a).n_tokens, tokenize_prompt(model, b).n_tokens)
        for a, b in zip(clean, corrupted, strict=True)
    ]
    same = [la for la, lb in lengths if la == lb]
    if not same:
        raise DataError("no clean/corrupted pair has equal token lengths")
    common = max(set(same), key=same.count)
    return [i for i, (la, lb) in enumerate(lengths) if la == lb == common]


def checked_metric(values: Any, batch: int) -> torch.Tensor:
    values = torch.as_tensor(values)
    if values.shape != (batch,):
        raise PatchingError(
            f"the metric must map [batch, d_vocab] last-position logits to [batch]; "
            f"got shape {tuple(values.shape)} for batch {batch}"
        )
    if not torch.isfinite(values).all():
        raise PatchingError("the metric returned NaN or Inf")
    return values.float().cpu()


def evaluate_metric(
    model: Bridge, tokens: torch.Tensor, metric: Metric, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    return checked_metric(metric(last_logits(model, tokens, attention_mask)), tokens.shape[0])


def prepare_pair(
    model: Bridge, clean: Any, corrupted: Any, direction: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if getattr(model, "training", False):
        raise ConfigError("the model is in training mode; call model.eval() before patching")
    if direction not in ("denoising", "noising"):
        raise ConfigError(f"direction must be 'denoising' or 'noising', got {direction!r}")
    clean_t, corrupt_t = as_tokens(model, clean, "clean"), as_tokens(model, corrupted, "corrupted")
    if clean_t.shape != corrupt_t.shape:
        raise PatchingError(
            f"clean tokens {tuple(clean_t.shape)} and corrupted tokens {tuple(corrupt_t.shape)} "
            "must have the same shape (same number of pairs, same token length)"
        )
    return (clean_t, corrupt_t) if direction == "denoising" else (corrupt_t, clean_t)


def cache_source(
    model: Bridge, tokens: torch.Tensor, names: list[str], role: str = "source", metric: Metric | None = None
) -> dict[str, torch.Tensor]:
    """Activations at ``names``; with ``metric``, also its values on the same run under ``"metric"``."""
    with torch.inference_mode(), last_position_logits(model):
        logits, cache = model.run_with_cache(
            tokens.to(next(iter(model.parameters())).device), names_filter=names
        )
    for name in names:
        if not torch.isfinite(cache[name]).all():
            raise PatchingError(
                f"the {role} run has NaN or Inf activations at {name!r}; patching needs finite "
                "activations (check the model's dtype and the inputs)"
            )
    acts = {n: cache[n] for n in names}
    if metric is not None:
        acts["metric"] = checked_metric(metric(logits[:, -1]), tokens.shape[0]).float().cpu()
    return acts


def run_roles(direction: str) -> tuple[str, str]:
    """Names of the (source, target) runs for error messages."""
    return ("clean", "corrupted") if direction == "denoising" else ("corrupted", "clean")


def head_hooks(model: Bridge, layers: Sequence[int] | None) -> tuple[list[int], list[str], int]:
    """The layers, their per-head ``attn.hook_z`` hook names and the head count; an error if the model lacks them."""
    layer_list = normalize_layers(model, layers)
    names = [head_hook_name(la) for la in layer_list]
    missing = [n for n in names if n not in model.hook_dict]
    if missing:
        raise ConfigError(f"this model has no per-head hook {missing[0]!r}")
    return layer_list, names, int(model.cfg.n_heads)


def token_labels(model: Bridge, tokens: torch.Tensor) -> tuple[str, ...]:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return tuple(str(i) for i in range(tokens.shape[0]))
    return tuple(f"{i}:{tok.decode([int(t)])!r}" for i, t in enumerate(tokens))
