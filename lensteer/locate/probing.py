"""Layer-by-layer probing study: where is a contrast linearly readable, and by which direction?

For every layer, on a contrast set's splits (directions fitted on train, probe L2 chosen on val,
every metric measured on the held-out test split):

* difference-of-means direction: balanced accuracy at the midpoint of the projected train means,
  AUROC and d' = (m+ - m-) / sqrt((s+^2 + s-^2) / 2) of the test projections;
* logistic-regression probe: balanced accuracy at its decision boundary and AUROC;
* PCA of paired differences: AUROC.

95% percentile-bootstrap intervals resample test prompts within each class. Directions of every
method are kept, so their cosine similarity across methods and layers can be compared and plotted.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from types import MappingProxyType
from typing import Any, Literal, TypedDict, Unpack

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from lensteer.core.activations import collect_activations
from lensteer.core.bridge import Bridge
from lensteer.core.chat import ChatPrompt
from lensteer.core.datasets import ContrastSet
from lensteer.core.options import settings_from
from lensteer.core.sites import normalize_layers
from lensteer.core.stats import auroc, balanced_accuracy, bootstrap_ci, d_prime
from lensteer.errors import ConfigError, DataError
from lensteer.locate.directions import (
    Direction,
    LinearProbe,
    diff_of_means,
    fit_probe,
    pca_of_diffs,
)

ContrastKind = Literal["prompt", "response", "decision"]
METHODS = ("diff_of_means", "pca_of_diffs", "probe")
METRICS = ("dom_accuracy", "dom_auroc", "dom_d_prime", "probe_accuracy", "probe_auroc", "pca_auroc")


@dataclass(frozen=True, kw_only=True, eq=False)
class ProbingReport:
    """Held-out probing metrics per layer, with bootstrap intervals and each method's directions.

    ``metrics[name][i]`` and ``ci[name][i]`` belong to ``layers[i]``; names are in ``METRICS``.
    """

    dataset: str
    contrast: str
    site: str
    position: str
    layers: tuple[int, ...]
    metrics: Mapping[str, tuple[float, ...]]
    ci: Mapping[str, tuple[tuple[float, float], ...]]
    directions: Mapping[str, tuple[Direction, ...]]
    probes: tuple[LinearProbe, ...]
    n_train: int
    n_val: int
    n_test: int
    model: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def best_layer(self, metric: str = "probe_auroc") -> int:
        """The layer with the highest value of ``metric`` (ties: the earliest layer)."""
        values = self._metric(metric)
        return self.layers[max(range(len(values)), key=lambda i: (values[i], -i))]

    def _metric(self, metric: str) -> tuple[float, ...]:
        if metric not in self.metrics:
            raise ConfigError(f"unknown metric {metric!r}; available: {', '.join(self.metrics)}")
        return self.metrics[metric]

    def direction(self, method: str = "diff_of_means", layer: int | None = None) -> Direction:
        """A method's direction at ``layer`` (default: the best layer by probe AUROC)."""
        if method not in self.directions:
            raise ConfigError(f"unknown method {method!r}; available: {', '.join(self.directions)}")
        layer = self.best_layer() if layer is None else layer
        if layer not in self.layers:
            raise ConfigError(f"layer {layer} was not probed; probed layers: {list(self.layers)}")
        return self.directions[method][self.layers.index(layer)]

    def probe(self, layer: int | None = None) -> LinearProbe:
        """The fitted probe at ``layer`` (default: the best layer by probe AUROC)."""
        layer = self.best_layer() if layer is None else layer
        if layer not in self.layers:
            raise ConfigError(f"layer {layer} was not probed; probed layers: {list(self.layers)}")
        return self.probes[self.layers.index(layer)]

    def cosine_across_layers(self, method: str = "diff_of_means") -> Float[torch.Tensor, "n_layers n_layers"]:
        """Cosine similarity of one method's directions between every pair of layers."""
        units = torch.stack([d.unit for d in self.directions[method]])
        return units @ units.T

    def cosine_between_methods(self, layer: int | None = None) -> Float[torch.Tensor, "n_methods n_methods"]:
        """Cosine similarity between the methods' directions at one layer (order: ``METHODS``)."""
        units = torch.stack([self.direction(m, layer).unit for m in self.directions])
        return units @ units.T

    def to_rows(self) -> list[dict[str, Any]]:
        rows = []
        for i, layer in enumerate(self.layers):
            row: dict[str, Any] = {"layer": layer}
            for name, values in self.metrics.items():
                row[name] = values[i]
                row[f"{name}_lo"], row[f"{name}_hi"] = self.ci[name][i]
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no tensors)."""
        return {
            "dataset": self.dataset,
            "contrast": self.contrast,
            "site": self.site,
            "position": self.position,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "n_test": self.n_test,
            "model": self.model,
            "best_layer": self.best_layer(),
            "rows": self.to_rows(),
        }

    def to_table(self) -> str:
        """Plain-text table: held-out probe accuracy / AUROC and difference-of-means d' with 95% CIs."""
        head = (
            f"{self.dataset}: {self.contrast} contrast at {self.site}/{self.position} "
            f"(train {self.n_train}, val {self.n_val}, test {self.n_test} per class; 95% bootstrap CIs)"
        )
        lines = [head, f"{'layer':>5}  {'probe acc':>18}  {'probe AUROC':>18}  {'DoM d_prime':>18}"]
        for i, layer in enumerate(self.layers):
            cells = []
            for name in ("probe_accuracy", "probe_auroc", "dom_d_prime"):
                lo, hi = self.ci[name][i]
                cells.append(f"{self.metrics[name][i]:5.2f} [{lo:5.2f},{hi:5.2f}]")
            lines.append(f"{layer:>5}  " + "  ".join(f"{c:>18}" for c in cells))
        lines.append(
            f"best layer by probe AUROC: {self.best_layer()}; by d': {self.best_layer('dom_d_prime')}"
        )
        return "\n".join(lines)


