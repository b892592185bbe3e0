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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict, Unpack

import torch
from tqdm.auto import tqdm

from lensteer.core.bridge import Bridge
from lensteer.core.forward import unembed
from lensteer.core.options import settings_from
from lensteer.core.sites import head_hook_name, hook_name, resolve_sites
from lensteer.errors import ConfigError
from lensteer.locate import incremental
from lensteer.locate.patching_base import (
    Metric,
    PatchDirection,
    PatchingError,
    PatchInputs,
    PatchResult,
    cache_source,
    checked_metric,
    evaluate_metric,
    head_hooks,
    prepare_pair,
    run_roles,
    token_labels,
)

Algorithm = Literal["incremental", "full"]
_log = logging.getLogger(__name__)


class PatchOptions(TypedDict, total=False):
    """The keyword options of :func:`patch_residual`, :func:`patch_layers` and :func:`patch_heads`."""

    direction: PatchDirection
    max_rows: int
    progress: bool
    algorithm: Algorithm


@dataclass(frozen=True, kw_only=True)
class PatchSettings:
    """How a patching sweep runs (:class:`PatchOptions`, with defaults; see :func:`patch_residual`)."""

    direction: PatchDirection = "denoising"
    max_rows: int = 256
    progress: bool = False
    algorithm: Algorithm = "incremental"


@dataclass(frozen=True, kw_only=True)
class _Grid:
    """The cells of a sweep: ``n_cols`` per hooked layer, of one ``kind`` (position, layer or head)."""

    layers: list[int]
    names: list[str]
    site: str
    kind: str
    n_cols: int


@dataclass(frozen=True)
class _Cell:
    hook: str
    pos: int | None
    head: int | None


def _sweep(
    model: Bridge,
    target: torch.Tensor,
    source_acts: dict[str, torch.Tensor],
    cells: Sequence[_Cell],
    metric: Metric,
    max_rows: int,
    progress: bool,
) -> torch.Tensor:
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
            values = evaluate_metric(model, batch, metric)
        out[chunk[0] : chunk[-1] + 1] = values.view(len(chunk), n_ex)
    return out


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


def _layer_effect(
    tgt: incremental.Replayer, src: incremental.Replayer, layer: int, site: str, heads: bool
) -> _Effect:
    if not heads and site in ("resid_pre", "resid_post"):
        start = layer if site == "resid_pre" else layer + 1
        new = src.resid[start]
        return _Effect(start, new, (new != tgt.resid[start]).any(-1))
    # a site inside block ``layer``: every position's block output depends on the site only at that
    # position (attention reads keys/values from resid_pre), so patching all positions at once gives
    # each single-position patch's output at its own position, and one block call serves all cells.
    name = head_hook_name(layer) if heads else hook_name(layer, site)
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


