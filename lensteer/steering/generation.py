"""Generation from chat prompts, steered or not: batched, left-padded, with the KV cache.

lensteer runs its own decoding loop over the bridge's forward (``return_type="logits_and_cache"``)
so the steering hooks always know which tokens are prompt and which are generated, and so every
generated token carries a record of whether steering fired while it was chosen and by how much.

Parity guarantees (tested): batched == one prompt at a time; KV cache == recomputing the whole
sequence; a steering that never fires (strength 0, or a threshold no token crosses) == unsteered,
token for token. Seeded sampling draws from one generator per prompt, so it does not depend on how
prompts are batched.
"""

import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from typing import Any, TypedDict, Unpack

import torch
from jaxtyping import Bool, Float, Int
from tqdm.auto import tqdm

from lensteer.core.bridge import Bridge
from lensteer.core.chat import (
    ChatPrompt,
    Turn,
    length_sorted_batches,
    pad_id_of,
    tokenize_prompt,
)
from lensteer.core.forward import last_position_logits
from lensteer.core.models import ensure_kv_cache_fix
from lensteer.core.plain import plain_view
from lensteer.errors import ConfigError, DataError
from lensteer.steering.assignment import (
    as_steerings,
    by_prompt,
    gated_flags,
    owned_gate_rows,
    projection_owner,
    warn_if_positions_select_nothing,
)
from lensteer.steering.gates import gate_rows
from lensteer.steering.hooks import (
    SteeringContext,
    StepRecord,
    holding_model_lock,
    plain_steerable,
    steer,
    steer_plain,
)
from lensteer.steering.prefix import NO_PREFIX, prefill_shared_prefix, shared_prefix
from lensteer.steering.sampling import Sampling
from lensteer.steering.spec import Steering

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>")


@dataclass(frozen=True, kw_only=True, eq=False)
class Generations:
    """Generated continuations, one per prompt, in prompt order (cut at the end-of-turn token).

    Attributes:
        texts: Decoded continuations.
        tokens: Generated token ids per prompt.
        prompt_tokens: Prompt token ids per prompt.
        fired: Per prompt, ``[n_generated]`` bool: did any steering change the residual at the
            position that chose this token.
        shift: Per prompt, ``[n_generated]``: total L2 size of the edits at that position.
        projection: Per prompt, ``[n_generated]``: the residual's projection ``h . unit`` before the
            edit at that position, on the unit of the prompt's steering (the first one when several
            apply) at the earliest layer it steers; NaN without a steering.
        prompt_fired_share: Per prompt, share of its prompt tokens steering changed.
        gated: Per prompt, whether the steerings' gates let it through (``True`` without gates).
    """

    texts: tuple[str, ...]
    tokens: tuple[torch.Tensor, ...]
    prompt_tokens: tuple[torch.Tensor, ...]
    fired: tuple[torch.Tensor, ...] = ()
    shift: tuple[torch.Tensor, ...] = ()
    projection: tuple[torch.Tensor, ...] = ()
    prompt_fired_share: tuple[float, ...] = ()
    gated: tuple[bool, ...] = ()

    def __len__(self) -> int:
        return len(self.texts)

    def __iter__(self) -> Any:
        return iter(self.texts)

    def steered_share(self) -> float:
        """Share of all generated tokens chosen at a position where steering fired."""
        total = sum(int(f.numel()) for f in self.fired)
        return sum(int(f.sum()) for f in self.fired) / total if total else 0.0

    def per_prompt_share(self) -> list[float]:
        """Share of each prompt's generated tokens chosen at a steered position."""
        return [float(f.float().mean()) if f.numel() else 0.0 for f in self.fired]

    def select(self, indices: Any) -> "Generations":
        """The generations of the prompts at ``indices`` (e.g. one condition of a joint batch)."""
        idx = list(indices)

        def pick(values: tuple[Any, ...]) -> tuple[Any, ...]:
            return tuple(values[i] for i in idx) if values else ()

        return Generations(
            texts=pick(self.texts),
            tokens=pick(self.tokens),
            prompt_tokens=pick(self.prompt_tokens),
            fired=pick(self.fired),
            shift=pick(self.shift),
            projection=pick(self.projection),
            prompt_fired_share=pick(self.prompt_fired_share),
            gated=pick(self.gated),
        )


