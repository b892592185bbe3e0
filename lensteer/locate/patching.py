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

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from lensteer.core.chat import ChatPrompt, tokenize_prompt
from lensteer.core.forward import last_logits, last_position_logits, unembed
from lensteer.core.sites import normalize_layers, resolve_sites
from lensteer.errors import ConfigError, DataError, LensteerError
from lensteer.locate import incremental as _fastpatch

Metric = Callable[[torch.Tensor], torch.Tensor]
PatchDirection = Literal["denoising", "noising"]
Algorithm = Literal["incremental", "full"]
_log = logging.getLogger(__name__)


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


def _checked(values: Any, batch: int) -> torch.Tensor:
    values = torch.as_tensor(values)
    if values.shape != (batch,):
        raise PatchingError(f"the metric must map [batch, d_vocab] last-position logits to [batch]; "
                            f"got shape {tuple(values.shape)} for batch {batch}")
    if not torch.isfinite(values).all():
        raise PatchingError("the metric returned NaN or Inf")
    return values.float().cpu()


def _evaluate(model: Any, tokens: torch.Tensor, metric: Metric, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    return _checked(metric(last_logits(model, tokens, attention_mask)), tokens.shape[0])


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


def _cache(model: Any, tokens: torch.Tensor, names: list[str], role: str = "source",
           metric: Metric | None = None) -> dict[str, torch.Tensor]:
    """Activations at ``names``; with ``metric``, also its values on the same run under ``"metric"``."""
    with torch.inference_mode(), last_position_logits(model):
        logits, cache = model.run_with_cache(tokens.to(next(iter(model.parameters())).device), names_filter=names)
    for name in names:
        if not torch.isfinite(cache[name]).all():
            raise PatchingError(f"the {role} run has NaN or Inf activations at {name!r}; patching needs finite "
                                "activations (check the model's dtype and the inputs)")
    acts = {n: cache[n] for n in names}
    if metric is not None:
        acts["metric"] = _checked(metric(logits[:, -1]), tokens.shape[0]).float().cpu()
    return acts


def _roles(direction: str) -> tuple[str, str]:
    """Names of the (source, target) runs for error messages."""
    return ("clean", "corrupted") if direction == "denoising" else ("corrupted", "clean")


def _head_hooks(model: Any, layers: Sequence[int] | None) -> tuple[list[int], list[str], int]:
    """The layers, their per-head ``attn.hook_z`` hook names and the head count; an error if the model lacks them."""
    layer_list = normalize_layers(model, layers)
    names = [f"blocks.{la}.attn.hook_z" for la in layer_list]
    missing = [n for n in names if n not in model.hook_dict]
    if missing:
        raise ConfigError(f"this model has no per-head hook {missing[0]!r}")
    return layer_list, names, int(model.cfg.n_heads)


def _check_algorithm(algorithm: str) -> None:
    if algorithm not in ("incremental", "full"):
        raise ConfigError(f"algorithm must be 'incremental' or 'full', got {algorithm!r}")


@dataclass(frozen=True)
class _Effect:
    """One layer's patch, as the residual stream entering layer ``start``.

    ``new[v * n_ex + e]`` is the patched stream of variant ``v`` (a head, or the one site) and example
    ``e``; ``differs`` marks the positions whose patched activation differs from the target's.
    """

    start: int
    new: torch.Tensor
    differs: torch.Tensor


def _layer_effect(tgt: _fastpatch.Replayer, src: _fastpatch.Replayer, layer: int, site: str, heads: bool) -> _Effect:
    if not heads and site in ("resid_pre", "resid_post"):
        start = layer if site == "resid_pre" else layer + 1
        new = src.resid[start]
        return _Effect(start, new, (new != tgt.resid[start]).any(-1))
    # a site inside block ``layer``: every position's block output depends on the site only at that
    # position (attention reads keys/values from resid_pre), so patching all positions at once gives
    # each single-position patch's output at its own position, and one block call serves all cells.
    name = f"blocks.{layer}.attn.hook_z" if heads else f"blocks.{layer}.hook_{site}"
    s_act, t_act = src.acts[name], tgt.acts[name]
    n_ex = s_act.shape[0]
    n_var = int(s_act.shape[2]) if heads else 1

    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001 - TL signature
        act = act.clone()
        s = s_act.to(act.device, act.dtype)
        for v in range(n_var):
            rows = slice(v * n_ex, (v + 1) * n_ex)
            if heads:
                act[rows, :, v] = s[:, :, v]
            else:
                act[rows] = s
        return act

    new = tgt.block_outputs(layer, [(name, hook)], n_var)
    if heads:
        differs = torch.cat([(s_act[:, :, h] != t_act[:, :, h]).flatten(2).any(-1) for h in range(n_var)])
    else:
        differs = (s_act != t_act).flatten(2).any(-1)
    return _Effect(layer + 1, new, differs)


def _incremental(model: Any, source: torch.Tensor, target: torch.Tensor, metric: Metric, *, layers: Sequence[int],
                 site: str, kind: str, max_rows: int, progress: bool, direction: str) -> torch.Tensor | None:
    """Metric ``[n_cells, n_examples]`` recomputing only what each patch can change (see ``_fastpatch``).

    Cells are (layer, position), (layer,) or (layer, head), layer-major. None if the model's blocks
    cannot be replayed; the caller then runs one full forward per cell.
    """
    heads = kind == "head"
    if heads:
        names = [f"blocks.{la}.attn.hook_z" for la in layers]
    else:
        names = [] if site in ("resid_pre", "resid_post") else [f"blocks.{la}.hook_{site}" for la in layers]
    src_role, tgt_role = _roles(direction)
    try:
        tgt = _fastpatch.Replayer(model, target, capture=names)
        try:
            src = _fastpatch.Replayer(model, source, capture=names, like=tgt)
        except _fastpatch.NonFinite as err:
            raise PatchingError(f"the {src_role} run has {err}; patching needs finite activations") from err
    except _fastpatch.NonFinite as err:
        raise PatchingError(f"the {tgt_role} run has {err}; patching needs finite activations") from err
    except _fastpatch.Unsupported as err:
        _log.info("incremental patching is unavailable for this model (%s); running one forward per cell", err)
        return None
    n_ex, n_pos = target.shape
    cells: list[list[_fastpatch.Row]] = []
    for layer in layers:
        eff = _layer_effect(tgt, src, layer, site, heads)
        for v in range(eff.new.shape[0] // n_ex):
            new, differs = eff.new[v * n_ex : (v + 1) * n_ex], eff.differs[v * n_ex : (v + 1) * n_ex]
            if kind == "position":
                cells.extend([_fastpatch.Row(eff.start, q, e, new[e, q : q + 1]) for e in range(n_ex) if differs[e, q]]
                             for q in range(n_pos))
            else:  # every position patched: recompute from the first one that differs
                row = []
                for e in range(n_ex):
                    changed = differs[e].nonzero()
                    if len(changed):
                        q = int(changed[0])
                        row.append(_fastpatch.Row(eff.start, q, e, new[e, q:]))
                cells.append(row)
    flat = [r for cell in cells for r in cell]
    n_groups = len({r.pos if tgt.use_prefix else 0 for r in flat if r.start < tgt.n_layers})
    with tqdm(total=n_groups, desc="patch", disable=not progress, unit="position") as bar:
        computed = tgt.run(flat, max_rows=max_rows, on_group=bar.update)
    finals = tgt.final.repeat(len(cells), 1, 1)      # unpatched rows are the target run itself
    i = 0
    for c, cell in enumerate(cells):
        for r in cell:
            finals[c, r.example] = computed[i]
            i += 1
    out = torch.empty(len(cells), n_ex)
    per = max(1, max_rows // n_ex)
    with torch.inference_mode():
        for lo in range(0, len(cells), per):
            chunk = finals[lo : lo + per]
            values = _checked(metric(unembed(model, chunk.reshape(-1, chunk.shape[-1]))), chunk.shape[0] * n_ex)
            out[lo : lo + chunk.shape[0]] = values.view(chunk.shape[0], n_ex)
    return out


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
    algorithm: Algorithm = "incremental",
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
        algorithm: ``"incremental"`` (default) replays the target block by block and recomputes only
            the layers at and above a patch and the positions at and after it, reusing the target's
            keys/values before it; ``"full"`` runs a whole forward per cell, as TransformerLens does
            (the reference; also used automatically when a model's blocks cannot be replayed). Both
            give the same numbers.

    Raises:
        PatchingError: Different shapes or token lengths, a metric of the wrong shape, or NaN/Inf
            activations or metric values.
    """
    _check_algorithm(algorithm)
    source, target = _prepare(model, clean, corrupted, direction)
    sites = resolve_sites(model, layers, site)
    n_pos = target.shape[1]
    values = None
    if algorithm == "incremental":
        values = _incremental(model, source, target, metric, layers=[s.layer for s in sites], site=site,
                              kind="position", max_rows=max_rows, progress=progress, direction=direction)
    if values is None:
        acts = _cache(model, source, [s.name for s in sites], _roles(direction)[0])
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
    progress: bool = False, algorithm: Algorithm = "incremental",
) -> PatchResult:
    """Patch a whole site (every position at once) per layer, e.g. each MLP's or attention's output.

    Arguments as in :func:`patch_residual`; ``"incremental"`` starts each recomputation at the
    patched layer and at the first position where the patched activation differs from the target's.
    """
    _check_algorithm(algorithm)
    source, target = _prepare(model, clean, corrupted, direction)
    sites = resolve_sites(model, layers, site)
    values = None
    if algorithm == "incremental":
        values = _incremental(model, source, target, metric, layers=[s.layer for s in sites], site=site,
                              kind="layer", max_rows=max_rows, progress=progress, direction=direction)
    if values is None:
        acts = _cache(model, source, [s.name for s in sites], _roles(direction)[0])
        values = _sweep(model, target, acts, [_Cell(s.name, None, None) for s in sites], metric, max_rows, progress)
    with torch.inference_mode():
        src_m, tgt_m = _evaluate(model, source, metric), _evaluate(model, target, metric)
    return PatchResult(per_example=values.view(len(sites), 1, -1), source=src_m, target=tgt_m,
                       layers=tuple(s.layer for s in sites), site=site, kind="layer", direction=direction,
                       col_labels=("all positions",))


def patch_heads(
    model: Any, clean: Any, corrupted: Any, metric: Metric, *, layers: Sequence[int] | None = None,
    direction: PatchDirection = "denoising", max_rows: int = 256, progress: bool = False,
    algorithm: Algorithm = "incremental",
) -> PatchResult:
    """Patch each attention head's output (``attn.hook_z``, every position) per (layer, head).

    Arguments as in :func:`patch_residual`; ``"incremental"`` runs each layer once with every head
    patched in its own batch rows, then recomputes only the layers above it.
    """
    _check_algorithm(algorithm)
    source, target = _prepare(model, clean, corrupted, direction)
    layer_list, names, n_heads = _head_hooks(model, layers)
    values = None
    if algorithm == "incremental":
        values = _incremental(model, source, target, metric, layers=layer_list, site="z", kind="head",
                              max_rows=max_rows, progress=progress, direction=direction)
    if values is None:
        acts = _cache(model, source, names, _roles(direction)[0])
        n_heads = int(acts[names[0]].shape[2])
        cells = [_Cell(n, None, h) for n in names for h in range(n_heads)]
        values = _sweep(model, target, acts, cells, metric, max_rows, progress)
    with torch.inference_mode():
        src_m, tgt_m = _evaluate(model, source, metric), _evaluate(model, target, metric)
    return PatchResult(per_example=values.view(len(layer_list), n_heads, -1), source=src_m, target=tgt_m,
                       layers=tuple(layer_list), site="z", kind="head", direction=direction,
                       col_labels=tuple(f"H{h}" for h in range(n_heads)))


AttributionMethod = Literal["atp", "atp*"]


def attribute_residual(
    model: Any,
    clean: "Sequence[str | ChatPrompt] | Int[torch.Tensor, 'n_examples pos']",
    corrupted: "Sequence[str | ChatPrompt] | Int[torch.Tensor, 'n_examples pos']",
    metric: Metric,
    *,
    site: str = "resid_pre",
    layers: Sequence[int] | None = None,
    direction: PatchDirection = "denoising",
    method: AttributionMethod = "atp",
) -> PatchResult:
    """Attribution patching (Nanda 2023): a first-order estimate of :func:`patch_residual` for every cell.

    ``M(patch) - M(target) ~ (a_source - a_target) . dM/da |_target`` at each (layer, position), from
    one source forward (which also gives the source metric), one target forward and one backward
    pass. Use it as a fast pre-screen, then confirm the top cells with exact patching.

    ``method="atp*"`` adds AtP*'s GradDrop (Kramar et al. 2024, arXiv 2403.00745) against false
    negatives from cancelling paths: for every layer ``l`` the gradient is recomputed with layer
    ``l``'s contribution to the residual stream cut from the backward pass, and a cell's magnitude is
    the mean over layers of ``|delta . grad_without_l|`` (the paper normalises the sum by ``L - 1``
    instead of ``L``: the ranking is the same). GradDrop estimates magnitudes; the result carries the
    sign of the plain AtP estimate so that it stays comparable with exact patching. It costs about
    ``n_layers / 2`` extra backward passes and applies to ``resid_pre``/``resid_post`` only. AtP*'s
    other fix (recomputing the attention softmax for query/key patches) concerns per-head query and
    key nodes, which residual-stream cells are not.

    Raises:
        ConfigError: Unknown ``method``, or ``"atp*"`` at a site inside a block.
    """
    if method not in ("atp", "atp*"):
        raise ConfigError(f"method must be 'atp' or 'atp*', got {method!r}")
    if method == "atp*" and site not in ("resid_pre", "resid_post"):
        raise ConfigError(f"method='atp*' (GradDrop) supports sites 'resid_pre' and 'resid_post', not {site!r}")
    source, target = _prepare(model, clean, corrupted, direction)
    sites = resolve_sites(model, layers, site)
    n_layers = int(model.cfg.n_layers)
    if method == "atp":
        names = [s.name for s in sites]
        nodes = list(range(len(sites)))                                 # index into names
    else:  # the whole residual stream: stream[k] enters layer k, stream[n_layers] is the final one
        names = [f"blocks.{k}.hook_resid_pre" for k in range(n_layers)] + [f"blocks.{n_layers - 1}.hook_resid_post"]
        nodes = [s.layer + (site == "resid_post") for s in sites]
    source_acts = _cache(model, source, [names[i] for i in nodes], _roles(direction)[0], metric=metric)
    device = next(iter(model.parameters())).device
    with _gradients(model, target, names, metric, keep_graph=method == "atp*") as (values, acts, grads):
        deltas = {i: source_acts[names[i]].to(device).float() - acts[i].detach().float() for i in nodes}
        plain = {i: (deltas[i] * grads[i].float()).sum(-1) for i in nodes}       # [n_examples, pos]
        if method == "atp":
            estimates = plain
        else:
            magnitude = _graddrop(acts, grads, deltas, n_layers)
            estimates = {i: plain[i].sign() * magnitude[i] for i in nodes}
    target_m = values.detach().float().cpu()
    per_example = torch.stack([estimates[i].detach().T.cpu() for i in nodes]) + target_m   # estimated patched metric
    return PatchResult(per_example=per_example, source=source_acts["metric"], target=target_m,
                       layers=tuple(s.layer for s in sites), site=site, kind="position", direction=direction,
                       col_labels=_labels(model, source[0]),
                       method="attribution" if method == "atp" else "attribution (AtP* GradDrop)")


@contextmanager
def _gradients(model: Any, target: torch.Tensor, names: Sequence[str], metric: Metric, *,
               keep_graph: bool = False) -> Iterator[tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]]:
    """One forward and one backward of ``metric`` on ``target``: the metric values, the activations
    at the hook points ``names`` (in the graph) and the metric's gradients there (zeros if unused)."""
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
        acts = [captured[n] for n in names]
        grads = list(torch.autograd.grad(values.sum(), acts, allow_unused=True, retain_graph=keep_graph))
        yield values, acts, [torch.zeros_like(a) if g is None else g for a, g in zip(acts, grads, strict=True)]


def attribute_heads(
    model: Any,
    clean: "Sequence[str | ChatPrompt] | Int[torch.Tensor, 'n_examples pos']",
    corrupted: "Sequence[str | ChatPrompt] | Int[torch.Tensor, 'n_examples pos']",
    metric: Metric,
    *,
    layers: Sequence[int] | None = None,
    direction: PatchDirection = "denoising",
) -> PatchResult:
    """Attribution patching per attention head: a first-order estimate of :func:`patch_heads`.

    A head's estimate is ``(z_source - z_target) . dM/dz`` summed over its positions and ``d_head``
    (``attn.hook_z``, the head's output before ``W_O``), from one source forward, one target
    forward and one backward for every head of every layer. Since ``W_O`` is linear, the heads of a
    layer add up to the attribution of its ``attn_out`` (tested). AtP*'s fixes do not apply: its QK
    fix concerns a head's query and key inputs, not its output, and GradDrop cuts residual layers.

    Raises:
        ConfigError: A model without per-head ``attn.hook_z`` hook points.
    """
    source, target = _prepare(model, clean, corrupted, direction)
    layer_list, names, n_heads = _head_hooks(model, layers)
    source_acts = _cache(model, source, names, _roles(direction)[0], metric=metric)
    device = next(iter(model.parameters())).device
    with _gradients(model, target, names, metric) as (values, acts, grads):
        per_layer = []
        for name, act, grad in zip(names, acts, grads, strict=True):
            delta = source_acts[name].to(device).float() - act.detach().float()
            est = delta * grad.float()
            per_layer.append(est.reshape(*est.shape[:2], n_heads, -1).sum((1, 3)).T.cpu())  # [n_heads, n_examples]
    target_m = values.detach().float().cpu()
    return PatchResult(per_example=torch.stack(per_layer) + target_m, source=source_acts["metric"], target=target_m,
                       layers=tuple(layer_list), site="z", kind="head", direction=direction,
                       col_labels=tuple(f"H{h}" for h in range(n_heads)), method="attribution")


def _graddrop(stream: list[torch.Tensor], grads: list[torch.Tensor], deltas: dict[int, torch.Tensor],
              n_layers: int) -> dict[int, torch.Tensor]:
    """GradDrop magnitudes ``[n_examples, pos]`` per stream node ``k``: mean over layers ``l`` of
    ``|delta_k . dM/dstream_k|`` with layer ``l``'s contribution cut from the backward pass.

    Cutting layer ``l`` leaves the gradient of every stream node above it unchanged, gives
    ``stream[l]`` the gradient of ``stream[l + 1]`` (the identity path alone), and gives a node below
    ``l`` that gradient pulled back through the layers in between (one vector-Jacobian product).
    """
    total = {k: torch.zeros_like(d[..., 0]) for k, d in deltas.items()}
    lowest = min(deltas)
    for cut in range(n_layers):
        below = [k for k in deltas if k < cut]
        pulled = torch.autograd.grad(stream[cut], [stream[k] for k in below], grad_outputs=grads[cut + 1],
                                     retain_graph=True, allow_unused=True) if below and cut > lowest else ()
        for k, d in deltas.items():
            if k > cut:
                g = grads[k]
            elif k == cut:
                g = grads[cut + 1]
            else:
                p = pulled[below.index(k)]
                g = torch.zeros_like(d) if p is None else p
            total[k] = total[k] + (d * g.float()).sum(-1).abs()
    return {k: t / n_layers for k, t in total.items()}


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
    from lensteer.core.chat import length_sorted_batches, pad_id_of
    from lensteer.core.vectors import ablate_direction, add_direction

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
