"""Teacher-forced response scores run a prefix every row shares (a system prompt, few-shot turns) once."""

import torch

import lensteer
from lensteer.core import forward
from lensteer.core.plain import MIN_SHARED_PREFIX

SYSTEM = "You are a terse assistant who answers every question in one short line, and never more."


def test_response_logprob_with_a_shared_prefix_equals_the_whole_batch_through_the_bridge(
    tiny_llama_bridge, monkeypatch
):
    users = ["hi", "a much longer question, to force some left padding here", "mid length one"]
    replies = ["hello there", "no", "a reply of middling length"]
    prompts = [
        lensteer.ChatPrompt(user=u, system=SYSTEM, response=r) for u, r in zip(users, replies, strict=True)
    ]
    prompts.append(
        lensteer.ChatPrompt(user="why?", system="Other system prompt, as long as it gets.", response="ok")
    )
    prefixes: list[int] = []  # the shared prefixes run once (a spy)
    real = forward.relay_after_prefix
    monkeypatch.setattr(forward, "relay_after_prefix", lambda t, a, p: prefixes.append(p) or real(t, a, p))
    shared = forward.response_logprob(tiny_llama_bridge, prompts[:3])
    mixed = forward.response_logprob(tiny_llama_bridge, prompts)  # the system prompts differ: no prefix
    assert len(prefixes) == 1 and prefixes[0] >= MIN_SHARED_PREFIX
    with monkeypatch.context() as m:
        m.setenv("LENSTEER_DECODE", "bridge")  # no plain view: every batch whole through the bridge
        bridge = forward.response_logprob(tiny_llama_bridge, prompts)
    torch.testing.assert_close(shared, bridge[:3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed, bridge, rtol=1e-5, atol=1e-5)
    assert len(prefixes) == 1
