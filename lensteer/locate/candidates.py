"""Candidate steering directions over layers x positions, from probing and from patching.

Three sources, each a unit direction from misaligned to aligned (the package's sign convention):

* ``"prompt_contrast"``: the difference of means between prompts that elicit the aligned behaviour and
  prompts that elicit the misaligned one (harmful minus harmless twins for refusal; the same question under
  an aligned minus a misaligning context), at *each* post-instruction template token, as Arditi et al.
  (2024) do: the model has read the request there but not yet answered;
* ``"response_mean"``: the difference of means of the mean activation over the aligned vs the misaligned
  written reply (the persona-vector recipe, Chen et al. 2025), or another read position the caller names;
* ``"probe"``: the unit normal of a logistic probe fitted on the same activations as ``response_mean``.

Candidate layers are a stride over the depth plus the layers where the package's own exact or attribution
patching of the threat model's patching pairs finds the largest effect; those are marked ``from_patching``,
so causal evidence can break near-ties when a candidate is chosen (:mod:`lensteer.study.selection`).
"""

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict, Unpack, get_args

import torch

from lensteer.core.activations import collect_activations
from lensteer.core.bridge import Bridge
from lensteer.core.chat import ChatPrompt
from lensteer.core.options import settings_from
from lensteer.errors import ConfigError, DataError
from lensteer.locate.attribution import attribute_residual
from lensteer.locate.directions import Direction, diff_of_means, fit_probe
from lensteer.locate.pairs import PatchingPairs
from lensteer.locate.patching import patch_residual
from lensteer.locate.patching_base import PatchResult

Source = Literal["prompt_contrast", "response_mean", "probe"]
SOURCES: tuple[str, ...] = get_args(Source)
Contrast = tuple[Sequence[ChatPrompt], Sequence[ChatPrompt]]  # (aligned-eliciting, misaligned-eliciting)


@dataclass(frozen=True, kw_only=True, eq=False)
class Candidate:
    """One candidate direction: where it was read, how, and whether patching put its layer on the list.

    Attributes:
        source: ``"prompt_contrast"``, ``"response_mean"`` or ``"probe"``.
        layer: The layer it was read at (its :attr:`direction`'s layer).
        position: Where it was read: ``"post_instruction[-k]"`` (the k-th template token from the end of
            the prompt), ``"response_mean"``, ``"last"``.
        direction: The unit direction (misaligned -> aligned).
        from_patching: The layer is among the top layers of a patching result.
    """

    source: str
    layer: int
    position: str
    direction: Direction
    from_patching: bool = False

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"candidate source {self.source!r} is not one of {SOURCES}")
        if self.direction.layer != self.layer:
            raise ConfigError(
                f"candidate layer {self.layer} differs from its direction's layer {self.direction.layer}"
            )

    @property
    def label(self) -> str:
        return f"{self.source}@L{self.layer}:{self.position}"


def patching_scores(result: PatchResult, columns: Sequence[int] | None = None) -> dict[int, float]:
    """Per layer, the largest normalised patching effect over ``columns`` (default: every position).

    With residual patching of paired prompts, every early layer restores the clean run at the tokens
    where the prompts differ; pass the post-instruction columns (e.g. ``[-2, -1]``) to ask instead where
    the behaviour has reached the positions the model decides at.
    """
    if result.kind != "position":
        raise ConfigError(f"patching_scores needs residual patching by position, got kind={result.kind!r}")
    norm = result.normalized()
    if columns is not None:
        n = norm.shape[1]
        bad = [c for c in columns if not -n <= c < n]
        if not columns or bad:
            raise ConfigError(f"columns must be non-empty positions in -{n}..{n - 1}, got {list(columns)}")
        norm = norm[:, [c % n for c in columns]]
    return {layer: float(norm[i].max()) for i, layer in enumerate(result.layers)}


def top_patching_layers(
    result: PatchResult, k: int = 3, *, columns: Sequence[int] | None = None, below: int | None = None
) -> tuple[int, ...]:
    """The ``k`` layers (below layer ``below``, if given) with the largest :func:`patching_scores`, earlier
    layers first among equal scores; returned in layer order."""
    if k < 0:
        raise ConfigError(f"k must be >= 0, got {k}")
    scores = {la: s for la, s in patching_scores(result, columns).items() if below is None or la < below}
    ranked = sorted(scores, key=lambda la: (-round(scores[la], 6), la))
    return tuple(sorted(ranked[:k]))


