"""The compassion scorer v1 (hand-written cue groups + word features, torch logistic fit): the scorer that
produced the committed ``docs/study`` rows. Kept, unchanged, only so that those rows can be re-checked with the
scorer that made them (``tests/integration/test_study_steerings.py``); new rows use
:mod:`lensteer.evaluate.compassion` (fitted on labelled model answers). Its original docstring follows.

Compassion scoring: a small, transparent classifier of compassionate vs dismissive replies.

:class:`CompassionScorer` is a logistic regression over a hand-written lexicon and word uni/bigrams
(length-normalised), trained deterministically at first use on our own labelled responses
(``data/scoring/compassion_labelled.jsonl``, plus the bundled compassion contrast set's validation
split; never its train split, whose replies define the study's steering directions); held-out accuracy is reported in ``data/README.md``. Nothing is pickled.
"""

import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float

from lensteer.core.bundled import bundled_dir
from lensteer.errors import ConfigError, DataError
from lensteer.evaluate.compassion import (
    _NGRAM_MIN_COUNT,
    _featurize,
    _ngrams,
    load_compassion_labelled,
)

# The compassion contrast set, whose validation replies join the scorer's training data.
CONTRAST_FILE = "compassion.jsonl"


@dataclass(frozen=True, kw_only=True, eq=False)
class CompassionScorer:
    """Logistic regression over lexicon cues and word uni/bigrams: P(response is compassionate).

    Build one with :func:`train_compassion_scorer` (or the cached :func:`compassion_scorer` trained on
    the bundled labelled set). Calling it as ``scorer(prompt, response)`` returns the probability,
    so it is a judge (:mod:`lensteer.evaluate.judges`); the prompt is ignored.
    """

    vocab: tuple[str, ...]
    weights: Float[torch.Tensor, " n_features"]
    bias: float
    threshold: float = 0.5

    def score(self, responses: Sequence[str]) -> Float[torch.Tensor, " n"]:
        """P(compassionate) for each response."""
        if isinstance(responses, str):
            raise DataError("pass a list of responses, not a single string")
        if len(responses) == 0:
            return torch.zeros(0)
        x = _featurize(responses, self.vocab)
        return torch.sigmoid(x @ self.weights + self.bias).float()

    def predict(self, responses: Sequence[str]) -> list[bool]:
        """``score > threshold`` for each response."""
        return [bool(p > self.threshold) for p in self.score(responses)]

    def accuracy(self, responses: Sequence[str], labels: Sequence[bool]) -> float:
        """Share of responses whose prediction equals its label."""
        if len(responses) != len(labels) or not labels:
            raise DataError(f"need as many labels as responses (> 0), got {len(labels)} and {len(responses)}")
        return sum(p == bool(y) for p, y in zip(self.predict(responses), labels, strict=True)) / len(labels)

    def __call__(self, prompt: str, response: str) -> float:  # noqa: ARG002 - judge signature
        """Judge interface: P(compassionate) of ``response``."""
        return float(self.score([response])[0])


def train_compassion_scorer(
    responses: Sequence[str],
    labels: Sequence[bool],
    *,
    l2: float = 0.03,
    max_iter: int = 200,
) -> CompassionScorer:
    """Fit :class:`CompassionScorer` deterministically (float64 L-BFGS, fixed iterations).

    Args:
        responses: Training responses.
        labels: ``True`` for compassionate, ``False`` for dismissive; both classes required.
        l2: L2 penalty on the weights (times the number of examples); larger is smoother.
        max_iter: L-BFGS iterations.
    """
    if len(responses) != len(labels) or len(responses) < 4:
        raise DataError(
            f"need >= 4 responses with one label each, got {len(responses)} responses, {len(labels)} labels"
        )
    if len(set(map(bool, labels))) < 2:
        raise DataError("labels must contain both classes (compassionate and dismissive)")
    if l2 <= 0:
        raise ConfigError(f"l2 must be > 0, got {l2}")
    counts = Counter(g for text in responses for g in set(_ngrams(text)))
    vocab = tuple(sorted(g for g, c in counts.items() if c >= _NGRAM_MIN_COUNT))
    x = _featurize(responses, vocab)
    y = torch.tensor([float(bool(v)) for v in labels], dtype=torch.float64)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + l2 / len(y) * (w**2).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    return CompassionScorer(vocab=vocab, weights=w.detach(), bias=float(b.detach()))


def _contrast_training_pairs() -> tuple[list[str], list[bool]]:
    from lensteer.core.datasets import (
        load_dataset,  # late import: data imports chat, which is heavier
    )

    ds = load_dataset(bundled_dir("contrast") / CONTRAST_FILE)
    texts: list[str] = []
    labels: list[bool] = []
    # validation replies only: the train split's replies define the study's steering directions, and a
    # scorer trained on them would grade the steering on the very text it was built from
    for part in (ds.val,):
        for ex in part.with_responses():
            texts += [ex.aligned_response or "", ex.misaligned_response or ""]
            labels += [True, False]
    return texts, labels


@functools.lru_cache(maxsize=1)
def compassion_scorer() -> CompassionScorer:
    """The bundled compassion scorer, trained at first call (about a second) and cached.

    Training data: the ``train`` split of ``data/scoring/compassion_labelled.jsonl`` plus the
    aligned/misaligned replies of the compassion contrast set's val split. The ``heldout`` split,
    the contrast test split and the contrast train split (the steering's own data) are never trained on.
    """
    train = load_compassion_labelled("train")
    texts, labels = _contrast_training_pairs()
    return train_compassion_scorer(
        [r.response for r in train] + texts, [r.compassionate for r in train] + labels
    )