def end_of_turn_ids(model: Bridge) -> set[int]:
    """Token ids that end an assistant turn (EOS plus the chat template's end-of-turn marker)."""
    tok = model.tokenizer
    ids = {tok.eos_token_id} if tok is not None and tok.eos_token_id is not None else set()
    vocab = tok.get_vocab() if tok is not None else {}
    ids |= {vocab[t] for t in END_OF_TURN_TOKENS if t in vocab}
    return {int(i) for i in ids}


class GenerateOptions(TypedDict, total=False):
    """The keyword options of :func:`generate` (see its docstring); :class:`Decoding` and
    :class:`~lensteer.steering.sampling.Sampling` hold them once validated."""

    max_new_tokens: int
    batch_size: int
    chat: bool
    use_kv_cache: bool
    do_sample: bool
    temperature: float
    top_k: int | None
    top_p: float
    seed: int
    progress: bool


@dataclass(frozen=True, kw_only=True)
class Decoding:
    """How :func:`generate` decodes, apart from sampling (validated on construction).

    Attributes:
        max_new_tokens: Tokens to generate at most; a row stops at its end-of-turn token.
        batch_size: Prompts per batch.
        chat: Apply the chat template to strings.
        use_kv_cache: Use the KV cache (``False`` recomputes the whole sequence each step).
        progress: Show a progress bar.
    """

    max_new_tokens: int = 48
    batch_size: int = 16
    chat: bool = True
    use_kv_cache: bool = True
    progress: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")


def split_options(options: GenerateOptions) -> tuple[Decoding, Sampling]:
    """The :class:`Decoding` and :class:`Sampling` of :func:`generate`'s keyword options.

    Raises:
        ConfigError: An unknown option, a bad length or bad sampling parameters.
    """
    given: dict[str, Any] = dict(options)
    unknown = set(given) - set(GenerateOptions.__annotations__)
    if unknown:
        raise ConfigError(
            f"unknown generate options {sorted(unknown)}; allowed: {sorted(GenerateOptions.__annotations__)}"
        )
    sampling_keys = {f.name for f in fields(Sampling)}
    decoding = Decoding(**{k: v for k, v in given.items() if k not in sampling_keys})
    return decoding, Sampling(**{k: v for k, v in given.items() if k in sampling_keys})


