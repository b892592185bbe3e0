"""The ``lensteer locate`` and ``lensteer probe`` workflows: probing, patching and a recommended site
for each bundled threat model, as result objects (the command line only prints and saves them).

For each threat model: the probing study of its contrast (prompt side for refusal, response side
for compassion and honesty); then, on equal-length clean/corrupted pairs, attribution and exact
patching of the residual stream and of attention heads; then :func:`recommend_site` with its reasons.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lensteer.core.datasets import THREAT_MODELS, ContrastSet, load_dataset
from lensteer.errors import ConfigError, DataError
from lensteer.locate.attribution import attribute_heads, attribute_residual
from lensteer.locate.pairs import PatchingPairs, patching_pairs
from lensteer.locate.patching import patch_heads, patch_residual
from lensteer.locate.patching_base import PatchingError, PatchResult
from lensteer.locate.probing import ProbingReport, probe_by_layer
from lensteer.study.recommend import SiteRecommendation, recommend_site

# Which side of each threat model's contrast carries it: refusal is in the request, the others in the reply.
CONTRAST_SIDE: dict[str, Literal["prompt", "response"]] = {"refusal": "prompt", "compassion": "response",
                                                             "honesty": "response"}
assert tuple(CONTRAST_SIDE) == THREAT_MODELS  # one list of threat models: core.datasets


def threat_model_datasets(names: Sequence[str] | None = None, *, smoke: bool = False,
                          ) -> Iterator[tuple[str, Literal["prompt", "response"], ContrastSet]]:
    """``(name, contrast side, dataset)`` for the selected threat models (all by default; 40 rows with ``smoke``)."""
    for name in names or THREAT_MODELS:
        if name not in CONTRAST_SIDE:
            raise ConfigError(f"unknown threat model {name!r}; allowed: {list(THREAT_MODELS)}")
        dataset = load_dataset(name)
        yield name, CONTRAST_SIDE[name], dataset.stratified(40) if smoke else dataset


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
        return (f"{self.name} patching ({len(pairs)} pairs; {pairs.design}): clean metric "
                f"{float(exact.source.mean()):.2f}, corrupted {float(exact.target.mean()):.2f}; top cells "
                f"{exact.top_cells(3)}; attribution vs exact r = {approx.correlation(exact):.2f} "
                f"(residual cells), {approx_heads.correlation(heads):.2f} (heads)")

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"probing": self.probing.to_dict()}
        if (found := self._patched()) is not None:
            pairs, exact, heads, approx, approx_heads = found
            entry["patching"] = {"pairs": pairs.to_dict(), "resid": exact.to_dict(), "heads": heads.to_dict(),
                                 "attribution_correlation": approx.correlation(exact),
                                 "head_attribution_correlation": approx_heads.correlation(heads)}
        entry["recommendation"] = (self.recommendation.to_dict() if self.recommendation is not None
                                   else {"error": "; ".join(self.notes)})
        return entry


def search_site(model: Any, name: str, dataset: ContrastSet, contrast: Literal["prompt", "response"], *,
                layers: Sequence[int] | None = None, n_pairs: int = 8, batch_size: int = 16,
                progress: bool = False) -> SiteSearch:
    """Probe, patch (exact and attribution, residual and heads) and recommend a site for one threat model."""
    report = probe_by_layer(model, dataset, contrast=contrast, layers=layers, batch_size=batch_size, progress=progress)
    notes: list[str] = []
    found: dict[str, Any] = {}
    try:
        pairs = patching_pairs(model, dataset, n=n_pairs)
    except DataError as err:
        pairs = None
        notes.append(f"patching skipped: {err}")
    if pairs is not None:
        clean, corrupted, metric = list(pairs.clean), list(pairs.corrupted), pairs.metric()
        found = {"pairs": pairs,
                 "attribution": attribute_residual(model, clean, corrupted, metric, layers=layers),
                 "patching": patch_residual(model, clean, corrupted, metric, layers=layers, progress=progress),
                 "heads": patch_heads(model, clean, corrupted, metric, layers=layers, progress=progress),
                 "head_attribution": attribute_heads(model, clean, corrupted, metric, layers=layers)}
        try:  # normalising fails when clean and corrupted give the same metric
            found["patching"].normalized()
        except PatchingError as err:
            notes.append(f"patching not reported: {err}")
            found = {}
    try:
        recommendation = recommend_site(report, found.get("patching"))
    except (ConfigError, PatchingError) as err:
        recommendation = None
        notes.append(f"no recommendation: {err}")
    return SiteSearch(name=name, probing=report, recommendation=recommendation, notes=tuple(notes), **found)
