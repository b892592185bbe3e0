"""Verdicts that read the answer with a language model: a logistic regression over its residual stream.

A :class:`ReadingVerdict` has a **reader** (a fixed model, identified by its weights' SHA-256) read each
(request, answer) pair through the chat template and mean-pools the residual stream over the answer's
tokens at a few layers (:func:`read_answers`, one forward pass that stops after the deepest layer). Those
activations, optionally beside a rule's dense features (:class:`~lensteer.evaluate.fitted.Features`), are
standardised and fed to a multinomial logistic regression (scikit-learn, lbfgs). What the reader's own
representation of the answer says is what a word-feature verdict cannot see: whether the answer *does*
what was asked.

The parameters (layers, reader fingerprint, standardisation, coefficients) are plain JSON (:func:`params`,
:func:`verdict_from_params`); the :class:`~lensteer.evaluate.provenance.ScorerId` digest is over all of
them, the reader's weights hash included. A model other than the reader is refused
(:class:`~lensteer.errors.ArtifactMismatchError`), never silently read. Nothing is pickled.
"""

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lensteer.core.activations import collect_activations
from lensteer.core.bridge import Bridge
from lensteer.core.bundled import bundled_dir
from lensteer.core.chat import ChatPrompt
from lensteer.core.io import read_json
from lensteer.core.models import model_fingerprint
from lensteer.errors import ArtifactMismatchError, ConfigError, DataError
from lensteer.evaluate.fitted import RULES, Features, bundled_file, refusal_features
from lensteer.evaluate.provenance import ScorerId, rules_digest

READING_VERSION = "1"
EMPTY_ANSWER = "."  # what an empty answer is read as (an answer needs >= 1 token to be pooled over)


@dataclass(frozen=True, kw_only=True)
class Reader:
    """Which model reads the answers: its name, width and depth, and its weights' SHA-256."""

    name: str
    n_layers: int
    d_model: int
    weights_sha256: str

    @classmethod
    def of(cls, model: Bridge) -> "Reader":
        fp = model_fingerprint(model)
        if fp.weights_sha256 is None:
            raise ConfigError(f"model {fp.name!r} has no weights to hash; it cannot be a reader")
        return cls(name=fp.name, n_layers=fp.n_layers, d_model=fp.d_model, weights_sha256=fp.weights_sha256)


def read_answers(
    model: Bridge,
    prompts: Sequence[str],
    responses: Sequence[str],
    layers: Sequence[int],
    batch_size: int = 16,
) -> np.ndarray:
    """The residual stream (``resid_post``) at ``layers``, mean-pooled over each answer's tokens, with the
    answer read as the assistant's reply to its request: ``[n, len(layers) * d_model]`` float64."""
    if len(prompts) != len(responses):
        raise DataError(f"need one request per answer, got {len(prompts)} for {len(responses)}")
    if not responses:
        return np.zeros((0, len(layers) * int(model.cfg.d_model)))
    chats = [
        ChatPrompt(user=p, response=r if r.strip() else EMPTY_ANSWER)
        for p, r in zip(prompts, responses, strict=True)
    ]
    acts = collect_activations(
        model, chats, layers=list(layers), position="response_mean", batch_size=batch_size
    )
    return acts.reshape(len(chats), -1).double().numpy()