def patch_pairs(
    model: Bridge,
    pairs: PatchingPairs,
    *,
    method: str = "attribution",
    site: str = "resid_post",
    layers: Sequence[int] | None = None,
) -> PatchResult:
    """Residual patching (denoising: clean into corrupted) of a threat model's patching pairs at every
    (layer, position), by attribution (one backward, a first-order estimate) or exactly."""
    if method == "attribution":
        return attribute_residual(
            model, pairs.clean, pairs.corrupted, pairs.metric(), site=site, layers=layers
        )
    if method == "exact":
        return patch_residual(model, pairs.clean, pairs.corrupted, pairs.metric(), site=site, layers=layers)
    raise ConfigError(f"method must be 'attribution' or 'exact', got {method!r}")


def candidate_layers(
    n_layers: int,
    *,
    stride: int = 2,
    start: int = 1,
    skip_last_fraction: float = 0.2,
    patching: PatchResult | None = None,
    top_k: int = 3,
    columns: Sequence[int] | None = None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Layers to read candidates at: ``start, start + stride, ...`` below the last ``skip_last_fraction`` of
    the depth, plus the ``top_k`` layers of ``patching`` below the same cutoff.

    Returns:
        ``(layers, from_patching)``: all candidate layers in order, and those the patching contributed.
    """
    if n_layers < 1 or stride < 1 or not 0 <= start < n_layers:
        raise ConfigError(
            f"need n_layers >= 1, stride >= 1 and 0 <= start < n_layers; got {n_layers}, {stride}, {start}"
        )
    if not 0 <= skip_last_fraction < 1:
        raise ConfigError(f"skip_last_fraction must be in [0, 1), got {skip_last_fraction}")
    cutoff = max(start + 1, round(n_layers * (1 - skip_last_fraction)))
    strided = set(range(start, cutoff, stride))
    patched = (
        top_patching_layers(patching, top_k, columns=columns, below=cutoff) if patching is not None else ()
    )
    return tuple(sorted(strided | set(patched))), patched


def _check_contrast(name: str, contrast: Contrast) -> None:
    if len(contrast) != 2 or any(isinstance(side, str) or len(side) == 0 for side in contrast):
        raise DataError(f"{name} must be (aligned prompts, misaligned prompts), both non-empty lists")


class CandidateOptions(TypedDict, total=False):
    """The keyword options of :func:`build_candidates` (how the activations are read)."""

    response_position: str
    last_k_positions: int | None
    site: str
    batch_size: int


@dataclass(frozen=True, kw_only=True)
class CandidateReading:
    """How :func:`build_candidates` reads the contrasts (:class:`CandidateOptions`, with defaults).

    Attributes:
        response_position: Where the response contrast is read (``"response_mean"``, or ``"last"`` for a
            decision contrast whose prompts end in a shared answer stem).
        last_k_positions: Keep only the last ``k`` post-instruction positions (default: all of them).
        site: The hook site read (and later steered).
        batch_size: Prompts per forward.
    """

    response_position: str = "response_mean"
    last_k_positions: int | None = None
    site: str = "resid_post"
    batch_size: int = 16


def build_candidates(
    model: Bridge,
    layers: Sequence[int],
    *,
    prompt_contrast: Contrast | None = None,
    response_contrast: Contrast | None = None,
    from_patching: Collection[int] = (),
    **options: Unpack[CandidateOptions],
) -> tuple[Candidate, ...]:
    """Candidate directions at ``layers``: the prompt contrast at each post-instruction position, the
    response contrast's difference of means, and a probe on the response contrast.

    Args:
        layers: Where to read (e.g. from :func:`candidate_layers`).
        prompt_contrast: ``(aligned-eliciting, misaligned-eliciting)`` prompts (no responses). Every prompt
            must have the same number of post-instruction tokens (one chat template does).
        response_contrast: ``(aligned, misaligned)`` conversations ending in the two written replies.
        from_patching: Layers the patching evidence put on the list.
        **options: How to read (:class:`CandidateReading`): ``response_position`` (``"response_mean"``),
            ``last_k_positions`` (``None``), ``site`` (``"resid_post"``), ``batch_size`` (16).

    Returns:
        Candidates ordered by layer, then source, then position.
    """
    read = settings_from(CandidateReading, options, what="build_candidates")
    if prompt_contrast is None and response_contrast is None:
        raise ConfigError("build_candidates needs a prompt_contrast, a response_contrast or both")
    if not layers:
        raise ConfigError("build_candidates needs at least one layer")
    if read.last_k_positions is not None and read.last_k_positions < 1:
        raise ConfigError(f"last_k_positions must be >= 1 or None, got {read.last_k_positions}")
    layer_list = list(dict.fromkeys(layers))
    patched = set(from_patching)
    out: list[Candidate] = []
    if prompt_contrast is not None:
        _check_contrast("prompt_contrast", prompt_contrast)
        out += _prompt_candidates(model, prompt_contrast, layer_list, patched, read)
    if response_contrast is not None:
        _check_contrast("response_contrast", response_contrast)
        out += _response_candidates(model, response_contrast, layer_list, patched, read)
    order = {s: i for i, s in enumerate(SOURCES)}
    return tuple(sorted(out, key=lambda c: (c.layer, order[c.source])))


def _prompt_candidates(
    model: Bridge, contrast: Contrast, layer_list: list[int], patched: set[int], read: CandidateReading
) -> list[Candidate]:
    """A difference of means per (layer, kept post-instruction position) of the prompt contrast."""
    site = read.site
    pos, neg = (
        collect_activations(
            model,
            list(side),
            layers=layer_list,
            site=site,
            position="post_instruction",
            batch_size=read.batch_size,
        )
        for side in contrast
    )
    if pos.ndim == 3:  # one post-instruction token: collect_activations drops the position axis
        pos, neg = pos[:, :, None], neg[:, :, None]
    n_post = pos.shape[2]
    if neg.shape[2] != n_post:
        raise DataError(
            f"the two sides of the prompt contrast have {n_post} and {neg.shape[2]} post-instruction tokens"
        )
    offsets = range(n_post - min(n_post, read.last_k_positions or n_post), n_post)
    out = []
    for col, layer in enumerate(layer_list):
        for j in offsets:
            where = f"post_instruction[{j - n_post}]"
            d = diff_of_means(pos[:, col, j], neg[:, col, j], layer=layer, site=site, position=where)
            out.append(
                Candidate(
                    source="prompt_contrast",
                    layer=layer,
                    position=where,
                    direction=d,
                    from_patching=layer in patched,
                )
            )
    return out


def _response_candidates(
    model: Bridge, contrast: Contrast, layer_list: list[int], patched: set[int], read: CandidateReading
) -> list[Candidate]:
    """Per layer, the response contrast's difference of means and a probe on it."""
    site, where = read.site, read.response_position
    pos, neg = (
        collect_activations(
            model, list(side), layers=layer_list, site=site, position=where, batch_size=read.batch_size
        )
        for side in contrast
    )
    if pos.ndim != 3:
        raise ConfigError(f"response_position {where!r} must select one vector per prompt")
    out = []
    for col, layer in enumerate(layer_list):
        d = diff_of_means(pos[:, col], neg[:, col], layer=layer, site=site, position=where)
        probe = fit_probe(pos[:, col], neg[:, col], layer=layer, site=site, position=where)
        for source, direction in (("response_mean", d), ("probe", probe.direction())):
            out.append(
                Candidate(
                    source=source,
                    layer=layer,
                    position=where,
                    direction=direction,
                    from_patching=layer in patched,
                )
            )
    return out


def random_like(candidate: Candidate, seed: int = 0) -> Candidate:
    """A random unit direction at the same layer, site and position (the same-KL control of a selection)."""
    gen = torch.Generator().manual_seed(seed + 1000 * candidate.layer)
    unit = torch.randn(candidate.direction.d_model, generator=gen)
    d = candidate.direction
    direction = Direction(
        unit=unit / unit.norm(),
        layer=d.layer,
        site=d.site,
        position=d.position,
        method="random",
        raw_norm=d.raw_norm,
        model=d.model,
    )
    return Candidate(
        source=candidate.source,
        layer=candidate.layer,
        position=candidate.position,
        direction=direction,
        from_patching=candidate.from_patching,
    )