def _incremental(
    model: Bridge,
    source: torch.Tensor,
    target: torch.Tensor,
    metric: Metric,
    grid: _Grid,
    settings: PatchSettings,
) -> torch.Tensor | None:
    """Metric ``[n_cells, n_examples]`` recomputing only what each patch can change (see :mod:`.incremental`).

    Cells are (layer, position), (layer,) or (layer, head), layer-major. None if the model's blocks
    cannot be replayed; the caller then runs one full forward per cell.
    """
    heads = grid.kind == "head"
    if heads:
        names = [head_hook_name(la) for la in grid.layers]
    else:
        names = (
            []
            if grid.site in ("resid_pre", "resid_post")
            else [hook_name(la, grid.site) for la in grid.layers]
        )
    replayers = _replayers(model, source, target, names, settings.direction)
    if replayers is None:
        return None
    src, tgt = replayers
    n_ex, n_pos = target.shape
    cells: list[list[incremental.Row]] = []
    for layer in grid.layers:
        eff = _layer_effect(tgt, src, layer, grid.site, heads)
        for v in range(eff.new.shape[0] // n_ex):
            part = _Effect(
                eff.start, eff.new[v * n_ex : (v + 1) * n_ex], eff.differs[v * n_ex : (v + 1) * n_ex]
            )
            cells.extend(_position_rows(part, n_pos) if grid.kind == "position" else [_whole_rows(part)])
    flat = [r for cell in cells for r in cell]
    n_groups = len({r.pos if tgt.use_prefix else 0 for r in flat if r.start < tgt.n_layers})
    with tqdm(total=n_groups, desc="patch", disable=not settings.progress, unit="position") as bar:
        computed = tgt.run(flat, max_rows=settings.max_rows, on_group=bar.update)
    finals = tgt.final.repeat(len(cells), 1, 1)  # unpatched rows are the target run itself
    i = 0
    for c, cell in enumerate(cells):
        for r in cell:
            finals[c, r.example] = computed[i]
            i += 1
    out = torch.empty(len(cells), n_ex)
    per = max(1, settings.max_rows // n_ex)
    with torch.inference_mode():
        for lo in range(0, len(cells), per):
            chunk = finals[lo : lo + per]
            values = checked_metric(
                metric(unembed(model, chunk.reshape(-1, chunk.shape[-1]))), chunk.shape[0] * n_ex
            )
            out[lo : lo + chunk.shape[0]] = values.view(chunk.shape[0], n_ex)
    return out


def _replayers(
    model: Bridge, source: torch.Tensor, target: torch.Tensor, names: list[str], direction: str
) -> "tuple[incremental.Replayer, incremental.Replayer] | None":
    """The (source, target) replayers capturing ``names``; None if the model's blocks cannot be replayed."""
    src_role, tgt_role = run_roles(direction)
    try:
        tgt = incremental.Replayer(model, target, capture=names)
        try:
            src = incremental.Replayer(model, source, capture=names, like=tgt)
        except incremental.NonFinite as err:
            raise PatchingError(f"the {src_role} run has {err}; patching needs finite activations") from err
    except incremental.NonFinite as err:
        raise PatchingError(f"the {tgt_role} run has {err}; patching needs finite activations") from err
    except incremental.Unsupported as err:
        _log.info(
            "incremental patching is unavailable for this model (%s); running one forward per cell", err
        )
        return None
    return src, tgt


def _position_rows(eff: "_Effect", n_pos: int) -> list[list[incremental.Row]]:
    """One cell per position: each example whose activation there differs, recomputed from there."""
    n_ex = eff.new.shape[0]
    return [
        [incremental.Row(eff.start, q, e, eff.new[e, q : q + 1]) for e in range(n_ex) if eff.differs[e, q]]
        for q in range(n_pos)
    ]


def _whole_rows(eff: "_Effect") -> list[incremental.Row]:
    """One cell, every position patched: each example recomputed from the first position that differs."""
    row = []
    for e in range(eff.new.shape[0]):
        changed = eff.differs[e].nonzero()
        if len(changed):
            q = int(changed[0])
            row.append(incremental.Row(eff.start, q, e, eff.new[e, q:]))
    return row


def _patched_values(
    model: Bridge,
    source: torch.Tensor,
    target: torch.Tensor,
    metric: Metric,
    grid: _Grid,
    settings: PatchSettings,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Metric of every patched cell ``[n_cells, n_examples]`` (incremental when the model allows, else one
    forward per cell), and the unpatched source and target metrics. Cells are layer-major; ``n_cols``
    per layer: positions (``kind="position"``), heads (``"head"``) or one whole-layer column (``"layer"``)."""
    _check_algorithm(settings.algorithm)
    values = None
    if settings.algorithm == "incremental":
        values = _incremental(model, source, target, metric, grid, settings)
    if values is None:
        acts = cache_source(model, source, grid.names, run_roles(settings.direction)[0])
        cells = [
            _Cell(name, col if grid.kind == "position" else None, col if grid.kind == "head" else None)
            for name in grid.names
            for col in range(grid.n_cols)
        ]
        values = _sweep(model, target, acts, cells, metric, settings.max_rows, settings.progress)
    with torch.inference_mode():
        return values, evaluate_metric(model, source, metric), evaluate_metric(model, target, metric)


def patch_residual(
    model: Bridge,
    clean: PatchInputs,
    corrupted: PatchInputs,
    metric: Metric,
    *,
    site: str = "resid_pre",
    layers: Sequence[int] | None = None,
    **options: Unpack[PatchOptions],
) -> PatchResult:
    """Patch one site at every (layer, position); the metric per cell and example.

    Args:
        model: A ``TransformerBridge`` in eval mode.
        clean: Prompts (or ``[n_examples, pos]`` tokens) of one shared token length.
        corrupted: Their pairs, of the same token length.
        metric: Last-position logits ``[batch, d_vocab]`` -> ``[batch]`` (see :func:`logit_diff_metric`).
        site: ``"resid_pre"``, ``"resid_mid"``, ``"resid_post"``, ``"attn_out"`` or ``"mlp_out"``.
        layers: Layers to patch (default: all).
        **options: Keyword options (:class:`PatchOptions`, held as a :class:`PatchSettings`):

            - ``direction``: ``"denoising"`` (default; clean into corrupted) or ``"noising"``
              (corrupted into clean).
            - ``max_rows`` (256): batch rows per forward (cells x examples); lower it to save memory.
            - ``progress`` (``False``): show a progress bar.
            - ``algorithm``: ``"incremental"`` (default) replays the target block by block and
              recomputes only the layers at and above a patch and the positions at and after it,
              reusing the target's keys/values before it; ``"full"`` runs a whole forward per cell,
              as TransformerLens does (the reference; also used automatically when a model's blocks
              cannot be replayed). Both give the same numbers.

    Raises:
        ConfigError: An unknown option, or a ``direction`` / ``algorithm`` not listed above.
        PatchingError: Different shapes or token lengths, a metric of the wrong shape, or NaN/Inf
            activations or metric values.
    """
    settings = settings_from(PatchSettings, options, what="patching")
    source, target = prepare_pair(model, clean, corrupted, settings.direction)
    sites = resolve_sites(model, layers, site)
    n_pos = target.shape[1]
    grid = _Grid(
        layers=[s.layer for s in sites],
        names=[s.name for s in sites],
        site=site,
        kind="position",
        n_cols=n_pos,
    )
    values, src_m, tgt_m = _patched_values(model, source, target, metric, grid, settings)
    return PatchResult(
        per_example=values.view(len(sites), n_pos, -1),
        source=src_m,
        target=tgt_m,
        layers=tuple(s.layer for s in sites),
        site=site,
        kind="position",
        direction=settings.direction,
        col_labels=token_labels(model, source[0]),
    )


def patch_layers(
    model: Bridge,
    clean: Any,
    corrupted: Any,
    metric: Metric,
    *,
    site: str = "mlp_out",
    layers: Sequence[int] | None = None,
    **options: Unpack[PatchOptions],
) -> PatchResult:
    """Patch a whole site (every position at once) per layer, e.g. each MLP's or attention's output.

    Arguments as in :func:`patch_residual`; ``"incremental"`` starts each recomputation at the
    patched layer and at the first position where the patched activation differs from the target's.
    """
    settings = settings_from(PatchSettings, options, what="patching")
    source, target = prepare_pair(model, clean, corrupted, settings.direction)
    sites = resolve_sites(model, layers, site)
    grid = _Grid(
        layers=[s.layer for s in sites], names=[s.name for s in sites], site=site, kind="layer", n_cols=1
    )
    values, src_m, tgt_m = _patched_values(model, source, target, metric, grid, settings)
    return PatchResult(
        per_example=values.view(len(sites), 1, -1),
        source=src_m,
        target=tgt_m,
        layers=tuple(s.layer for s in sites),
        site=site,
        kind="layer",
        direction=settings.direction,
        col_labels=("all positions",),
    )


def patch_heads(
    model: Bridge,
    clean: Any,
    corrupted: Any,
    metric: Metric,
    *,
    layers: Sequence[int] | None = None,
    **options: Unpack[PatchOptions],
) -> PatchResult:
    """Patch each attention head's output (``attn.hook_z``, every position) per (layer, head).

    Arguments as in :func:`patch_residual`; ``"incremental"`` runs each layer once with every head
    patched in its own batch rows, then recomputes only the layers above it.
    """
    settings = settings_from(PatchSettings, options, what="patching")
    source, target = prepare_pair(model, clean, corrupted, settings.direction)
    layer_list, names, n_heads = head_hooks(model, layers)
    grid = _Grid(layers=layer_list, names=names, site="z", kind="head", n_cols=n_heads)
    values, src_m, tgt_m = _patched_values(model, source, target, metric, grid, settings)
    return PatchResult(
        per_example=values.view(len(layer_list), n_heads, -1),
        source=src_m,
        target=tgt_m,
        layers=tuple(layer_list),
        site="z",
        kind="head",
        direction=settings.direction,
        col_labels=tuple(f"H{h}" for h in range(n_heads)),
    )
