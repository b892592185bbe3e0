"""The projection each step records: ``h . unit`` before the edit, at the position that chose each token."""

import math

import torch

import lensteer
from lensteer.steering import Steering, StepRecord

PROMPTS = ["hello there", "a much longer prompt, to force padding", "hi"]


def _unit(seed: int, d: int) -> torch.Tensor:
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def _unsteered_projection(model, prompt_tokens, tokens, hook, unit):
    """``resid @ unit`` at ``hook`` on an unsteered forward of prompt + answer, row alone (no padding),
    at the positions that chose each generated token (the last prompt token chose the first)."""
    full = torch.cat([prompt_tokens, tokens])[None]
    with torch.inference_mode():
        _, cache = model.run_with_cache(full, names_filter=lambda name: name == hook)
    p, n = prompt_tokens.shape[0], tokens.shape[0]
    return cache[hook][0, p - 1 : p - 1 + n] @ unit


def test_the_recorded_projection_is_the_unsteered_residual_on_the_unit_in_a_left_padded_batch(
    tiny_llama_bridge,
):
    model = tiny_llama_bridge
    v = _unit(11, model.cfg.d_model)
    with torch.inference_mode():
        acts = lensteer.collect_activations(model, PROMPTS, layers=[0], position="last")[:, 0]
    tau = float((acts @ v).median())
    # StMP at layers 0 and 1: the edit at layer 0 mirrors a token's projection (2 tau - s), so a
    # projection read after the edit, at the wrong layer or at a padded position would not match
    s = Steering(unit=v, layers=(0, 1), mode="stmp", threshold=tau, scale=1.0, positions="all")
    gens = lensteer.generate(model, PROMPTS, steering=s, max_new_tokens=6, batch_size=3)
    assert len({len(p) for p in gens.prompt_tokens}) == 3  # three lengths: one batch with real left padding
    hook = s.hook_names(model)[0]
    for i in range(len(PROMPTS)):
        assert gens.projection[i].shape == gens.fired[i].shape == gens.tokens[i].shape
        expected = _unsteered_projection(model, gens.prompt_tokens[i], gens.tokens[i], hook, v)
        torch.testing.assert_close(gens.projection[i], expected, rtol=1e-4, atol=1e-4)
    every = torch.cat(gens.projection)
    assert bool((every < tau).any()) and bool((every >= tau).any())  # the threshold splits the tokens
    assert torch.equal(gens.select([2]).projection[0], gens.projection[2])


def test_each_hook_call_records_the_projection_before_its_edit(tiny_llama_bridge):
    model = tiny_llama_bridge
    v = _unit(12, model.cfg.d_model)
    s = Steering(unit=v, layers=(0,), mode="add", scale=5.0)
    tokens = lensteer.core.chat.tokenize_prompt(model, PROMPTS[1]).tokens[None]
    hook = s.hook_names(model)[0]
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name == hook)
        with lensteer.steer(model, s) as ctx:
            model(tokens)
    (record,) = ctx.records
    assert isinstance(record, StepRecord) and (record.steering_index, record.layer) == (0, 0)
    torch.testing.assert_close(record.projection, cache[hook] @ v, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(record.shift, torch.full_like(record.shift, 5.0))


def test_per_prompt_steerings_report_their_own_projection_and_nan_without_one(tiny_llama_bridge):
    model = tiny_llama_bridge
    a = Steering(unit=_unit(13, model.cfg.d_model), layers=(1,), scale=2.0)
    b = Steering(unit=_unit(14, model.cfg.d_model), layers=(0,), scale=2.0)
    together = lensteer.generate(model, PROMPTS, prompt_steerings=[a, None, b], max_new_tokens=4)
    alone_a = lensteer.generate(model, PROMPTS[:1], steering=a, max_new_tokens=4)
    alone_b = lensteer.generate(model, PROMPTS[2:], steering=b, max_new_tokens=4)
    torch.testing.assert_close(together.projection[0], alone_a.projection[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(together.projection[2], alone_b.projection[0], rtol=1e-4, atol=1e-4)
    assert bool(together.projection[1].isnan().all()) and together.projection[1].numel() > 0
    plain = lensteer.generate(model, PROMPTS[:1], max_new_tokens=3)
    assert all(math.isnan(x) for x in plain.projection[0].tolist()) and plain.projection[0].numel() > 0
