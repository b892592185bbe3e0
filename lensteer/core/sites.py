"""Hook sites: (layer, kind) -> TransformerLens hook name, validated against the model.

The only module that spells TransformerLens hook names (a test checks it): every other module asks
for them here, so a renamed hook point is a one-line fix.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from lensteer.core.bridge import Bridge
from lensteer.errors import HookSiteError

SiteKind = Literal["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"]
SITE_KINDS: tuple[str, ...] = get_args(SiteKind)


@dataclass(frozen=True, kw_only=True)
class HookSite:
    """One residual-stream-shaped hook point: ``blocks.{layer}.hook_{kind}``."""

    layer: int
    kind: str = "resid_post"

    @property
    def name(self) -> str:
        return hook_name(self.layer, self.kind)


UNEMBED_INPUT = "unembed.hook_in"  # the final-norm output, just before W_U


def hook_name(layer: int, kind: str) -> str:
    """``blocks.{layer}.hook_{kind}`` for a residual-stream-shaped site (no validation)."""
    return f"blocks.{layer}.hook_{kind}"


def head_hook_name(layer: int) -> str:
    """The per-head output (``attn.hook_z``: ``[batch, pos, head, d_head]``, before ``W_O``) of a layer."""
    return f"blocks.{layer}.attn.hook_z"


def residual_stream_names(n_layers: int) -> list[str]:
    """Every residual-stream point in order: each layer's ``resid_pre`` and the last layer's ``resid_post``."""
    return [hook_name(k, "resid_pre") for k in range(n_layers)] + [hook_name(n_layers - 1, "resid_post")]


def layer_of(name: str) -> int:
    """The layer index of a ``blocks.{layer}....`` hook name."""
    return int(name.split(".")[1])


def site_of(name: str) -> str:
    """The site kind of a ``blocks.{layer}.hook_{kind}`` name (``"resid_pre"``, ...; e.g. ``"attn.hook_z"``
    for other names below a block)."""
    rest = name.split(".", 2)[2]
    return rest.removeprefix("hook_")


def validate_site_kind(kind: str) -> str:
    """Return ``kind`` if it is a supported site, else raise :class:`HookSiteError`."""
    if kind not in SITE_KINDS:
        raise HookSiteError(f"unknown hook site {kind!r}; allowed sites: {', '.join(SITE_KINDS)}")
    return kind


def normalize_layers(model: Bridge, layers: int | Iterable[int] | None) -> list[int]:
    """Turn ``None`` (all layers), an int or a list of ints into non-negative layer indices, in the order given.

    Negative indices count from the end, as in Python. Duplicates are an error.
    """
    n_layers = int(model.cfg.n_layers)
    if layers is None:
        return list(range(n_layers))
    raw: Sequence[int] = [layers] if isinstance(layers, int) else list(layers)
    if not raw:
        raise HookSiteError(
            f"layers is empty; pass None for all {n_layers} layers or indices 0..{n_layers - 1}"
        )
    out = []
    for layer in raw:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise HookSiteError(
                f"layer {layer!r} is not an int; valid layers are 0..{n_layers - 1} or -{n_layers}..-1"
            )
        if not -n_layers <= layer < n_layers:
            raise HookSiteError(
                f"layer {layer} is out of range for this model (n_layers={n_layers}); "
                f"valid layers are 0..{n_layers - 1} or -{n_layers}..-1"
            )
        out.append(layer % n_layers)
    if len(set(out)) != len(out):
        raise HookSiteError(f"layers {list(raw)} name the same layer twice")
    return out


def resolve_sites(model: Bridge, layers: int | Iterable[int] | None, kind: str) -> list[HookSite]:
    """Validate ``kind`` and ``layers`` against ``model`` and return the hook sites, in the order given."""
    validate_site_kind(kind)
    sites = [HookSite(layer=layer, kind=kind) for layer in normalize_layers(model, layers)]
    for site in sites:
        if site.name not in model.hook_dict:
            raise HookSiteError(
                f"{site.name!r} is not a hook point of this model; allowed sites: {', '.join(SITE_KINDS)}"
            )
    return sites