def _check(name: str, acts: torch.Tensor) -> None:
    if acts.ndim != 3 or acts.shape[0] < 2:
        raise DataError(f"{name} must be [n_prompts >= 2, n_layers, d_model], got {tuple(acts.shape)}")
    if not torch.isfinite(acts).all():
        raise DataError(f"{name} contains NaN or Inf activations")


class ProbingOptions(TypedDict, total=False):
    """The keyword options of :func:`probe_layers` and :func:`probe_by_layer`."""

    n_boot: int
    seed: int
    progress: bool


@dataclass(frozen=True, kw_only=True)
class ProbingSettings:
    """How the probing study runs (:class:`ProbingOptions`, with defaults).

    Attributes:
        n_boot: Bootstrap resamples for the 95% intervals.
        seed: Seed of the bootstrap (layer ``i`` uses ``seed + i``).
        progress: Show a progress bar.
    """

    n_boot: int = 200
    seed: int = 0
    progress: bool = False


def probe_layers(
    acts: Mapping[str, torch.Tensor],
    *,
    layers: Sequence[int],
    dataset: str = "",
    contrast: str = "",
    site: str = "resid_post",
    position: str = "last",
    model: dict[str, Any] | None = None,
    **options: Unpack[ProbingOptions],
) -> ProbingReport:
    """The probing study on collected activations (pure: no model needed).

    Args:
        acts: ``pos_train``, ``neg_train``, ``pos_val``, ``neg_val``, ``pos_test``, ``neg_test``, each
            ``[n_prompts, n_layers, d_model]``. ``pos``/``neg`` train rows must be paired (row i of
            each comes from the same example) for PCA of paired differences.
        layers: The layer index of each entry of the layer axis.
        **options: ``n_boot`` (200, bootstrap resamples for the 95% intervals), ``seed`` (0, of the
            bootstrap) and ``progress`` (``False``): a :class:`ProbingSettings`.

    Raises:
        DataError: Missing splits, a single class, NaN activations, or inconsistent layer axes.
    """
    settings = settings_from(ProbingSettings, options, what="probing")
    names = ("pos_train", "neg_train", "pos_val", "neg_val", "pos_test", "neg_test")
    missing = [n for n in names if n not in acts]
    if missing:
        raise DataError(f"probe_layers needs activations {list(names)}; missing {missing}")
    for n in names:
        _check(n, acts[n])
    if {acts[n].shape[1] for n in names} != {len(layers)}:
        raise DataError(f"every activation set needs {len(layers)} layers (one per entry of `layers`)")
    values: dict[str, list[float]] = {m: [] for m in METRICS}
    cis: dict[str, list[tuple[float, float]]] = {m: [] for m in METRICS}
    dirs: dict[str, list[Direction]] = {m: [] for m in METHODS}
    probes: list[LinearProbe] = []
    paired = acts["pos_train"].shape[0] == acts["neg_train"].shape[0]
    source = f"{dataset}/{contrast}"
    for i, layer in enumerate(tqdm(layers, desc="probe layers", disable=not settings.progress)):
        tr_p, tr_n = acts["pos_train"][:, i], acts["neg_train"][:, i]
        te_p, te_n = acts["pos_test"][:, i], acts["neg_test"][:, i]
        kw = {"layer": layer, "site": site, "position": position}
        dom = diff_of_means(tr_p, tr_n, model=model, **kw)
        threshold = 0.5 * float(dom.project(tr_p).mean() + dom.project(tr_n).mean())
        pca = pca_of_diffs(tr_p, tr_n, model=model, **kw) if paired else dom
        probe = fit_probe(
            tr_p, tr_n, val_positive=acts["pos_val"][:, i], val_negative=acts["neg_val"][:, i], **kw
        )
        scores = {
            "dom": (dom.project(te_p), dom.project(te_n)),
            "probe": (probe.logits(te_p), probe.logits(te_n)),
            "pca": (pca.project(te_p), pca.project(te_n)),
        }
        stats: dict[str, tuple[str, Callable[[torch.Tensor, torch.Tensor], float]]] = {
            "dom_accuracy": ("dom", partial(balanced_accuracy, threshold=threshold)),
            "dom_auroc": ("dom", auroc),
            "dom_d_prime": ("dom", d_prime),
            "probe_accuracy": ("probe", partial(balanced_accuracy, threshold=0.0)),
            "probe_auroc": ("probe", auroc),
            "pca_auroc": ("pca", auroc),
        }
        for name, (which, fn) in stats.items():
            pos_scores, neg_scores = scores[which]
            values[name].append(fn(pos_scores, neg_scores))
            cis[name].append(
                bootstrap_ci(fn, pos_scores, neg_scores, n_boot=settings.n_boot, seed=settings.seed + i)
            )
        held_out = {
            "test_auroc": values["dom_auroc"][-1],
            "test_accuracy": values["dom_accuracy"][-1],
            "test_d_prime": values["dom_d_prime"][-1],
        }
        dirs["diff_of_means"].append(replace(dom, source=source, metrics=held_out))
        dirs["pca_of_diffs"].append(
            replace(pca, source=source, metrics={"test_auroc": values["pca_auroc"][-1]})
        )
        probe_dir = probe.direction(model=model, source=source)
        dirs["probe"].append(
            replace(
                probe_dir,
                metrics={
                    **probe_dir.metrics,
                    "test_auroc": values["probe_auroc"][-1],
                    "test_accuracy": values["probe_accuracy"][-1],
                },
            )
        )
        probes.append(probe)
    return ProbingReport(
        dataset=dataset,
        contrast=contrast,
        site=site,
        position=position,
        layers=tuple(layers),
        metrics=MappingProxyType({k: tuple(v) for k, v in values.items()}),
        ci=MappingProxyType({k: tuple(v) for k, v in cis.items()}),
        directions=MappingProxyType({k: tuple(v) for k, v in dirs.items()}),
        probes=tuple(probes),
        n_train=int(min(acts["pos_train"].shape[0], acts["neg_train"].shape[0])),
        n_val=int(min(acts["pos_val"].shape[0], acts["neg_val"].shape[0])),
        n_test=int(min(acts["pos_test"].shape[0], acts["neg_test"].shape[0])),
        model=model,
    )