@dataclass(frozen=True, kw_only=True, eq=False)
class ReadingVerdict:
    """A fitted logistic regression over a reader's pooled activations (and a rule's dense features).

    Build one with :func:`fit_reading_verdict`; ``mean`` / ``scale`` standardise the feature columns
    (activations first, then ``dense_names``) before ``coef`` and ``intercept`` apply.
    """

    name: str
    classes: tuple[str, ...]
    reader: Reader
    layers: tuple[int, ...]
    dense_names: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[tuple[float, ...], ...]  # one row per class (binary: one row, for classes[1])
    intercept: tuple[float, ...]
    rules: str  # the digest of the rules whose outputs are dense features ("" when none)
    scorer_id: ScorerId

    def reads(self, model: Bridge) -> bool:
        """Whether ``model`` is the reader these parameters were fitted on (same weights)."""
        return Reader.of(model).weights_sha256 == self.reader.weights_sha256

    def check_reader(self, model: Bridge) -> None:
        """Refuse a model that is not the reader these parameters were fitted on."""
        mine = Reader.of(model)
        if mine.weights_sha256 != self.reader.weights_sha256:
            raise ArtifactMismatchError(
                f"{self.name} reads answers with {self.reader.name} (weights {self.reader.weights_sha256[:12]}), "
                f"got {mine.name} (weights {mine.weights_sha256[:12]})"
            )

    def features(
        self, model: Bridge, prompts: Sequence[str], responses: Sequence[str], dense: Sequence[Features]
    ) -> np.ndarray:
        """The unstandardised feature matrix of the answers: pooled activations, then dense features."""
        self.check_reader(model)
        return _stack(read_answers(model, prompts, responses, self.layers), dense, self.dense_names)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """P(class) per row of a :meth:`features` matrix, columns in :attr:`classes` order."""
        if x.shape[1] != len(self.mean):
            raise DataError(f"{self.name} reads {len(self.mean)} features, got {x.shape[1]}")
        z = ((x - np.array(self.mean)) / np.array(self.scale)) @ np.array(self.coef).T + np.array(
            self.intercept
        )
        if len(self.classes) == 2:  # scikit-learn's binary form: one logit, for classes[1]
            p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
            return np.stack([1.0 - p1, p1], axis=1)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, x: np.ndarray) -> list[str]:
        """The most probable class per row of a :meth:`features` matrix."""
        return [self.classes[int(i)] for i in self.probabilities(x).argmax(axis=1)]


def _stack(acts: np.ndarray, dense: Sequence[Features], names: Sequence[str]) -> np.ndarray:
    if not names:
        return acts
    if len(dense) != len(acts):
        raise DataError(f"need dense features for each of the {len(acts)} answers, got {len(dense)}")
    return np.hstack([acts, np.array([[f.dense[n] for n in names] for f in dense], dtype=np.float64)])


@dataclass(frozen=True, kw_only=True)
class ReadingSpec:
    """What a reading verdict reads and how hard it is regularised: the reader's layers, the dense
    features' names (``()``: activations only) and the inverse L2 penalty ``c``."""

    layers: tuple[int, ...]
    dense_names: tuple[str, ...] = ()
    c: float = 0.1


def fit_reading_verdict(
    name: str, x: np.ndarray, labels: Sequence[str], *, spec: ReadingSpec, reader: Reader, rules: str = ""
) -> ReadingVerdict:
    """Fit a :class:`ReadingVerdict` deterministically on a :meth:`ReadingVerdict.features`-shaped matrix
    ``x`` (pooled activations at ``spec.layers``, then ``spec.dense_names``) and the readers' ``labels``."""
    from sklearn.linear_model import LogisticRegression  # late import: keeps lensteer's import light
    from sklearn.preprocessing import StandardScaler

    if len(x) != len(labels) or len(x) < 4:
        raise DataError(f"need >= 4 answers with one label each, got {len(x)} and {len(labels)}")
    width = len(spec.layers) * reader.d_model + len(spec.dense_names)
    if x.shape[1] != width:
        raise DataError(
            f"x has {x.shape[1]} columns, {len(spec.layers)} layers and the dense features need {width}"
        )
    classes = tuple(sorted(set(labels)))
    if len(classes) < 2:
        raise DataError(f"the labels hold one class only ({classes}); need two or more")
    if spec.c <= 0:
        raise ConfigError(f"c (inverse L2 penalty) must be > 0, got {spec.c}")
    scaler = StandardScaler().fit(x)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    model = LogisticRegression(C=spec.c, solver="lbfgs", max_iter=5000, tol=1e-8)
    model.fit((x - scaler.mean_) / scale, [classes.index(y) for y in labels])
    p = {
        "name": name,
        "version": READING_VERSION,
        "classes": list(classes),
        "reader": vars(reader),
        "layers": list(spec.layers),
        "dense_names": list(spec.dense_names),
        "mean": [_short(v) for v in scaler.mean_],
        "scale": [_short(v) for v in scale],
        "coef": [[_short(v) for v in row] for row in model.coef_],
        "intercept": [_short(v) for v in model.intercept_],
        "rules": rules,
    }
    return verdict_from_params(p, "a fresh fit")