@holding_model_lock  # another thread's steering hooks (on the bridge or the shared plain view) never reach this call
def generate(
    model: Bridge,
    prompts: Sequence["str | ChatPrompt"],
    *,
    steering: "Steering | Sequence[Steering] | None" = None,
    prompt_steerings: "Sequence[Steering | None] | None" = None,
    **options: Unpack[GenerateOptions],
) -> Generations:
    """Generate a continuation for each prompt, optionally steered.

    Args:
        model: A ``TransformerBridge`` with a tokenizer.
        prompts: User messages or :class:`~lensteer.ChatPrompt` objects (a ``response`` is a prefill;
            ``history`` holds earlier turns).
        steering: A :class:`~lensteer.Steering` or several (applied together).
        prompt_steerings: Instead of ``steering``: one steering (or ``None``) per prompt. Prompts
            under different steerings share batches, each edit touching only its own rows (and its
            gate deciding only for them), so several conditions decode together in the steps one
            would take: the same tokens as one call per condition, in a fraction of the time when
            batches are small (CPU decoding costs about as much per step at batch 2 as at 16).
        **options: Keyword options (:class:`GenerateOptions`), held as a :class:`Decoding` and a
            :class:`~lensteer.steering.sampling.Sampling`:

            - ``max_new_tokens`` (48): tokens to generate at most; a row stops at its end-of-turn token.
            - ``batch_size`` (16): prompts per batch (left-padded, with an attention mask, sorted by length).
            - ``chat`` (``True``): apply the chat template to strings.
            - ``use_kv_cache`` (``True``): use the KV cache (``False`` recomputes the whole sequence each step).
            - ``do_sample`` (``False``): sample instead of greedy decoding.
            - ``temperature`` (1.0): sampling temperature.
            - ``top_k`` (``None``): sample among the ``top_k`` most likely tokens.
            - ``top_p`` (1.0): sample within the top-``p`` probability mass (nucleus).
            - ``seed`` (0): sampling seed; prompt ``i`` draws from its own generator seeded ``seed + i``.
            - ``progress`` (``False``): show a progress bar.

    Returns:
        :class:`Generations` with texts, token ids and per-token steering records.

    Raises:
        DataError: No prompts. ConfigError: An unknown option, bad lengths or sampling parameters.
        ArtifactMismatchError / HookSiteError: A steering that does not fit the model.
    """
    if isinstance(prompts, str) or len(prompts) == 0:
        raise DataError("pass a non-empty list of prompts")
    decoding, sampling = split_options(options)
    if prompt_steerings is None:
        steerings, owner = as_steerings(steering), None
    elif steering is not None:
        raise ConfigError(
            "pass either steering (for every prompt) or prompt_steerings (one per prompt), not both"
        )
    else:
        steerings, owner = by_prompt(prompt_steerings, len(prompts))
    for s in steerings:
        s.hook_names(model)  # validate before any work
    if decoding.use_kv_cache:
        ensure_kv_cache_fix()  # also for bridges built outside load_model
    tokenized = [tokenize_prompt(model, p, chat=decoding.chat, index=i) for i, p in enumerate(prompts)]
    warn_if_positions_select_nothing(steerings, owner, tokenized, decoding.max_new_tokens)
    gates: torch.Tensor | None  # [n_prompts] (every steering) or [n_steerings, n_prompts] (each its own rows)
    if owner is None:
        gates = (
            gate_rows(model, [s.gate for s in steerings], tokenized)
            if any(s.gate for s in steerings)
            else None
        )
    else:
        gates = owned_gate_rows(model, steerings, owner, tokenized) if steerings else None
    stop = _Stop(eos=end_of_turn_ids(model), pad_id=pad_id_of(model), max_new_tokens=decoding.max_new_tokens)
    device = next(iter(model.parameters())).device
    which = projection_owner(owner, len(steerings), len(tokenized))  # whose projection each prompt reports
    results: dict[int, DecodedRow] = {}
    batches = length_sorted_batches(tokenized, decoding.batch_size, stop.pad_id)
    for rows, batch in tqdm(batches, desc="generate", disable=not decoding.progress, unit="batch"):
        prompt_lens = torch.tensor([tokenized[i].n_tokens for i in rows])
        ctx = SteeringContext(
            prompt_lens=prompt_lens,
            pads=batch.tokens.shape[1] - prompt_lens,
            rows=None if gates is None else gates[..., rows],
        )
        out = _decode_batch(
            model,
            _Batch(batch.tokens.to(device), batch.attention_mask.to(device), which[rows]),
            steerings,
            ctx,
            stop=stop,
            use_kv_cache=decoding.use_kv_cache,
            sampler=_Sampler(sampling, sampling.generators(rows)),
        )
        results.update(zip(rows, out, strict=True))
    ordered = [results[i] for i in range(len(tokenized))]
    return Generations(
        texts=tuple(model.tokenizer.decode(r.tokens, skip_special_tokens=True) for r in ordered),
        tokens=tuple(r.tokens for r in ordered),
        prompt_tokens=tuple(p.tokens for p in tokenized),
        fired=tuple(r.fired for r in ordered),
        shift=tuple(r.shift for r in ordered),
        projection=tuple(r.projection for r in ordered),
        prompt_fired_share=tuple(r.prompt_fired_share for r in ordered),
        gated=gated_flags(gates, owner, steerings, len(tokenized)),
    )


@dataclass(frozen=True, kw_only=True, eq=False)
class DecodedRow:
    """One prompt's decoding, cut at its end-of-turn token (see :class:`Generations` for the fields)."""

    tokens: Int[torch.Tensor, " new"]
    fired: Bool[torch.Tensor, " new"]
    shift: Float[torch.Tensor, " new"]
    projection: Float[torch.Tensor, " new"]
    prompt_fired_share: float


@dataclass(frozen=True)
class _Batch:
    """A left-padded batch on the model's device, and whose steering's projection each row reports."""

    tokens: Int[torch.Tensor, "batch pos"]
    mask: Int[torch.Tensor, "batch pos"]
    which: Int[torch.Tensor, " batch"]


@dataclass(frozen=True, kw_only=True)
class _Stop:
    """When a row stops: an end-of-turn token (then padded with ``pad_id``) or ``max_new_tokens``."""

    eos: set[int]
    pad_id: int
    max_new_tokens: int


@dataclass(frozen=True)
class _Sampler:
    """The sampling settings and this batch's generators (one per row; none when greedy)."""

    sampling: Sampling
    gens: list[torch.Generator]

    def next_tokens(self, logits: Float[torch.Tensor, "batch d_vocab"]) -> Int[torch.Tensor, " batch"]:
        return self.sampling.next_tokens(logits, self.gens)