def answer_stem(aligned: str, misaligned: str) -> str | None:
    """The words two written answers share before they part ("The capital of Japan is"); ``None`` when
    the answer comes first. Never a word cut in half."""
    k = next(
        (i for i, (a, b) in enumerate(zip(aligned, misaligned, strict=False)) if a != b),
        min(len(aligned), len(misaligned)),
    )
    stem = aligned[:k]
    stem = stem if k == len(aligned) or stem.endswith(" ") else stem.rsplit(" ", 1)[0] if " " in stem else ""
    return stem.rstrip() or None


def decision_prompts(dataset: ContrastSet, context: Any = None) -> list[ChatPrompt]:
    """Each question (in ``context``) with the shared stem of its two written answers as the start of the
    reply: the last token is where the model decides between the aligned and the misaligned answer."""
    return [
        replace(p, response=answer_stem(str(ex.aligned_response), str(ex.misaligned_response)))
        for p, ex in zip(dataset.chat_prompts(context=context), dataset, strict=True)
    ]


def contrast_prompts(
    dataset: ContrastSet, contrast: ContrastKind, contexts: tuple[str | None, str | None] | None = None
) -> tuple[list[Any], list[Any], str]:
    """The two classes of prompts of a contrast, positive (aligned) first, and where to read them.

    ``"prompt"``: ``prompt`` vs ``paired_prompt`` (harmful vs harmless: the refusal direction points
    towards refusing), read at the last token. ``"response"``: the prompt followed by its aligned vs
    its misaligned response, averaged over the response tokens (the persona-vector recipe).
    ``"decision"``: the same question under an aligned vs a misaligning context (``contexts``, two names
    from the dataset's contexts file), read at the last token before the answer (:func:`decision_prompts`):
    where the model decides, not the mean over a written answer's tokens.
    """
    if contrast == "prompt":
        return dataset.chat_prompts(), dataset.chat_prompts(paired=True), "last"
    if contrast in ("response", "decision"):
        ds = dataset.with_responses()
        if len(ds) == 0:
            raise DataError(f"dataset {dataset.name!r} has no rows with responses for a {contrast} contrast")
        if contrast == "response":
            return (
                ds.chat_prompts(response="aligned"),
                ds.chat_prompts(response="misaligned"),
                "response_mean",
            )
        if contexts is None or len(contexts) != 2:
            raise ConfigError(
                f"a decision contrast needs two contexts (aligned, misaligning), got {contexts!r}"
            )
        return decision_prompts(ds, contexts[0]), decision_prompts(ds, contexts[1]), "last"
    raise ConfigError(f"contrast must be 'prompt', 'response' or 'decision', got {contrast!r}")


