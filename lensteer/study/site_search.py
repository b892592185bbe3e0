"""The ``lensteer locate`` and ``lensteer probe`` workflows: probing, patching and a recommended site
for each bundled threat model, as result objects (the command line only prints and saves them).

For each threat model: the probing study of its contrast (prompt side for refusal, response side
for compassion and honesty); then, on equal-length clean/corrupted pairs, attribution and exact
patching of the residual stream and of attention heads; then :func:`recommend_site` with its reasons.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypedDict, Unpack

from lensteer import threats
from lensteer.core.bridge import Bridge
from lensteer.core.datasets import ContrastSet
from lensteer.core.options import settings_from
from lensteer.errors import ConfigError, DataError
from lensteer.locate.attribution import attribute_heads, attribute_residual
from lensteer.locate.pairs import PairDesign, PatchingPairs, patching_pairs
from lensteer.locate.patching import patch_heads, patch_residual
from lensteer.locate.patching_base import PatchingError, PatchResult
from lensteer.locate.probing import ProbingReport, probe_by_layer
from lensteer.study.recommend import SiteRecommendation, recommend_site


def threat_model_datasets(
    names: Sequence[str] | None = None,
    *,
    smoke: bool = False,
) -> Iterator[tuple[str, Literal["prompt", "response"], ContrastSet]]:
    """``(name, contrast side, dataset)`` for the selected threat models (the bundled ones by default; 40
    rows with ``smoke``). The side is the threat model's ``contrast_side`` (refusal: the request; the
    others: the reply)."""
    chosen = [threats.get(name) for name in names or threats.BUNDLED]  # an unknown name fails before any work
    for tm in chosen:
        dataset = tm.load()
        yield tm.name, tm.contrast_side, dataset.stratified(40) if smoke else dataset


@dataclass(frozen=True, kw_only=True, eq=False)
class SiteSearch:
    """Everything ``lensteer locate`` found for one threat model.

    ``patching`` and the other patching fields are ``None`` when the dataset has no equal-length
    pairs or its clean and corrupted runs give the same metric; ``notes`` says why.
    """

    name: str
    probing: ProbingReport
    pairs: PatchingPairs | None = None
    patching: PatchResult | None = None
    heads: PatchResult | None = None
    attribution: PatchResult | None = None
    head_attribution: PatchResult | None = None
    recommendation: SiteRecommendation | None = None
    notes: tuple[str, ...] = ()

    def _patched(self) -> tuple[PatchingPairs, PatchResult, PatchResult, PatchResult, PatchResult] | None:
        parts = (self.pairs, self.patching, self.heads, self.attribution, self.head_attribution)
        if any(p is None for p in parts):
            return None
        return parts  # type: ignore[return-value]  # all present, checked above

    def patching_summary(self) -> str | None:
        """One line: pair count and design, clean and corrupted metric, top cells, attribution vs exact."""
        if (found := self._patched()) is None:
            return None
        pairs, exact, heads, approx, approx_heads = found
        return (
            f"{self.name} patching ({len(pairs)} pairs; {pairs.design}): clean metric "
            f"{float(exact.source.mean()):.2f}, corrupted {float(exact.target.mean()):.2f}; top cells "
            f"{exact.top_cells(3)}; attribution vs exact r = {approx.correlation(exact):.2f} "
            f"(residual cells), {approx_heads.correlation(heads):.2f} (heads)"
        )

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"probing": self.probing.to_dict()}
        if (found := self._patched()) is not None:
            pairs, exact, heads, approx, approx_heads = found
            entry["patching"] = {
                "pairs": pairs.to_dict(),
                "resid": exact.to_dict(),
                "heads": heads.to_dict(),
                "attribution_correlation": approx.correlation(exact),
                "head_attribution_correlation": approx_heads.correlation(heads),
            }
        entry["recommendation"] = (
            self.recommendation.to_dict()
            if self.recommendation is not None
            else {"error": "; ".join(self.notes)}
        )
        return entry


class SearchOptions(TypedDict, total=False):
    """The keyword options of :func:`search_site` (see :class:`SearchSettings`)."""

    layers: Sequence[int] | None
    n_pairs: int
    batch_size: int
    progress: bool
    design: PairDesign | None


@dataclass(frozen=True, kw_only=True)
class SearchSettings:
    """:class:`SearchOptions` with their defaults."""

    layers: Sequence[int] | None = None  # the layers to probe and patch (None: every layer)
    n_pairs: int = 8  # patching pairs
    batch_size: int = 16
    progress: bool = False
    design: PairDesign | None = None  # the patching pairs' design (None: the threat model's)


def search_site(
    model: Bridge,
    name: str,
    dataset: ContrastSet,
    contrast: Literal["prompt", "response"],
    **options: Unpack[SearchOptions],
) -> SiteSearch:
    """Probe, patch (exact and attribution, residual and heads) and recommend a site for one threat model.

    The patching pairs follow ``design``, by default the registered threat model ``name``'s (any other
    name: prompt vs ``paired_prompt``). ``**options``: ``layers`` (every layer), ``n_pairs`` (8),
    ``batch_size`` (16), ``progress`` (``False``), ``design`` (:class:`SearchSettings`)."""
    settings = settings_from(SearchSettings, options, what="search_site")
    if settings.design is None and name in threats.names():
        settings = replace(settings, design=threats.get(name).pair_design)
    report = probe_by_layer(
        model,
        dataset,
        contrast=contrast,
        layers=settings.layers,
        batch_size=settings.batch_size,
        progress=settings.progress,
    )
    found, notes = _patching(model, dataset, settings)
    try:
        recommendation = recommend_site(report, found.get("patching"))
    except (ConfigError, PatchingError) as err:
        recommendation = None
        notes.append(f"no recommendation: {err}")
    return SiteSearch(name=name, probing=report, recommendation=recommendation, notes=tuple(notes), **found)


def _patching(
    model: Bridge, dataset: ContrastSet, settings: SearchSettings
) -> tuple[dict[str, Any], list[str]]:
    """The patching pairs with attribution and exact patching of the residual stream and the heads
    (:class:`SiteSearch`'s fields of those names; empty where it could not be done, and why in the notes)."""
    layers, progress = settings.layers, settings.progress
    try:
        pairs = patching_pairs(model, dataset, n=settings.n_pairs, design=settings.design)
    except DataError as err:
        return {}, [f"patching skipped: {err}"]
    clean, corrupted, metric = list(pairs.clean), list(pairs.corrupted), pairs.metric()
    patching = patch_residual(model, clean, corrupted, metric, layers=layers, progress=progress)
    try:  # normalising fails when clean and corrupted give the same metric
        patching.normalized()
    except PatchingError as err:
        return {}, [f"patching not reported: {err}"]
    return {
        "pairs": pairs,
        "attribution": attribute_residual(model, clean, corrupted, metric, layers=layers),
        "patching": patching,
        "heads": patch_heads(model, clean, corrupted, metric, layers=layers, progress=progress),
        "head_attribution": attribute_heads(model, clean, corrupted, metric, layers=layers),
    }, []