def _decode_batch(
    model: Bridge,
    batch: _Batch,
    steerings: Sequence[Steering],
    ctx: SteeringContext,
    *,
    stop: _Stop,
    use_kv_cache: bool,
    sampler: _Sampler,
) -> list[DecodedRow]:
    """Decode one left-padded batch; per row: new tokens, fired, shift, projection (on the unit of
    steering ``batch.which[row]``), prompt fired share."""
    seq, attn, cache = batch.tokens, batch.mask, None
    n_rows, width = seq.shape
    done = torch.zeros(n_rows, dtype=torch.bool)
    steps = _Steps()
    prompt_share = [0.0] * n_rows
    eos_t = torch.tensor(sorted(stop.eos), dtype=torch.long) if stop.eos else torch.empty(0, dtype=torch.long)
    share = shared_prefix(seq, attn, steerings, ctx) if use_kv_cache and n_rows > 1 else NO_PREFIX
    prefix = share.length
    prefix_fired = torch.zeros(n_rows, 0, dtype=torch.bool)
    view = (
        plain_view(model) if use_kv_cache and plain_steerable(model, steerings) else None
    )  # before any hook
    forward = view.forward if view is not None else _bridge_forward(model)
    hooks = (
        nullcontext()
        if not steerings
        else steer_plain(model, view, *steerings, context=ctx)
        if view is not None
        else steer(model, *steerings, context=ctx)
    )
    with torch.inference_mode(), warnings.catch_warnings(), hooks:
        # transformers 5.24 renames past_key_values to cache; the bridge still passes the old name.
        warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated", category=FutureWarning)
        shared = prefill_shared_prefix(forward, seq, attn, share, ctx) if prefix else None
        if shared is not None:
            seq, attn, cache, prefix_fired = shared.tokens, shared.mask, shared.cache, shared.prefix_fired
        else:
            prefix = 0
        for step in range(stop.max_new_tokens):
            ctx.clear()
            if use_kv_cache:
                start = 0 if cache is None else prefix if step == 0 else seq.shape[1] - 1
                inp = seq[:, start:]
                ctx.offset = start
                # the prefill unembeds its last column only (as HF generate does): ~20% of its compute
                logits, cache = forward(inp, attn, cache, last_only=inp.shape[1] > 1)
            else:
                ctx.offset = 0
                logits = model(seq, attention_mask=attn, return_type="logits")
            last = logits[:, -1].float().cpu()
            fired, shift, proj = _last_column_stats(ctx.records, batch.which)
            if step == 0:
                prompt_share = _prompt_share(ctx, width, prefix_fired)
            nxt = sampler.next_tokens(last)
            nxt = torch.where(done, torch.full_like(nxt, stop.pad_id), nxt)
            steps.append(
                nxt, fired & ~done, torch.where(done, 0.0, shift), torch.where(done, torch.nan, proj)
            )
            done = done | torch.isin(nxt, eos_t)
            if bool(done.all()) or step == stop.max_new_tokens - 1:
                break
            seq = torch.cat([seq, nxt[:, None].to(seq.device)], 1)
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], 1)
    return steps.rows(stop.eos, prompt_share)


@dataclass
class _Steps:
    """Per decoding step, each row's chosen token and the steering record of the position that chose it."""

    tokens: list[torch.Tensor] = field(default_factory=list)
    fired: list[torch.Tensor] = field(default_factory=list)
    shift: list[torch.Tensor] = field(default_factory=list)
    projection: list[torch.Tensor] = field(default_factory=list)

    def append(
        self, tokens: torch.Tensor, fired: torch.Tensor, shift: torch.Tensor, proj: torch.Tensor
    ) -> None:
        self.tokens.append(tokens)
        self.fired.append(fired)
        self.shift.append(shift)
        self.projection.append(proj)

    def rows(self, eos: set[int], prompt_share: list[float]) -> list[DecodedRow]:
        """Each row's record, cut before its first end-of-turn token."""
        new = torch.stack(self.tokens, 1)
        fired, shift, proj = (torch.stack(x, 1) for x in (self.fired, self.shift, self.projection))
        out = []
        for b in range(new.shape[0]):
            ids = new[b].tolist()
            end = next((k for k, t in enumerate(ids) if t in eos), len(ids))
            out.append(
                DecodedRow(
                    tokens=new[b, :end],
                    fired=fired[b, :end],
                    shift=shift[b, :end],
                    projection=proj[b, :end],
                    prompt_fired_share=prompt_share[b],
                )
            )
        return out


