"""Teacher-forced log-likelihood of responses: how much a model prefers one answer to another.

Used to measure what a context (few-shot turns, a system prompt) does to the model without
sampling: the mean log-probability per response token of an aligned vs a misaligned response.
"""

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from lensteer.core.chat import ChatPrompt, length_sorted_batches, pad_id_of, tokenize_prompt
from lensteer.core.forward import final_normalized, unembed
from lensteer.errors import DataError


def response_logprob(
    model: Any, prompts: Sequence[ChatPrompt], *, batch_size: int = 16, progress: bool = False,
) -> Float[torch.Tensor, " n_prompts"]:
    """Mean log-probability per token of each prompt's ``response`` given everything before it.

    Raises:
        DataError: A prompt has no response.
    """
    tokenized = [tokenize_prompt(model, p) for p in prompts]
    for i, tp in enumerate(tokenized):
        if tp.response[1] <= tp.response[0]:
            raise DataError(f"prompt {i} has no response to score; set ChatPrompt(response=...)")
    out = torch.empty(len(tokenized))
    device = next(iter(model.parameters())).device
    batches = length_sorted_batches(tokenized, batch_size, pad_id_of(model))
    for rows, batch in tqdm(batches, disable=not progress, desc="score"):
        with torch.inference_mode():
            hidden = final_normalized(model, batch.tokens.to(device), batch.attention_mask.to(device))
            width = batch.tokens.shape[1]
            for j, i in enumerate(rows):
                pad = width - tokenized[i].n_tokens
                r0, r1 = tokenized[i].response
                targets = batch.tokens[j, pad + r0 : pad + r1].to(device)
                # position t predicts token t+1: logits only where a response token is predicted
                logprobs = torch.log_softmax(unembed(model, hidden[j, pad + r0 - 1 : pad + r1 - 1]).float(), dim=-1)
                out[i] = logprobs.gather(-1, targets[:, None]).mean().cpu()
    return out
