"""Clean/corrupted prompt pairs for activation patching, with the tokens of a logit-difference metric.

Patching needs, for every example, a *clean* prompt (aligned behaviour) and a *corrupted* one
(misaligned behaviour) of exactly the same token length, and a metric read at the last position:
here the logit of an aligned next token minus that of a misaligned one, so positive = aligned. Two
designs (documented and measured in ``data/README.md``):

* **Paired prompts** (refusal): clean = the harmful instruction, corrupted = its topic-matched
  harmless twin (``paired_prompt``); metric = ``logit("I") - logit("Sure")`` at the assistant start.
* **Paired contexts** (compassion, honesty): the same user message under an aligned system prompt
  (``caring_system``, ``honest_system``) and a misaligning one written to the same token length
  (``dismissive_system``, ``lying_system``). Compassion's metric is ``logit("I") - logit("You")``
  at the assistant start (``"I'm so sorry..."`` vs ``"You're overreacting..."``). Honesty's comes
  from the two bundled responses: their longest shared whole-word prefix is prefilled (``"The
  capital of France is"``) and the metric compares the first token where they part (``" Paris"`` vs
  ``" Lyon"``).

Patching also needs one token length across all pairs, so the rows of the most common length are
kept, and ``n`` of them are taken round-robin over categories.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lensteer.core.bridge import Bridge
from lensteer.core.chat import ChatPrompt, _tokenizer_of, first_token_id, tokenize_prompt
from lensteer.core.datasets import Context, ContrastExample, ContrastSet, load_dataset
from lensteer.errors import ConfigError, DataError
from lensteer.locate.patching_base import Metric, logit_diff_metric


@dataclass(frozen=True, kw_only=True)
class PairDesign:
    """How to build a contrast set's patching pairs.

    Attributes:
        contexts: Aligned and misaligning context names (``None``: prompt vs ``paired_prompt``).
        tokens: Texts whose first tokens are the aligned and misaligned next token at the assistant
            start (``None``: read them where the two bundled responses part, after prefilling their
            shared words).
    """

    contexts: tuple[str, str] | None = None
    tokens: tuple[str, str] | None = None


# (row, clean, corrupted, aligned token, misaligned token, token length)
_Candidate = tuple[ContrastExample, ChatPrompt, ChatPrompt, int, int, int]


@dataclass(frozen=True, kw_only=True)
class PatchingPairs:
    """Clean (aligned) and corrupted (misaligned) prompts of one token length, and the metric's tokens.

    Attributes:
        dataset: Name of the contrast set.
        design: How the pairs were built, in words.
        ids: Row id of each pair.
        clean: Prompts that elicit the aligned behaviour.
        corrupted: Prompts that elicit the misaligned behaviour, same token length as ``clean``.
        aligned_ids: Per pair, the next token of the aligned behaviour.
        misaligned_ids: Per pair, the next token of the misaligned behaviour.
        n_tokens: The shared token length.
    """

    dataset: str
    design: str
    ids: tuple[str, ...]
    clean: tuple[ChatPrompt, ...]
    corrupted: tuple[ChatPrompt, ...]
    aligned_ids: tuple[int, ...]
    misaligned_ids: tuple[int, ...]
    n_tokens: int

    def __len__(self) -> int:
        return len(self.ids)

    def metric(self) -> Metric:
        """``logit(aligned) - logit(misaligned)`` per pair at the last position (positive = aligned)."""
        return logit_diff_metric(list(self.aligned_ids), list(self.misaligned_ids))

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "design": self.design,
            "ids": list(self.ids),
            "n_tokens": self.n_tokens,
            "aligned_ids": list(self.aligned_ids),
            "misaligned_ids": list(self.misaligned_ids),
        }


def shared_word_prefix(a: str, b: str) -> str:
    """The longest common prefix of ``a`` and ``b`` that ends at a word boundary (no trailing space).

    ``"The capital of France is Paris."`` and ``"The capital of France is Lyon."`` share
    ``"The capital of France is"``; texts that differ in their first word share ``""``.
    """
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    if n == len(a) == len(b):
        raise DataError(f"the two responses are identical ({a[:40]!r}); they must differ")
    # cut at the last space inside the common prefix: both texts start a new word right after it
    cut = a.rfind(" ", 0, n)
    return a[:cut] if cut > 0 else ""


def _next_tokens(model: Bridge, prompt: ChatPrompt, responses: tuple[str, str]) -> tuple[int, int] | None:
    """Token after the prefill in each full response, or ``None`` when tokenization does not split there."""
    base = tokenize_prompt(model, prompt)
    ids = []
    for response in responses:
        full = tokenize_prompt(
            model,
            ChatPrompt(user=prompt.user, system=prompt.system, history=prompt.history, response=response),
        )
        k = base.n_tokens
        if full.n_tokens <= k or not bool((full.tokens[:k] == base.tokens).all()):
            return None  # BPE merged across the prefill's end: its tokens are not a prefix of the response's
        ids.append(int(full.tokens[k]))
    return (ids[0], ids[1]) if ids[0] != ids[1] else None


def _round_robin(rows: Sequence[ContrastExample], n: int | None) -> list[int]:
    """Indices of ``n`` rows taken in turn from each category (all rows when ``n`` is None), in row order."""
    by_cat: dict[str, list[int]] = {}
    for i, ex in enumerate(rows):
        by_cat.setdefault(ex.category, []).append(i)
    order: list[int] = []
    queues = list(by_cat.values())
    while any(queues):
        for q in queues:
            if q:
                order.append(q.pop(0))
    return sorted(order[:n] if n is not None else order)


def _keep_common_length(candidates: list[_Candidate]) -> list[_Candidate]:
    lengths = [c[5] for c in candidates]
    common = max(set(lengths), key=lambda n: (lengths.count(n), -n))  # most rows; the shorter on ties
    return [c for c in candidates if c[5] == common]


def patching_pairs(
    model: Bridge,
    dataset: "ContrastSet | str",
    *,
    n: int | None = None,
    design: PairDesign | None = None,
) -> PatchingPairs:
    """Equal-length clean/corrupted prompt pairs and a logit-difference metric for patching a contrast set.

    Args:
        model: A model with a tokenizer (only the tokenizer is used), or a tokenizer.
        dataset: A :class:`ContrastSet` or a bundled name.
        n: Keep at most this many pairs, taken in turn from each category (default: all).
        design: How to pair (default: prompt vs ``paired_prompt``, metric ``logit("I") - logit("Sure")``);
            a bundled threat model's own design is ``lensteer.threats.get(name).pair_design``.

    Returns:
        The pairs; ``pairs.metric()`` is the patching metric (positive = aligned).

    Raises:
        ConfigError: ``n`` is not positive, or a context name is unknown.
        DataError: Rows lack ``paired_prompt`` or responses that the design needs, or no row gives
            clean and corrupted prompts of equal token length on this tokenizer.

    Example:
        >>> design = lensteer.threats.get("honesty").pair_design  # doctest: +SKIP
        >>> pairs = lensteer.locate.patching_pairs(model, "honesty", n=8, design=design)  # doctest: +SKIP
        >>> lensteer.patch_residual(model, pairs.clean, pairs.corrupted, pairs.metric())  # doctest: +SKIP
    """
    if n is not None and n < 1:
        raise ConfigError(f"n must be a positive number of pairs or None, got {n}")
    ds = load_dataset(dataset) if isinstance(dataset, str) else dataset
    _tokenizer_of(model)  # a clear error for token-only models
    design = design or PairDesign()
    if design.contexts is None:
        return _prompt_pairs(model, ds, n, design.tokens or ("I", "Sure"))
    clean_ctx, corrupt_ctx = (ds.context(name) for name in design.contexts)
    return _context_pairs(model, ds, clean_ctx, corrupt_ctx, n, design.tokens)


def _prompt_pairs(model: Bridge, ds: ContrastSet, n: int | None, tokens: tuple[str, str]) -> PatchingPairs:
    missing = [ex.id for ex in ds if ex.paired_prompt is None]
    if missing:
        raise DataError(
            f"dataset {ds.name!r} rows {missing[:5]} have no paired_prompt; give every row one, or "
            "pass design=PairDesign(contexts=(aligned, misaligning)) naming two of its contexts (a bundled "
            "threat model's design: lensteer.threats.get(name).pair_design)"
        )
    aligned, misaligned = (first_token_id(model, t) for t in tokens)
    candidates = []
    for ex in ds:
        clean, corrupt = ChatPrompt(user=ex.prompt), ChatPrompt(user=str(ex.paired_prompt))
        length = tokenize_prompt(model, clean).n_tokens
        if tokenize_prompt(model, corrupt).n_tokens == length:
            candidates.append((ex, clean, corrupt, aligned, misaligned, length))
    design = (
        f"clean = prompt, corrupted = paired_prompt; metric = logit({tokens[0]!r}) - logit({tokens[1]!r}) "
        "at the assistant start"
    )
    return _finish(ds, candidates, n, design, "prompt and paired_prompt")


def _context_pairs(
    model: Bridge,
    ds: ContrastSet,
    clean_ctx: Context,
    corrupt_ctx: Context,
    n: int | None,
    tokens: tuple[str, str] | None,
) -> PatchingPairs:
    rows = ds if tokens is not None else ds.with_responses()
    if len(rows) == 0:
        raise DataError(
            f"dataset {ds.name!r} has no rows with aligned_response and misaligned_response; "
            "the metric tokens are read from them (or give the design fixed tokens=)"
        )
    fixed = None if tokens is None else (first_token_id(model, tokens[0]), first_token_id(model, tokens[1]))
    candidates = []
    for ex in rows:
        responses = (str(ex.aligned_response), str(ex.misaligned_response))
        if fixed is not None:
            prefills, ids = [""], fixed
        else:  # BPE tokenizers put the space before a word in the word's token, character-level ones not
            shared = shared_word_prefix(*responses)
            prefills, ids = [shared, shared + " "] if shared else [""], None
        for prefill in prefills:
            clean = clean_ctx.apply(ChatPrompt(user=ex.prompt, response=prefill or None))
            found = ids or _next_tokens(model, clean, responses)
            if found is not None:
                break
        if found is None:
            continue
        corrupt = corrupt_ctx.apply(ChatPrompt(user=ex.prompt, response=prefill or None))
        length = tokenize_prompt(model, clean).n_tokens
        if tokenize_prompt(model, corrupt).n_tokens == length:
            candidates.append((ex, clean, corrupt, found[0], found[1], length))
    metric = (
        f"logit({tokens[0]!r}) - logit({tokens[1]!r}) at the assistant start"
        if tokens is not None
        else "logit(next aligned-response token) - logit(next misaligned-response token) after their shared words"
    )
    design = f"same message under context {clean_ctx.name!r} (clean) and {corrupt_ctx.name!r} (corrupted); metric = {metric}"
    return _finish(rows, candidates, n, design, f"contexts {clean_ctx.name!r} and {corrupt_ctx.name!r}")


def _finish(
    ds: ContrastSet, candidates: list[_Candidate], n: int | None, design: str, what: str
) -> PatchingPairs:
    if not candidates:
        raise DataError(
            f"no clean/corrupted pair of dataset {ds.name!r} has equal token lengths on this tokenizer "
            f"(built from {what}); write them to tokenize to the same length"
        )
    kept = _keep_common_length(candidates)
    kept = [kept[i] for i in _round_robin([c[0] for c in kept], n)]
    return PatchingPairs(
        dataset=ds.name,
        design=design,
        ids=tuple(c[0].id for c in kept),
        clean=tuple(c[1] for c in kept),
        corrupted=tuple(c[2] for c in kept),
        aligned_ids=tuple(c[3] for c in kept),
        misaligned_ids=tuple(c[4] for c in kept),
        n_tokens=kept[0][5],
    )
