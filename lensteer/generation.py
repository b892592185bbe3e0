"""Greedy generation from chat prompts, batched with left padding and the KV cache.

This is the foundation's generation path (used for parity tests and for measuring what the
bundled misaligning contexts do to the model). Steered generation builds on it.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from lensteer.chat import ChatPrompt, length_sorted_batches, pad_id_of, tokenize_prompt
from lensteer.errors import ConfigError, DataError


@dataclass(frozen=True, kw_only=True, eq=False)
class Generations:
    """Generated continuations, one per prompt, in prompt order (cut at the end-of-turn token)."""

    texts: tuple[str, ...]
    tokens: tuple[torch.Tensor, ...]
    prompt_tokens: tuple[torch.Tensor, ...]

    def __len__(self) -> int:
        return len(self.texts)

    def __iter__(self) -> Any:
        return iter(self.texts)


def _eos_ids(model: Any) -> set[int]:
    tok = model.tokenizer
    ids = {tok.eos_token_id} if tok is not None and tok.eos_token_id is not None else set()
    return {int(i) for i in ids}


def generate(
    model: Any,
    prompts: Sequence["str | ChatPrompt"],
    *,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    chat: bool = True,
    use_kv_cache: bool = True,
    progress: bool = False,
) -> Generations:
    """Greedy-decode a continuation for each prompt.

    Args:
        model: A ``TransformerBridge`` with a tokenizer.
        prompts: User messages or :class:`~lensteer.ChatPrompt` objects (a ``response`` is a prefill).
        max_new_tokens: Tokens to generate at most; generation stops early at end of turn.
        batch_size: Prompts per batch (left-padded, with an attention mask).
        chat: Apply the chat template to strings.
        use_kv_cache: Use the KV cache (``False`` recomputes the whole sequence each step).
        progress: Show a progress bar.

    Returns:
        :class:`Generations` with the decoded texts and the generated token ids.
    """
    if isinstance(prompts, str) or len(prompts) == 0:
        raise DataError("pass a non-empty list of prompts")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    tokenized = [tokenize_prompt(model, p, chat=chat) for p in prompts]
    eos = _eos_ids(model)
    device = next(iter(model.parameters())).device
    generated: dict[int, torch.Tensor] = {}
    batches = length_sorted_batches(tokenized, batch_size, pad_id_of(model))
    for rows, batch in tqdm(batches, desc="generate", disable=not progress, unit="batch"):
        with torch.inference_mode():
            out = model.generate(
                batch.tokens.to(device), attention_mask=batch.attention_mask.to(device),
                max_new_tokens=max_new_tokens, do_sample=False, stop_at_eos=bool(eos),
                use_past_kv_cache=use_kv_cache, verbose=False, return_type="tokens",
            )
        new = out[:, batch.tokens.shape[1] :].cpu()
        for j, i in enumerate(rows):
            ids = new[j]
            stops = [k for k, t in enumerate(ids.tolist()) if t in eos]
            generated[i] = ids[: stops[0]] if stops else ids
    tokens = tuple(generated[i] for i in range(len(tokenized)))
    texts = tuple(model.tokenizer.decode(t, skip_special_tokens=True) for t in tokens)
    return Generations(texts=texts, tokens=tokens, prompt_tokens=tuple(p.tokens for p in tokenized))
