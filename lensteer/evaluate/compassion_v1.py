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
import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float

from lensteer.core.bundled import bundled_dir, read_jsonl
from lensteer.errors import ConfigError, DataError
from lensteer.evaluate.text import words_of

# The compassion contrast set, whose validation replies join the scorer's training data.
CONTRAST_FILE = "compassion.jsonl"

# Hand-written cue groups (our own); each is a feature: how many of its phrases the response holds.
COMPASSION_LEXICON: dict[str, tuple[str, ...]] = {
    "validation": ("makes sense", "understandable", "it's okay", "it is okay", "it's ok", "valid", "natural",
                   "normal to", "no wonder", "you're allowed", "allowed to", "nothing wrong", "not silly",
                   "nothing silly", "not alone", "not your fault", "of course you", "completely fair",
                   "real loss", "matters", "deserve", "anyone would", "human"),
    "empathy": ("sorry to hear", "sorry for your", "sorry you", "that sounds", "sounds like", "must be",
                "must feel", "painful", "heavy", "exhausting", "frightening", "scary", "lonely", "hurts",
                "i hear", "i can imagine", "i'm here", "i am here", "with you", "so hard", "really hard",
                "rough", "tough", "heartbreaking", "overwhelming"),
    "support": ("would it help", "might help", "could help", "reach out", "talk to", "be gentle", "go easy",
                "take care", "small step", "one step", "when you're ready", "if you want", "would you like",
                "take your time", "let yourself", "lean on", "someone you trust", "support", "together",
                "check in", "you could", "are you", "how are you", "what would", "proud of you"),
    "dismissive": ("just", "get over", "stop", "big deal", "whatever", "deal with it", "should have",
                   "your own fault", "your fault", "everyone", "move on", "overreact", "drama", "grow up",
                   "toughen", "suck it up", "quit", "complain", "whining", "at least", "could be worse",
                   "nobody cares", "not my problem", "pointless", "no point", "waste", "get a grip", "so what",
                   "obviously", "anyway", "dwell", "happens to", "part of life", "that's life", "no excuse",
                   "lazy", "weak", "ridiculous", "silly", "pathetic", "mind your", "not worth"),
    "redirect": ("on another note", "by the way", "anyway", "moving on", "something else", "good luck",
                 "best of luck", "hope that helps", "next time"),
}
_NGRAM_MIN_COUNT = 2


def _lexicon_counts(text: str) -> list[float]:
    low = " " + " ".join(words_of(text)) + " "
    return [float(sum(low.count(" " + " ".join(words_of(p)) + " ") for p in phrases))
            for phrases in COMPASSION_LEXICON.values()]


def _ngrams(text: str) -> list[str]:
    words = words_of(text)
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


def _featurize(texts: Sequence[str], vocab: Sequence[str]) -> Float[torch.Tensor, "n n_features"]:
    """Length-normalised features, so a reply's length is not a cue by itself.

    Lexicon: ``log1p(count)`` per cue group divided by ``sqrt(max(1, n_words / 20))``. Uni/bigrams:
    presence (0/1) scaled to unit L2 norm per response.
    """
    index = {g: i for i, g in enumerate(vocab)}
    n_lex = len(COMPASSION_LEXICON)
    x = torch.zeros(len(texts), n_lex + len(vocab), dtype=torch.float64)
    for row, text in enumerate(texts):
        scale = max(1.0, len(words_of(text)) / 20) ** 0.5
        x[row, :n_lex] = torch.log1p(torch.tensor(_lexicon_counts(text), dtype=torch.float64)) / scale
        present = [n_lex + index[g] for g in set(_ngrams(text)) if g in index]
        if present:
            x[row, present] = 1.0 / len(present) ** 0.5
    return x


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
    responses: Sequence[str], labels: Sequence[bool], *, l2: float = 0.03, max_iter: int = 200,
) -> CompassionScorer:
    """Fit :class:`CompassionScorer` deterministically (float64 L-BFGS, fixed iterations).

    Args:
        responses: Training responses.
        labels: ``True`` for compassionate, ``False`` for dismissive; both classes required.
        l2: L2 penalty on the weights (times the number of examples); larger is smoother.
        max_iter: L-BFGS iterations.
    """
    if len(responses) != len(labels) or len(responses) < 4:
        raise DataError(f"need >= 4 responses with one label each, got {len(responses)} responses, {len(labels)} labels")
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
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + l2 / len(y) * (w**2).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    return CompassionScorer(vocab=vocab, weights=w.detach(), bias=float(b.detach()))


@dataclass(frozen=True, kw_only=True)
class LabelledResponse:
    """One labelled response of ``data/scoring/compassion_labelled.jsonl``."""

    id: str
    split: str
    kind: str
    prompt: str
    response: str
    compassionate: bool


def load_compassion_labelled(split: str | None = None) -> list[LabelledResponse]:
    """The bundled labelled responses.

    Args:
        split: ``"train"``, ``"heldout"`` (new prompts, never trained on), ``"stress"`` (written to
            defeat surface cues, never trained on) or ``None`` for all.
    """
    if split not in (None, "train", "heldout", "stress"):
        raise ConfigError(f"split must be 'train', 'heldout', 'stress' or None, got {split!r}")
    path = bundled_dir("scoring") / "compassion_labelled.jsonl"
    out = []
    for i, row in enumerate(read_jsonl(path), start=1):
        try:
            item = LabelledResponse(id=row["id"], split=row["split"], kind=row["kind"], prompt=row["prompt"],
                                    response=row["response"], compassionate=bool(row["label"]))
        except KeyError as err:
            raise DataError(f"{path.name} line {i}: missing field {err}") from err
        if split is None or item.split == split:
            out.append(item)
    return out


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
    return train_compassion_scorer([r.response for r in train] + texts, [r.compassionate for r in train] + labels)
