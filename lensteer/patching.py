"""Activation patching: which (layer, position) or head carries a behaviour, causally.

Denoising patches activations of the *clean* run into the *corrupted* run (is this activation
sufficient to restore the clean behaviour?); noising patches corrupted activations into the clean
run (is it necessary?). They are not symmetric; results say which one ran (Heimersheim & Nanda 2024).

The metric sees only the logits at the last position, ``[batch, d_vocab] -> [batch]``, by default a
logit difference between an aligned and a misaligned first token. Results are reported raw and
normalised so that 0 = the unpatched target run and 1 = the unpatched source run.

Speed: TransformerLens' ``generic_activation_patch`` runs one forward per cell. Here many cells share
one forward: every cell gets its own block of batch rows, one hook per hook point patches only its
rows, and logits are computed for the last position only (the unembedding is the largest matmul of
a small model). Results equal ``transformer_lens.patching`` on the same inputs (tested).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from lensteer._forward import last_logits
from lensteer.chat import ChatPrompt, tokenize_prompt
from lensteer.errors import ConfigError, DataError, LensteerError
from lensteer.sites import normalize_layers, resolve_sites

Metric = Callable[[torch.Tensor], torch.Tensor]
PatchDirection = Literal["denoising", "noising"]


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
        return [(self.layers[int(i) // n_cols], self.col_labels[int(i) % n_cols], float(v))
                for v, i in zip(flat.values, flat.indices, strict=True)]

    def correlation(self, other: "PatchResult") -> float:
        """Pearson correlation of the two results' example-mean effects over all cells."""
        if self.per_example.shape[:2] != other.per_example.shape[:2]:
            raise PatchingError(f"cannot correlate results of shapes {tuple(self.mean().shape)} and {tuple(other.mean().shape)}")
        a, b = self.mean().flatten(), other.mean().flatten()
        a, b = a - a.mean(), b - b.mean()
        return float((a @ b) / (a.norm() * b.norm()).clamp(min=1e-12))

    def to_dict(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "site": self.site, "kind": self.kind, "direction": self.direction,
                "method": self.method,
                "col_labels": list(self.col_labels), "normalized": self.normalized().tolist(),
                "mean": self.mean().tolist(), "source_mean": float(self.source.mean()),
                "target_mean": float(self.target.mean())}


def _as_tokens(model: Any, prompts: "Sequence[str | ChatPrompt] | torch.Tensor", name: str) -> torch.Tensor:
    if isinstance(prompts, torch.Tensor):
        if prompts.ndim != 2 or prompts.shape[0] == 0:
            raise PatchingError(f"{name} tokens must be [n_examples > 0, pos], got {tuple(prompts.shape)}")
        return prompts.long()
    if isinstance(prompts, str) or len(prompts) == 0:
        raise DataError(f"{name} must be a non-empty list of prompts or a token tensor")
    toks = [tokenize_prompt(model, p).tokens for p in prompts]
    lengths = sorted({len(t) for t in toks})
    if len(lengths) > 1:
        raise PatchingError(f"{name} prompts have different token lengths {lengths}; patching needs one length "
                            "(use lensteer.equal_length_pairs to select pairs)")
    return torch.stack(toks)


def equal_length_pairs(model: Any, clean: Sequence["str | ChatPrompt"], corrupted: Sequence["str | ChatPrompt"]) -> list[int]:
    """Indices of pairs whose clean and corrupted prompts tokenize to the most common shared length."""
    if len(clean) != len(corrupted):
        raise DataError(f"clean has {len(clean)} prompts, corrupted {len(corrupted)}; they must pair up")
    lengths = [(tokenize_prompt(model, a).n_tokens, tokenize_prompt(model, b).n_tokens)
               for a, b in zip(clean, corrupted, strict=True)]
    same = [la for la, lb in lengths if la == lb]
    if not same:
        raise DataError("no clean/corrupted pair has equal token lengths")
    common = max(set(same), key=same.count)
    return [i for i, (la, lb) in enumerate(lengths) if la == lb == common]