def collect_contrast(
    model: Bridge,
    dataset: ContrastSet,
    *,
    contrast: ContrastKind = "prompt",
    layers: Sequence[int] | None = None,
    site: str = "resid_post",
    batch_size: int = 16,
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], list[int], str]:
    """Collect both classes of a contrast on the train, val and test splits.

    Returns:
        The activations keyed ``pos_train`` ... ``neg_test``, the layer list, and the position read.
    """
    layer_list = normalize_layers(model, layers)
    acts: dict[str, torch.Tensor] = {}
    position = "last"
    for split in ("train", "val", "test"):
        pos, neg, position = contrast_prompts(getattr(dataset, split), contrast)
        for label, prompts in (("pos", pos), ("neg", neg)):
            acts[f"{label}_{split}"] = collect_activations(
                model,
                prompts,
                layers=layer_list,
                site=site,
                position=position,
                batch_size=batch_size,
                progress=progress,
            )
    return acts, layer_list, position


def probe_by_layer(
    model: Bridge,
    dataset: ContrastSet,
    *,
    contrast: ContrastKind = "prompt",
    layers: Sequence[int] | None = None,
    site: str = "resid_post",
    batch_size: int = 16,
    **options: Unpack[ProbingOptions],
) -> ProbingReport:
    """Run the probing study of a contrast set on a model, layer by layer.

    ``options`` are :func:`probe_layers`' (``n_boot``, ``seed``, ``progress``).

    Example:
        >>> report = lensteer.probe_by_layer(model, lensteer.load_dataset("refusal"))  # doctest: +SKIP
        >>> print(report.to_table()); lensteer.plotting.plot_probing(report)  # doctest: +SKIP
    """
    from lensteer.core.models import model_fingerprint

    settings = settings_from(ProbingSettings, options, what="probing")
    acts, layer_list, position = collect_contrast(
        model,
        dataset,
        contrast=contrast,
        layers=layers,
        site=site,
        batch_size=batch_size,
        progress=settings.progress,
    )
    return probe_layers(
        acts,
        layers=layer_list,
        dataset=dataset.name,
        contrast=contrast,
        site=site,
        position=position,
        model=model_fingerprint(model).to_dict(),
        **options,
    )
