"""Chat formatting with known token positions.

Prompts go through the model's own chat template (system turn, few-shot or earlier turns, the user
turn, then the assistant's turn, optionally prefilled with a response). We render the template to
text, tokenize it once with offsets, and map character spans to token spans, so for every prompt we
know where the *instruction* (the final user message), the *post-instruction* template tokens
(e.g. ``<|im_end|>\\n<|im_start|>assistant\\n``) and the *response* sit. These are the read positions
of Arditi et al. (2024) and of response-mean persona vectors (Chen et al. 2025).

No doubled BOS: templates that already start with the BOS token (SmolLM2's does) get none added.
"""

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Int

from lensteer._types import AttentionMask, Tokens
from lensteer.core.bridge import Bridge
from lensteer.errors import ConfigError, DataError

ROLES = ("system", "user", "assistant")

# Used only when a tokenizer has no chat template of its own (base models, toy tokenizers).
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
)


@dataclass(frozen=True, kw_only=True)
class Turn:
    """One message of a conversation."""

    role: str
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"turn role {self.role!r} is not one of {ROLES}")
        if not isinstance(self.content, str):
            raise ConfigError(f"turn content must be a string, got {type(self.content).__name__}")


@dataclass(frozen=True, kw_only=True)
class ChatPrompt:
    """A prompt for a chat model: optional system turn, earlier turns, the user turn, a response.

    Attributes:
        user: The final user message (the *instruction*).
        system: Optional system prompt (the template's default is used when ``None``).
        history: Earlier turns (few-shot examples or a multi-turn conversation), oldest first.
        response: Optional assistant text after the generation prompt: a prefill when generating,
            the response whose tokens are read when collecting activations.
    """

    user: str
    system: str | None = None
    history: tuple[Turn, ...] = ()
    response: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.user, str) or not self.user.strip():
            raise DataError(f"a chat prompt needs a non-empty user message, got {self.user!r}")
        if any(t.role == "system" for t in self.history):
            raise ConfigError("put the system prompt in `system=`, not in `history`")

    def messages(self) -> list[dict[str, str]]:
        """The conversation as chat-template messages, without the response."""
        msgs = [] if self.system is None else [{"role": "system", "content": self.system}]
        msgs += [{"role": t.role, "content": t.content} for t in self.history]
        msgs.append({"role": "user", "content": self.user})
        return msgs


@dataclass(frozen=True, kw_only=True, eq=False)
class TokenizedPrompt:
    """Token ids of one prompt and the ``[start, end)`` spans of its parts (no padding)."""

    tokens: Int[torch.Tensor, " pos"]
    instruction: tuple[int, int]
    post_instruction: tuple[int, int]
    response: tuple[int, int]

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])


@dataclass(frozen=True, kw_only=True, eq=False)
class PromptBatch:
    """Left-padded tokens of several prompts, their attention mask, and each prompt's spans.

    Spans in :attr:`prompts` are relative to each unpadded prompt; add :attr:`pad_lengths` to move
    them into the padded frame.
    """

    tokens: Tokens
    attention_mask: AttentionMask
    prompts: tuple[TokenizedPrompt, ...] = field(default=())

    @property
    def pad_lengths(self) -> list[int]:
        return [int(self.tokens.shape[1]) - p.n_tokens for p in self.prompts]

    @property
    def position_ids(self) -> Int[torch.Tensor, "batch pos"]:
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)


def _tokenizer_of(model_or_tokenizer: Any) -> Any:
    tok = getattr(model_or_tokenizer, "tokenizer", model_or_tokenizer)
    if tok is None or not callable(tok):
        raise ConfigError("this model has no tokenizer; pass token tensors instead of text")
    return tok


