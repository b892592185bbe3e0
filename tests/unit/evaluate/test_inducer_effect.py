"""inducer_effect: the reply-only log-prob under a prefill, the paired margin change, its sign test."""

import pytest
import torch

from lensteer.core.chat import ChatPrompt, tokenize_prompt
from lensteer.core.datasets import load_dataset
from lensteer.core.inducers import Inducer
from lensteer.errors import DataError
from lensteer.evaluate.inducers import inducer_effect, reply_logprob
from lensteer.evaluate.steerability import preference_margin


def _by_hand(model, prompt, prefill, reply):
    """Mean log-prob of the reply's own tokens after the prompt and the prefill, from one full forward."""
    full = tokenize_prompt(
        model, ChatPrompt(user=prompt, response=f"{prefill} {reply}" if prefill else reply)
    )
    pre = tokenize_prompt(model, ChatPrompt(user=prompt, response=prefill)) if prefill else None
    with torch.inference_mode():
        logp = torch.log_softmax(model(full.tokens[None]).float(), dim=-1)[0]
    start = pre.response[1] if pre is not None else full.response[0]
    r1 = full.response[1]
    return float(logp[start - 1 : r1 - 1].gather(-1, full.tokens[start:r1, None]).mean())


def test_a_prefill_is_context_and_only_the_reply_is_scored(tiny_llama_bridge):
    model = tiny_llama_bridge
    prompts = [ChatPrompt(user="hello there", response="Sure:"), ChatPrompt(user="a b c")]
    replies = ["step one", "d e f g"]
    got = reply_logprob(model, prompts, replies)
    expected = [
        _by_hand(model, "hello there", "Sure:", "step one"),
        _by_hand(model, "a b c", None, "d e f g"),
    ]
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-4, atol=1e-4)
    with pytest.raises(DataError, match="as many replies as prompts"):
        reply_logprob(model, prompts, ["x"])


def test_the_effect_is_the_paired_change_of_the_margin(tiny_llama_bridge):
    model = tiny_llama_bridge
    data = load_dataset("compassion").with_responses().train.stratified(6)
    wrap = Inducer(name="shout", kind="wrapper", template="{request} !!!")
    effect = inducer_effect(model, data, wrap, n_boot=200)
    bare = data.chat_prompts()
    wrapped = [wrap.apply(p) for p in bare]

    def margin(prompts):
        with_reply = [
            ChatPrompt(user=p.user, response=ex.aligned_response)
            for p, ex in zip(prompts, data.examples, strict=True)
        ]
        against = [
            ChatPrompt(user=p.user, response=ex.misaligned_response)
            for p, ex in zip(prompts, data.examples, strict=True)
        ]
        return preference_margin(model, with_reply, against)

    delta = margin(wrapped) - margin(bare)
    assert effect.n == 6 and effect.delta == pytest.approx(float(delta.mean()), abs=1e-5)
    assert (effect.lower, effect.higher) == (int((delta < 0).sum()), int((delta > 0).sum()))
    assert effect.delta_ci[0] <= effect.delta <= effect.delta_ci[1]
    assert effect.to_dict()["inducer"] == "shout"


def test_an_inducer_that_changes_nothing_has_no_effect(tiny_llama_bridge):
    data = load_dataset("honesty").with_responses().train.stratified(4)
    same = Inducer(name="same", kind="system", system="Be brief.")
    effect = inducer_effect(tiny_llama_bridge, data, same, base_system="Be brief.", n_boot=100)
    assert effect.delta == 0.0 and (effect.lower, effect.higher, effect.p_value) == (0, 0, 1.0)
    assert not effect.pushes
    with pytest.raises(DataError, match="without written replies"):
        inducer_effect(tiny_llama_bridge, load_dataset("borderline").train.head(3), same)  # prompts only