def _evaluate(model: Any, tokens: torch.Tensor, metric: Metric, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    values = torch.as_tensor(metric(last_logits(model, tokens, attention_mask)))
    if values.shape != (tokens.shape[0],):
        raise PatchingError(f"the metric must map [batch, d_vocab] last-position logits to [batch]; "
                            f"got shape {tuple(values.shape)} for batch {tokens.shape[0]}")
    if not torch.isfinite(values).all():
        raise PatchingError("the metric returned NaN or Inf")
    return values.float().cpu()


@dataclass(frozen=True)
class _Cell:
    hook: str
    pos: int | None
    head: int | None


def _sweep(model: Any, target: torch.Tensor, source_acts: dict[str, torch.Tensor], cells: Sequence[_Cell],
           metric: Metric, max_rows: int, progress: bool) -> torch.Tensor:
    """Metric ``[n_cells, n_examples]``: each cell's patch applied to its own block of batch rows."""
    n_ex = target.shape[0]
    per_chunk = max(1, max_rows // n_ex)
    out = torch.empty(len(cells), n_ex)
    device = next(iter(model.parameters())).device
    chunks = [list(range(i, min(i + per_chunk, len(cells)))) for i in range(0, len(cells), per_chunk)]
    for chunk in tqdm(chunks, desc="patch", disable=not progress, unit="forward"):
        by_hook: dict[str, list[tuple[int, _Cell]]] = {}
        for block, c in enumerate(chunk):
            by_hook.setdefault(cells[c].hook, []).append((block, cells[c]))

        def make_hook(entries: list[tuple[int, _Cell]], src: torch.Tensor) -> Callable[..., torch.Tensor]:
            def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001 - TL signature
                act = act.clone()
                s = src.to(act.device, act.dtype)
                for block, cell in entries:
                    rows = slice(block * n_ex, (block + 1) * n_ex)
                    pos = slice(None) if cell.pos is None else cell.pos
                    if cell.head is None:
                        act[rows, pos] = s[:, pos]
                    else:
                        act[rows, pos, cell.head] = s[:, pos, cell.head]
                return act
            return hook

        hooks = [(name, make_hook(entries, source_acts[name])) for name, entries in by_hook.items()]
        batch = target.repeat(len(chunk), 1).to(device)
        with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
            values = _evaluate(model, batch, metric)
        out[chunk[0] : chunk[-1] + 1] = values.view(len(chunk), n_ex)
    return out


def _prepare(model: Any, clean: Any, corrupted: Any, direction: str) -> tuple[torch.Tensor, torch.Tensor]:
    if getattr(model, "training", False):
        raise ConfigError("the model is in training mode; call model.eval() before patching")
    if direction not in ("denoising", "noising"):
        raise ConfigError(f"direction must be 'denoising' or 'noising', got {direction!r}")
    clean_t, corrupt_t = _as_tokens(model, clean, "clean"), _as_tokens(model, corrupted, "corrupted")
    if clean_t.shape != corrupt_t.shape:
        raise PatchingError(f"clean tokens {tuple(clean_t.shape)} and corrupted tokens {tuple(corrupt_t.shape)} "
                            "must have the same shape (same number of pairs, same token length)")
    return (clean_t, corrupt_t) if direction == "denoising" else (corrupt_t, clean_t)


def _cache(model: Any, tokens: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens.to(next(iter(model.parameters())).device), names_filter=names)
    return {n: cache[n] for n in names}


def _labels(model: Any, tokens: torch.Tensor) -> tuple[str, ...]:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return tuple(str(i) for i in range(tokens.shape[0]))
    return tuple(f"{i}:{tok.decode([int(t)])!r}" for i, t in enumerate(tokens))


def patch_residual(
    model: Any,
    clean: "Sequence[str | ChatPrompt] | Int[torch.Tensor, 'n_examples pos']",
    corrupted: "Sequence[str | ChatPrompt] | Int[torch.Tensor, 'n_examples pos']",
    metric: Metric,
    *,
    site: str = "resid_pre",
    layers: Sequence[int] | None = None,
    direction: PatchDirection = "denoising",
    max_rows: int = 256,
    progress: bool = False,
) -> PatchResult:
    """Patch one site at every (layer, position); the metric per cell and example.

    Args:
        model: A ``TransformerBridge`` in eval mode.
        clean, corrupted: Paired prompts (or ``[n_examples, pos]`` tokens) of one shared token length.
        metric: Last-position logits ``[batch, d_vocab]`` -> ``[batch]`` (see :func:`logit_diff_metric`).
        site: ``"resid_pre"``, ``"resid_mid"``, ``"resid_post"``, ``"attn_out"`` or ``"mlp_out"``.
        layers: Layers to patch (default: all).
        direction: ``"denoising"`` (clean into corrupted) or ``"noising"`` (corrupted into clean).
        max_rows: Batch rows per forward (cells x examples); lower it to save memory.
        progress: Show a progress bar.

    Raises:
        PatchingError: Different shapes or token lengths, or a metric of the wrong shape.
    """
    source, target = _prepare(model, clean, corrupted, direction)
    sites = resolve_sites(model, layers, site)
    n_pos = target.shape[1]
    acts = _cache(model, source, [s.name for s in sites])
    cells = [_Cell(s.name, p, None) for s in sites for p in range(n_pos)]
    values = _sweep(model, target, acts, cells, metric, max_rows, progress)
    with torch.inference_mode():
        src_m, tgt_m = _evaluate(model, source, metric), _evaluate(model, target, metric)
    return PatchResult(per_example=values.view(len(sites), n_pos, -1), source=src_m, target=tgt_m,
                       layers=tuple(s.layer for s in sites), site=site, kind="position", direction=direction,
                       col_labels=_labels(model, source[0]))


def patch_layers(
    model: Any, clean: Any, corrupted: Any, metric: Metric, *, site: str = "mlp_out",
    layers: Sequence[int] | None = None, direction: PatchDirection = "denoising", max_rows: int = 256,
    progress: bool = False,
) -> PatchResult:
    """Patch a whole site (every position at once) per layer, e.g. each MLP's or attention's output."""
    source, target = _prepare(model, clean, corrupted, direction)
    sites = resolve_sites(model, layers, site)
    acts = _cache(model, source, [s.name for s in sites])
    values = _sweep(model, target, acts, [_Cell(s.name, None, None) for s in sites], metric, max_rows, progress)
    with torch.inference_mode():
        src_m, tgt_m = _evaluate(model, source, metric), _evaluate(model, target, metric)
    return PatchResult(per_example=values.view(len(sites), 1, -1), source=src_m, target=tgt_m,
                       layers=tuple(s.layer for s in sites), site=site, kind="layer", direction=direction,
                       col_labels=("all positions",))


def patch_heads(
    model: Any, clean: Any, corrupted: Any, metric: Metric, *, layers: Sequence[int] | None = None,
    direction: PatchDirection = "denoising", max_rows: int = 256, progress: bool = False,
) -> PatchResult:
    """Patch each attention head's output (``attn.hook_z``, every position) per (layer, head)."""
    source, target = _prepare(model, clean, corrupted, direction)
    layer_list = normalize_layers(model, layers)
    names = [f"blocks.{la}.attn.hook_z" for la in layer_list]
    missing = [n for n in names if n not in model.hook_dict]
    if missing:
        raise ConfigError(f"this model has no per-head hook {missing[0]!r}")
    acts = _cache(model, source, names)
    n_heads = int(acts[names[0]].shape[2])
    cells = [_Cell(n, None, h) for n in names for h in range(n_heads)]
    values = _sweep(model, target, acts, cells, metric, max_rows, progress)
    with torch.inference_mode():
        src_m, tgt_m = _evaluate(model, source, metric), _evaluate(model, target, metric)
    return PatchResult(per_example=values.view(len(layer_list), n_heads, -1), source=src_m, target=tgt_m,
                       layers=tuple(layer_list), site="z", kind="head", direction=direction,
                       col_labels=tuple(f"H{h}" for h in range(n_heads)))


def attribute_residual(
    model: Any,
    clean: "Sequence[str | ChatPrompt] | Int[torch.Tensor, 'n_examples pos']",
    corrupted: "Sequence[str | ChatPrompt] | Int[torch.Tensor, 'n_examples pos']",
    metric: Metric,
    *,
    site: str = "resid_pre",
    layers: Sequence[int] | None = None,
    direction: PatchDirection = "denoising",
) -> PatchResult:
    """Attribution patching (Nanda 2023): a first-order estimate of :func:`patch_residual` for every cell.

    ``M(patch) - M(target) ~ (a_source - a_target) . dM/da |_target`` at each (layer, position), from
    one source forward, one target forward and one backward pass. The AtP* QK fix (Kramar et al.
    2024) concerns attention queries and keys, so it does not apply to residual-stream sites. Use it
    as a fast pre-screen, then confirm the top cells with exact patching.
    """
    source, target = _prepare(model, clean, corrupted, direction)
    sites = resolve_sites(model, layers, site)
    names = [s.name for s in sites]
    source_acts = _cache(model, source, names)
    device = next(iter(model.parameters())).device
    captured: dict[str, torch.Tensor] = {}

    def capture(name: str) -> Callable[..., torch.Tensor]:
        def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001 - TL signature
            if not act.requires_grad:  # frozen weights: start the graph here
                act = act.detach().requires_grad_(True)
            captured[name] = act
            return act
        return hook

    with torch.enable_grad(), model.hooks(fwd_hooks=[(n, capture(n)) for n in names]):
        values = metric(last_logits(model, target.to(device)))
        if values.shape != (target.shape[0],):
            raise PatchingError(f"the metric must map [batch, d_vocab] last-position logits to [batch]; got {tuple(values.shape)}")
        grads = torch.autograd.grad(values.sum(), [captured[n] for n in names], allow_unused=True)
    estimates = []
    for name, grad in zip(names, grads, strict=True):
        delta = source_acts[name].to(device).float() - captured[name].detach().float()
        g = torch.zeros_like(delta) if grad is None else grad.float()
        estimates.append((delta * g).sum(-1).T.cpu())              # [pos, n_examples]
    target_m = values.detach().float().cpu()
    with torch.inference_mode():
        source_m = _evaluate(model, source, metric)
    per_example = torch.stack(estimates) + target_m                # estimated patched metric
    return PatchResult(per_example=per_example, source=source_m, target=target_m,
                       layers=tuple(s.layer for s in sites), site=site, kind="position", direction=direction,
                       col_labels=_labels(model, source[0]), method="attribution")


@dataclass(frozen=True, kw_only=True, eq=False)
class DirectionPatchResult:
    """Metric with and without a direction-level intervention, per prompt, plus a random control.

    Attributes:
        baseline: ``[n_prompts]`` metric of the unmodified runs.
        patched: ``[n_prompts]`` metric with the direction ablated or added.
        control: ``[n_prompts]`` metric with a random unit direction treated the same way.
        mode: ``"ablate"`` or ``"add"``; layers: where it was applied; scale: the added amount.
    """

    baseline: Float[torch.Tensor, " n_prompts"]
    patched: Float[torch.Tensor, " n_prompts"]
    control: Float[torch.Tensor, " n_prompts"]
    mode: str
    layers: tuple[int, ...]
    site: str
    scale: float

    @property
    def effect(self) -> float:
        """Mean change of the metric caused by the intervention."""
        return float((self.patched - self.baseline).mean())

    @property
    def control_effect(self) -> float:
        """Mean change caused by the same intervention on a random direction."""
        return float((self.control - self.baseline).mean())

    def effect_ci(self, *, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
        """95% bootstrap interval of :attr:`effect`, resampling prompts."""
        diffs = self.patched - self.baseline
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, len(diffs), (n_boot, len(diffs)), generator=gen)
        means = diffs[idx].mean(-1)
        return float(means.quantile(0.025)), float(means.quantile(0.975))

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "layers": list(self.layers), "site": self.site, "scale": self.scale,
                "effect": self.effect, "effect_ci": list(self.effect_ci()), "control_effect": self.control_effect,
                "baseline_mean": float(self.baseline.mean())}


def patch_direction(
    model: Any,
    prompts: "Sequence[str | ChatPrompt]",
    direction: Any,
    metric: Metric,
    *,
    mode: Literal["ablate", "add"] = "ablate",
    layers: Sequence[int] | Literal["all"] | None = None,
    scale: float = 1.0,
    batch_size: int = 16,
    seed: int = 0,
) -> DirectionPatchResult:
    """Direction-level patching: ablate or add a :class:`~lensteer.Direction` and measure the metric.

    The causal test that a direction carries the behaviour: ablating it should move the metric,
    adding it should move it the other way, and a random direction of the same norm should not.

    Args:
        direction: The direction (its ``site`` is used; its ``layer`` unless ``layers`` is given).
        mode: ``"ablate"`` projects the direction out; ``"add"`` adds ``scale * raw_norm * unit``.
        layers: Layers to intervene at (default: the direction's layer); ``"all"`` for every layer,
            as in Arditi et al.'s directional ablation.
        scale: For ``"add"``, multiples of the direction's ``raw_norm`` (its class-mean distance).
        seed: Seed of the random control direction.
    """
    from lensteer.chat import length_sorted_batches, pad_id_of
    from lensteer.steering import ablate_direction, add_direction

    if mode not in ("ablate", "add"):
        raise ConfigError(f"mode must be 'ablate' or 'add', got {mode!r}")
    if not torch.isfinite(torch.tensor(scale)):
        raise ConfigError(f"scale must be finite, got {scale}")
    if direction.d_model != int(model.cfg.d_model):
        raise ConfigError(f"the direction has width {direction.d_model}, the model d_model {model.cfg.d_model}")
    layer_arg = None if layers == "all" else ([direction.layer] if layers is None else layers)
    sites = resolve_sites(model, layer_arg, direction.site)
    if isinstance(prompts, str) or len(prompts) == 0:
        raise DataError("pass a non-empty list of prompts")
    batches = length_sorted_batches([tokenize_prompt(model, p) for p in prompts], batch_size, pad_id_of(model))
    gen = torch.Generator().manual_seed(seed)
    random_unit = torch.randn(direction.d_model, generator=gen)
    random_unit = random_unit / random_unit.norm()
    amount = scale * direction.raw_norm

    def run(unit: torch.Tensor | None) -> torch.Tensor:
        def hook(resid: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001 - TL signature
            assert unit is not None
            return ablate_direction(resid, unit) if mode == "ablate" else add_direction(resid, unit, amount)

        hooks = [] if unit is None else [(s.name, hook) for s in sites]
        values = torch.empty(len(prompts))
        for rows, batch in batches:
            with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
                values[rows] = _evaluate(model, batch.tokens, metric, batch.attention_mask)
        return values

    return DirectionPatchResult(baseline=run(None), patched=run(direction.unit), control=run(random_unit),
                                mode=mode, layers=tuple(s.layer for s in sites), site=direction.site,
                                scale=scale)


__all__ = ["DirectionPatchResult", "PatchResult", "PatchingError", "attribute_residual", "equal_length_pairs", "logit_diff_metric", "patch_direction", "patch_heads",
           "patch_layers", "patch_residual"]
