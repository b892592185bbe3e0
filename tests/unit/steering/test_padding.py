"""Steering the right tokens when rows are padded, and the first generated token under "generated"."""

import pytest
import torch

import lensteer
from lensteer.core.chat import tokenize_batch, tokenize_prompt
from lensteer.steering import LastK, Steering, Window

PROMPTS = ["hi", "a much longer prompt, to force padding", "mid length one"]
SPECS = ["all", "prompt", "generated", Window(1, None), Window(-3, None), Window(2, 5), LastK(2), (0, -1)]


def _unit(seed: int, d: int) -> torch.Tensor:
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


@pytest.mark.parametrize("positions", SPECS, ids=str)
@pytest.mark.parametrize("mode", ["add", "stmp"])
def test_a_plain_forward_on_a_left_padded_batch_steers_what_each_row_alone_would(
    tiny_llama_bridge, positions, mode
):
    model = tiny_llama_bridge
    kwargs = {"threshold": 0.0} if mode == "stmp" else {}
    s = Steering(
        unit=_unit(1, model.cfg.d_model), layers=(0,), mode=mode, scale=4.0, positions=positions, **kwargs
    )
    batch = tokenize_batch(model, PROMPTS)
    assert len(set(batch.attention_mask.sum(1).tolist())) == 3  # three lengths: real left padding
    with torch.inference_mode(), lensteer.steer(model, s) as ctx:
        batched = model(batch.tokens, attention_mask=batch.attention_mask)
        fired_batched = ctx.records[-1][2]
    for i, prompt in enumerate(PROMPTS):
        tokens = tokenize_prompt(model, prompt).tokens[None]
        with torch.inference_mode(), lensteer.steer(model, s) as ctx:
            alone = model(tokens)
            fired_alone = ctx.records[-1][2]
        n = tokens.shape[1]
        torch.testing.assert_close(batched[i, -n:], alone[0], rtol=1e-4, atol=1e-4)
        assert torch.equal(fired_batched[i, -n:], fired_alone[0])
        assert not fired_batched[i, :-n].any()  # padding is never steered


def test_generated_steers_the_position_that_chooses_the_first_generated_token(tiny_llama_bridge):
    model = tiny_llama_bridge
    s = Steering(unit=_unit(2, model.cfg.d_model), layers=(0, 1), scale=40.0, positions="generated")
    tokens = tokenize_prompt(model, "hello there").tokens[None]
    with torch.inference_mode():
        plain = model(tokens)[0, -1]
        with lensteer.steer(model, s) as ctx:
            steered = model(tokens)[0, -1]
    fired = ctx.records[-1][2][0]
    assert fired[-1] and not fired[:-1].any()  # the last prompt token only: it picks the first new token
    assert not torch.allclose(plain, steered)
    out = lensteer.generate(model, ["hello there"], steering=s, max_new_tokens=3)
    assert bool(out.fired[0][0])  # the first generated token was chosen under steering


def test_the_mask_reader_comes_off_with_the_steering_hooks_even_on_error(tiny_llama_bridge):
    model = tiny_llama_bridge
    s = Steering(unit=_unit(3, model.cfg.d_model), layers=(0,), scale=1.0)
    with pytest.raises(RuntimeError, match="boom"), lensteer.steer(model, s):
        assert len(model._forward_pre_hooks) == 1
        raise RuntimeError("boom")
    assert len(model._forward_pre_hooks) == 0 and model.list_hooks() == {}
