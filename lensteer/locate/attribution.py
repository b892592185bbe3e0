"""Attribution patching (Nanda 2023; AtP*, Kramár et al. 2024): a first-order estimate of every patch at once.

Two forwards and one backward estimate what exact patching measures with one forward per cell:
the effect of patching node n is approximated by (source_n - target_n) . dMetric/dn at the target
run. AtP*'s GradDrop (method="atp*") guards against cancellation through attention saturation.
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch

from lensteer.core.bridge import Bridge
from lensteer.core.forward import last_logits
from lensteer.core.sites import residual_stream_names, resolve_sites
from lensteer.errors import ConfigError
from lensteer.locate.patching_base import (
    Metric,
    PatchDirection,
    PatchingError,
    PatchInputs,
    PatchResult,
    cache_source,
    head_hooks,
    prepare_pair,
    run_roles,
    token_labels,
)

AttributionMethod = Literal["atp", "atp*"]


def attribute_residual(
    model: Bridge,
    clean: PatchInputs,
    corrupted: PatchInputs,
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
        raise ConfigError(
            f"method='atp*' (GradDrop) supports sites 'resid_pre' and 'resid_post', not {site!r}"
        )
    source, target = prepare_pair(model, clean, corrupted, direction)
    sites = resolve_sites(model, layers, site)
    n_layers = int(model.cfg.n_layers)
    if method == "atp":
        names = [s.name for s in sites]
        nodes = list(range(len(sites)))  # index into names
    else:  # the whole residual stream: stream[k] enters layer k, stream[n_layers] is the final one
        names = residual_stream_names(n_layers)
        nodes = [s.layer + (site == "resid_post") for s in sites]
    source_acts = cache_source(
        model, source, [names[i] for i in nodes], run_roles(direction)[0], metric=metric
    )
    device = next(iter(model.parameters())).device
    with _gradients(model, target, names, metric, keep_graph=method == "atp*") as (values, acts, grads):
        deltas = {i: source_acts[names[i]].to(device).float() - acts[i].detach().float() for i in nodes}
        plain = {i: (deltas[i] * grads[i].float()).sum(-1) for i in nodes}  # [n_examples, pos]
        if method == "atp":
            estimates = plain
        else:
            magnitude = _graddrop(acts, grads, deltas, n_layers)
            estimates = {i: plain[i].sign() * magnitude[i] for i in nodes}
    target_m = values.detach().float().cpu()
    per_example = (
        torch.stack([estimates[i].detach().T.cpu() for i in nodes]) + target_m
    )  # estimated patched metric
    return PatchResult(
        per_example=per_example,
        source=source_acts["metric"],
        target=target_m,
        layers=tuple(s.layer for s in sites),
        site=site,
        kind="position",
        direction=direction,
        col_labels=token_labels(model, source[0]),
        method="attribution" if method == "atp" else "attribution (AtP* GradDrop)",
    )


@contextmanager
def _gradients(
    model: Bridge, target: torch.Tensor, names: Sequence[str], metric: Metric, *, keep_graph: bool = False
) -> Iterator[tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]]:
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
            raise PatchingError(
                f"the metric must map [batch, d_vocab] last-position logits to [batch]; got {tuple(values.shape)}"
            )
        acts = [captured[n] for n in names]
        grads = list(torch.autograd.grad(values.sum(), acts, allow_unused=True, retain_graph=keep_graph))
        yield (
            values,
            acts,
            [torch.zeros_like(a) if g is None else g for a, g in zip(acts, grads, strict=True)],
        )


def attribute_heads(
    model: Bridge,
    clean: PatchInputs,
    corrupted: PatchInputs,
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
    source, target = prepare_pair(model, clean, corrupted, direction)
    layer_list, names, n_heads = head_hooks(model, layers)
    source_acts = cache_source(model, source, names, run_roles(direction)[0], metric=metric)
    device = next(iter(model.parameters())).device
    with _gradients(model, target, names, metric) as (values, acts, grads):
        per_layer = []
        for name, act, grad in zip(names, acts, grads, strict=True):
            delta = source_acts[name].to(device).float() - act.detach().float()
            est = delta * grad.float()
            per_layer.append(
                est.reshape(*est.shape[:2], n_heads, -1).sum((1, 3)).T.cpu()
            )  # [n_heads, n_examples]
    target_m = values.detach().float().cpu()
    return PatchResult(
        per_example=torch.stack(per_layer) + target_m,
        source=source_acts["metric"],
        target=target_m,
        layers=tuple(layer_list),
        site="z",
        kind="head",
        direction=direction,
        col_labels=tuple(f"H{h}" for h in range(n_heads)),
        method="attribution",
    )


def _graddrop(
    stream: list[torch.Tensor], grads: list[torch.Tensor], deltas: dict[int, torch.Tensor], n_layers: int
) -> dict[int, torch.Tensor]:
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
        pulled = (
            torch.autograd.grad(
                stream[cut],
                [stream[k] for k in below],
                grad_outputs=grads[cut + 1],
                retain_graph=True,
                allow_unused=True,
            )
            if below and cut > lowest
            else ()
        )
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