def _short(x: float) -> float:
    """A fitted number to 7 significant digits (what the JSON stores)."""
    return float(f"{float(x):.7g}")


def params(v: ReadingVerdict) -> dict[str, Any]:
    """The plain-JSON form of a reading verdict (what ``data/scoring/<verdict>_v<version>.json`` stores)."""
    return {
        "name": v.name,
        "version": v.scorer_id.version,
        "classes": list(v.classes),
        "reader": vars(v.reader),
        "layers": list(v.layers),
        "dense_names": list(v.dense_names),
        "mean": list(v.mean),
        "scale": list(v.scale),
        "coef": [list(r) for r in v.coef],
        "intercept": list(v.intercept),
        "rules": v.rules,
    }


def verdict_from_params(p: dict[str, Any], where: str = "parameters") -> ReadingVerdict:
    """A reading verdict from :func:`params`' form; its digest is over all of it (reader and rules included)."""
    try:
        v = ReadingVerdict(
            name=str(p["name"]),
            classes=tuple(str(c) for c in p["classes"]),
            reader=Reader(**p["reader"]),
            layers=tuple(int(layer) for layer in p["layers"]),
            dense_names=tuple(str(n) for n in p["dense_names"]),
            mean=tuple(float(x) for x in p["mean"]),
            scale=tuple(float(x) for x in p["scale"]),
            coef=tuple(tuple(float(x) for x in r) for r in p["coef"]),
            intercept=tuple(float(x) for x in p["intercept"]),
            rules=str(p["rules"]),
            scorer_id=ScorerId(name=str(p["name"]), version=str(p["version"]), digest=rules_digest(p)),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"{where}: malformed reading-verdict parameters ({err})") from err
    width = len(v.layers) * v.reader.d_model + len(v.dense_names)
    rows = 1 if len(v.classes) == 2 else len(v.classes)
    if (
        len(v.mean) != width
        or len(v.scale) != width
        or len(v.coef) != rows
        or any(len(r) != width for r in v.coef)
    ):
        raise DataError(f"{where}: need {width} means, scales and coefficients per row ({rows} rows)")
    if any(not 0 <= layer < v.reader.n_layers for layer in v.layers):
        raise DataError(f"{where}: layers {list(v.layers)} outside the reader's 0..{v.reader.n_layers - 1}")
    return v


# The bundled reading verdicts and the rules whose outputs each reads as dense features (its provenance)
READING_RULES = {"refusal-reading": RULES["refusal-fitted"]}


def reading_file(verdict: str) -> str:
    """The bundled parameters' file name of the reading verdict named ``verdict`` (``data/scoring/``)."""
    return bundled_file(verdict, list(READING_RULES), READING_VERSION, "reading")


@functools.cache
def reading_verdict(verdict: str) -> ReadingVerdict:
    """The bundled reading verdict named ``verdict`` (``refusal-reading``), from its JSON parameters (written by
    ``scripts/fit_reading_refusal.py``). A file fitted over other rules than the installed ones is an error."""
    path = bundled_dir("scoring") / reading_file(verdict)
    v = verdict_from_params(read_json(path, what=f"{verdict} reading-verdict parameters"), path.name)
    if v.rules != READING_RULES[verdict]:
        raise DataError(
            f"{path.name} was fitted over rules {v.rules}, the installed ones are {READING_RULES[verdict]}: "
            "refit with scripts/fit_reading_refusal.py --fit"
        )
    return v


def reading_refusal(model: Bridge, responses: Sequence[str], prompts: Sequence[str]) -> list[str]:
    """The three-way refusal verdict (``refuses`` / ``complies`` / ``neither``) of each response to its
    request, read by ``model`` (which must be the bundled verdict's reader) beside the refusal rule's outputs."""
    v = reading_verdict("refusal-reading")
    if len(prompts) != len(responses):
        raise DataError(f"need one request per response, got {len(prompts)} for {len(responses)}")
    dense = [refusal_features(r, p) for r, p in zip(responses, prompts, strict=True)]
    return v.predict(v.features(model, prompts, responses, dense))