def _span(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """Token span covering characters [start, end): tokens that overlap the range."""
    idx = [i for i, (s, e) in enumerate(offsets) if e > start and s < end]
    if idx:
        return idx[0], idx[-1] + 1
    first_after = next((i for i, (s, _) in enumerate(offsets) if s >= start), len(offsets))
    return first_after, first_after


def render_chat(tokenizer: Any, prompt: ChatPrompt) -> tuple[str, tuple[int, int], int]:
    """Render ``prompt`` with the chat template.

    Returns:
        The text (generation prompt included, response appended), the character span of the user
        message, and the character index where the response starts.
    """
    text = _render(tokenizer, prompt.messages())
    user_start = text.rfind(prompt.user)
    if user_start < 0:  # templates that rewrite content (strip, escape) defeat span finding
        raise DataError(f"the chat template changed the user message {prompt.user[:40]!r}; cannot locate it")
    response_start = len(text)
    return text + (prompt.response or ""), (user_start, user_start + len(prompt.user)), response_start


def _render(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    template = getattr(tokenizer, "chat_template", None) or FALLBACK_CHAT_TEMPLATE
    text: str = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, chat_template=template
    )
    return text


_SLOT = re.compile("\ue000(\\d+)\ue001")  # a message's place in a template rendered with placeholders


def _content_spans(tokenizer: Any, prompt: ChatPrompt, text: str) -> list[tuple[int, int]] | None:
    """Character spans in ``text`` (the rendered messages, no response) of every message's content, found by
    rendering the template with a placeholder per message; ``None`` if the template rewrites content."""
    messages = prompt.messages()
    slots = [{**m, "content": f"\ue000{k}\ue001"} for k, m in enumerate(messages)]
    skeleton = _render(tokenizer, slots)
    spans, rebuilt, last = [], [], 0
    for hit in _SLOT.finditer(skeleton):
        rebuilt.append(skeleton[last : hit.start()])
        start = sum(len(x) for x in rebuilt)
        content = messages[int(hit.group(1))]["content"]
        rebuilt.append(content)
        spans.append((start, start + len(content)))
        last = hit.end()
    rebuilt.append(skeleton[last:])
    return spans if "".join(rebuilt) == text else None


def _special_strings(tok: Any) -> list[str]:
    """The strings the tokenizer turns into special or added tokens (``<|im_start|>``, ``</s>``, ...)."""
    added = getattr(tok, "get_added_vocab", None)
    names = set(getattr(tok, "all_special_tokens", ()) or ()) | (set(added()) if callable(added) else set())
    return sorted(n for n in names if n)


def _user_spans(
    tok: Any, prompt: ChatPrompt, text: str, user: tuple[int, int], r0: int
) -> list[tuple[int, int]]:
    """Where message contents and the response sit in ``text``, if any of them holds a special-token string
    (else ``[]``: nothing to protect, and no second render)."""
    contents = [m["content"] for m in prompt.messages()] + [prompt.response or ""]
    specials = _special_strings(tok)
    if not any(sp in c for c in contents for sp in specials):
        return []
    spans = _content_spans(tok, prompt, text[:r0]) or [user]
    return [*spans, (r0, len(text))] if len(text) > r0 else spans


def _encode(
    tok: Any, text: str, user_spans: list[tuple[int, int]]
) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of ``text``; inside ``user_spans`` (message contents, the response)
    special-token strings stay text (``split_special_tokens``), so dataset text cannot forge a turn.
    Text without such strings in those spans is tokenized in one piece, exactly as before."""
    if not user_spans:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    cuts = sorted({0, len(text), *(x for span in user_spans for x in span)})
    for lo, hi in itertools.pairwise(cuts):
        is_user = any(a <= lo and hi <= b for a, b in user_spans)
        enc = tok(
            text[lo:hi], add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=is_user
        )
        ids += list(enc["input_ids"])
        offsets += [(s + lo, e + lo) for s, e in enc["offset_mapping"]]
    return ids, offsets


def context_length(model: Bridge) -> int | None:
    """The model's context length (``cfg.n_ctx``), or ``None`` for a bare tokenizer."""
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    return n_ctx if isinstance(n_ctx, int) and not isinstance(n_ctx, bool) and n_ctx > 0 else None


def tokenize_prompt(
    model_or_tokenizer: Any, prompt: "str | ChatPrompt", *, chat: bool = True, index: int | None = None
) -> TokenizedPrompt:
    """Tokenize one prompt, through the chat template unless ``chat=False`` (raw text).

    A string is taken as the user message (``chat=True``) or the whole text (``chat=False``).
    The BOS token is prepended only when the tokenizer has one and the text does not start with it.
    Through the template, special-token strings inside the messages (``<|im_start|>`` in dataset text)
    stay text; raw text (``chat=False``) is tokenized as given.

    Raises:
        DataError: An empty prompt, or one longer than the model's context length (``index`` names it).
    """
    tok = _tokenizer_of(model_or_tokenizer)
    if isinstance(prompt, str):
        if not prompt.strip():
            raise DataError("prompt text is empty")
        if chat:
            prompt = ChatPrompt(user=prompt)
    if isinstance(prompt, ChatPrompt):
        text, (u0, u1), r0 = render_chat(tok, prompt)
        user_spans = _user_spans(tok, prompt, text, (u0, u1), r0)
    elif isinstance(prompt, str):
        text, (u0, u1), r0 = prompt, (0, len(prompt)), len(prompt)
        user_spans = []
    else:
        raise DataError(f"prompts must be strings or ChatPrompt, got {type(prompt).__name__}")
    ids, offsets = _encode(tok, text, user_spans)
    bos = getattr(tok, "bos_token", None)
    if bos is not None and tok.bos_token_id is not None and not text.startswith(bos):
        ids, offsets = [tok.bos_token_id, *ids], [(0, 0), *offsets]
    n_ctx = context_length(model_or_tokenizer)
    if n_ctx is not None and len(ids) > n_ctx:
        which = f"prompt {index}" if index is not None else f"prompt {text[:40]!r}..."
        raise DataError(
            f"{which} has {len(ids)} tokens, more than the model's context length of {n_ctx}; "
            "shorten it (or its few-shot context)"
        )
    instruction = _span(offsets, u0, u1)
    response = _span(offsets, r0, len(text)) if len(text) > r0 else (len(ids), len(ids))
    post = (instruction[1], response[0])
    return TokenizedPrompt(
        tokens=torch.tensor(ids, dtype=torch.long),
        instruction=instruction,
        post_instruction=post,
        response=response,
    )


def pad_id_of(model_or_tokenizer: Any) -> int:
    """The pad token id (falls back to EOS, then 0). Padding is always masked, so its value is moot."""
    tok = getattr(model_or_tokenizer, "tokenizer", model_or_tokenizer)
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tok, attr, None) if tok is not None else None
        if isinstance(value, int):
            return value
    return 0


