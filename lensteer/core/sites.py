"""Hook sites: (layer, kind) -> TransformerLens hook name, validated against the model.

Only this module and :mod:`lensteer.core.models` know TransformerLens hook-name spelling.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

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
        return f"blocks.{self.layer}.hook_{self.kind}"


def validate_site_kind(kind: str) -> str:
    """Return ``kind`` if it is a supported site, else raise :class:`HookSiteError`."""
    if kind not in SITE_KINDS:
        raise HookSiteError(f"unknown hook site {kind!r}; allowed sites: {', '.join(SITE_KINDS)}")
    return kind


def normalize_layers(model: Any, layers: int | Iterable[int] | None) -> list[int]:
    """Turn ``None`` (all layers), an int or a list of ints into non-negative layer indices, in the order given.

    Negative indices count from the end, as in Python. Duplicates are an error.
    """
    n_layers = int(model.cfg.n_layers)
    if layers is None:
        return list(range(n_layers))
    raw: Sequence[int] = [layers] if isinstance(layers, int) else list(layers)
    if not raw:
        raise HookSiteError(f"layers is empty; pass None for all {n_layers} layers or indices 0..{n_layers - 1}")
    out = []
    for layer in raw:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise HookSiteError(f"layer {layer!r} is not an int; valid layers are 0..{n_layers - 1} or -{n_layers}..-1")
        if not -n_layers <= layer < n_layers:
            raise HookSiteError(
                f"layer {layer} is out of range for this model (n_layers={n_layers}); "
                f"valid layers are 0..{n_layers - 1} or -{n_layers}..-1"
            )
        out.append(layer % n_layers)
    if len(set(out)) != len(out):
        raise HookSiteError(f"layers {list(raw)} name the same layer twice")
    return out


def resolve_sites(model: Any, layers: int | Iterable[int] | None, kind: str) -> list[HookSite]:
    """Validate ``kind`` and ``layers`` against ``model`` and return the hook sites, in the order given."""
    validate_site_kind(kind)
    sites = [HookSite(layer=layer, kind=kind) for layer in normalize_layers(model, layers)]
    for site in sites:
        if site.name not in model.hook_dict:
            raise HookSiteError(f"{site.name!r} is not a hook point of this model; allowed sites: {', '.join(SITE_KINDS)}")
    return sites