def _bridge_forward(model: Bridge) -> Any:
    """The bridge's cached forward with :class:`~lensteer.core.plain.PlainView.forward`'s signature."""

    def forward(
        tokens: torch.Tensor, attention_mask: torch.Tensor, cache: Any, *, last_only: bool
    ) -> tuple[Any, Any]:
        with last_position_logits(model) if last_only else nullcontext():
            return model(
                tokens,
                attention_mask=attention_mask,
                past_key_values=cache,
                return_type="logits_and_cache",
                use_cache=True,
            )

    return forward


def _last_column_stats(
    records: Sequence[StepRecord], which: Int[torch.Tensor, " batch"]
) -> tuple[Bool[torch.Tensor, " batch"], Float[torch.Tensor, " batch"], Float[torch.Tensor, " batch"]]:
    """At the last position (the one choosing the next token): did any steering fire, the total edit
    size, and each row's projection on steering ``which[row]``'s unit at its earliest hooked layer."""
    batch = which.shape[0]
    fired = torch.zeros(batch, dtype=torch.bool)
    shift = torch.zeros(batch)
    proj = torch.full((batch,), torch.nan)
    seen: set[int] = set()
    for r in records:  # in the order the hooks ran: a steering's first record is its earliest layer
        fired |= r.fired[:, -1]
        shift += r.shift[:, -1]
        if r.steering_index not in seen:
            seen.add(r.steering_index)
            proj = torch.where(which == r.steering_index, r.projection[:, -1], proj)
    return fired, shift, proj


def _prompt_share(ctx: SteeringContext, width: int, prefix_fired: torch.Tensor) -> list[float]:
    """Share of each row's prompt tokens that any steering changed (from the prefill forwards)."""
    assert ctx.prompt_lens is not None
    batch = int(ctx.prompt_lens.shape[0])
    fired = torch.zeros(batch, width, dtype=torch.bool)
    start = prefix_fired.shape[1]
    fired[:, :start] = prefix_fired
    for r in ctx.records:
        fired[:, start:] |= r.fired[:, : width - start]
    return [float(fired[b].sum()) / int(ctx.prompt_lens[b]) for b in range(batch)]


def generate_conversations(
    model: Bridge,
    conversations: Sequence[Sequence[str]],
    *,
    system: "str | Sequence[str | None] | None" = None,
    steering: "Steering | Sequence[Steering] | None" = None,
    max_new_tokens: int = 48,
    **kwargs: Any,
) -> list[Generations]:
    """Multi-turn generation: for each conversation, answer its user turns one after another.

    Turn ``k`` sees the earlier user turns and the model's own (steered) answers as history, the
    seed paper's multi-turn setting. All conversations advance together, batched per turn.

    Args:
        conversations: One list of user messages per conversation (all the same number of turns).
        system: Optional system prompt for every conversation, or one (or ``None``) per conversation.
        steering: Applied on every turn.
            (``prompt_steerings=[...]``, one per conversation, runs several conditions together.)
        max_new_tokens: Passed to :func:`generate`.
        **kwargs: Passed to :func:`generate`.

    Returns:
        ``result[k]`` is the :class:`Generations` of turn ``k`` (one entry per conversation).
    """
    if not conversations or any(not c for c in conversations):
        raise DataError("pass a non-empty list of conversations, each with at least one user turn")
    n_turns = {len(c) for c in conversations}
    if len(n_turns) != 1:
        raise DataError(f"conversations have different numbers of turns {sorted(n_turns)}; pad or split them")
    systems: list[str | None] = (
        [system] * len(conversations) if system is None or isinstance(system, str) else list(system)
    )
    if len(systems) != len(conversations):
        raise DataError(
            f"{len(systems)} system prompts for {len(conversations)} conversations; give one per conversation"
        )
    histories: list[tuple[Turn, ...]] = [() for _ in conversations]
    turns: list[Generations] = []
    for k in range(n_turns.pop()):
        prompts = [
            ChatPrompt(user=c[k], system=s, history=h)
            for c, s, h in zip(conversations, systems, histories, strict=True)
        ]
        out = generate(model, prompts, steering=steering, max_new_tokens=max_new_tokens, **kwargs)
        turns.append(out)
        histories = [
            (*h, Turn(role="user", content=c[k]), Turn(role="assistant", content=t))
            for c, h, t in zip(conversations, histories, out.texts, strict=True)
        ]
    return turns