def left_pad(prompts: Sequence[TokenizedPrompt], pad_id: int) -> PromptBatch:
    """Stack tokenized prompts into a left-padded batch with an attention mask."""
    if not prompts:
        raise DataError("cannot pad an empty list of prompts")
    width = max(p.n_tokens for p in prompts)
    tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        tokens[row, width - p.n_tokens :] = p.tokens
        mask[row, width - p.n_tokens :] = 1
    return PromptBatch(tokens=tokens, attention_mask=mask, prompts=tuple(prompts))


PAD_SLACK = (
    32  # tokens: prompts up to 2x + this the batch's shortest share a batch (see length_sorted_batches)
)


def length_sorted_batches(
    tokenized: Sequence[TokenizedPrompt], batch_size: int, pad_id: int
) -> list[tuple[list[int], PromptBatch]]:
    """Group prompts of similar length into left-padded batches (less padding, same results).

    Prompts are taken shortest first; a batch ends when it holds ``batch_size`` prompts or when the
    next prompt is more than twice as long as the batch's shortest (plus :data:`PAD_SLACK` tokens), so
    short prompts are never padded to a long few-shot context's width (a batch of harmless questions
    and few-shot prompts would otherwise spend most of its compute on padding).

    Returns ``(rows, batch)`` pairs; ``rows`` are the indices into ``tokenized`` of the batch's rows,
    so results can be written back in prompt order.
    """
    order = sorted(range(len(tokenized)), key=lambda i: tokenized[i].n_tokens)
    chunks: list[list[int]] = []
    for i in order:
        current = chunks[-1] if chunks else None
        if (
            current is None
            or len(current) >= batch_size
            or tokenized[i].n_tokens > 2 * tokenized[current[0]].n_tokens + PAD_SLACK
        ):
            chunks.append([i])
        else:
            current.append(i)
    return [(rows, left_pad([tokenized[i] for i in rows], pad_id)) for rows in chunks]


def tokenize_batch(model: Bridge, prompts: Sequence["str | ChatPrompt"], *, chat: bool = True) -> PromptBatch:
    """Tokenize and left-pad several prompts (see :func:`tokenize_prompt`)."""
    if isinstance(prompts, str):
        raise DataError("pass a list of prompts, not a single string")
    return left_pad([tokenize_prompt(model, p, chat=chat) for p in prompts], pad_id_of(model))


_FOLLOW_UP = ("\ue000u\ue001", "\ue000a\ue001", "\ue000q\ue001")  # placeholders: request, answer, question


def follow_up_suffix(model_or_tokenizer: Any, question: str) -> str:
    """The chat-template text that closes an assistant answer and asks ``question`` as the next user turn,
    up to the next assistant turn's start: appended to a prompt whose response is the answer (:class:`ChatPrompt`
    with ``response``), the model's next token is its reply to ``question`` about that answer."""
    if not question.strip():
        raise DataError("a follow-up question must not be empty")
    tok = _tokenizer_of(model_or_tokenizer)
    user, answer, asked = _FOLLOW_UP
    text = _render(
        tok,
        [
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": asked},
        ],
    )
    if text.count(answer) != 1 or text.count(asked) != 1:
        raise DataError("the chat template rewrites message content; cannot place a follow-up question")
    return text[text.index(answer) + len(answer) :].replace(asked, question)


def first_token_id(model_or_tokenizer: Any, text: str) -> int:
    """Id of the first token of ``text`` with no special tokens (e.g. ``"I"`` for a refusal's start).

    ``tokenizer.encode`` prepends BOS on some models, which would make every such id the same.
    """
    tok = _tokenizer_of(model_or_tokenizer)
    ids = tok.encode(text, add_special_tokens=False)
    if not ids:
        raise DataError(f"{text!r} tokenizes to nothing")
    return int(ids[0])
