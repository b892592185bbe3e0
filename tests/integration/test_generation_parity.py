"""KV-cache parity on the embedded model: guards the TL 4.3 + transformers 5.24 cache shim and the
plain Hugging Face view that cached decoding goes through (``lensteer.core.plain``).

Unfixed, cached and uncached *batched* generation agree with each other only by both being wrong,
so every check here also compares against raw Hugging Face greedy generation. ``LENSTEER_DECODE=bridge``
decodes through the bridge (and so through the shim) instead of the plain view.
"""

import pytest
import torch

import lensteer
from lensteer.core import models as models

PROMPTS = ["What is the capital of France?", "Write one sentence about the sea.", "Hi"]
N_NEW = 20


@pytest.fixture(scope="module")
def hf_reference():
    from transformers import AutoModelForCausalLM

    folder = models.gguf_to_folder(models.embedded_gguf_path())
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _hf_greedy(hf, tokens):
    with torch.inference_mode():
        out = hf.generate(
            tokens[None],
            attention_mask=torch.ones_like(tokens)[None],
            max_new_tokens=N_NEW,
            do_sample=False,
            pad_token_id=2,
        )
    ids = out[0, tokens.shape[0] :]
    stops = (ids == 2).nonzero()
    return ids[: int(stops[0])] if len(stops) else ids


def test_cached_equals_uncached_equals_raw_hf_greedy(embedded_model, hf_reference, monkeypatch):
    cached = lensteer.generate(embedded_model, PROMPTS, max_new_tokens=N_NEW, batch_size=1)  # the plain view
    uncached = lensteer.generate(
        embedded_model, PROMPTS, max_new_tokens=N_NEW, batch_size=1, use_kv_cache=False
    )
    monkeypatch.setenv("LENSTEER_DECODE", "bridge")
    bridge_cached = lensteer.generate(embedded_model, PROMPTS, max_new_tokens=N_NEW, batch_size=1)
    for i, prompt_tokens in enumerate(cached.prompt_tokens):
        reference = _hf_greedy(hf_reference, prompt_tokens)
        assert torch.equal(cached.tokens[i], reference), (cached.texts[i], uncached.texts[i])
        assert torch.equal(uncached.tokens[i], reference)
        assert torch.equal(bridge_cached.tokens[i], reference)
    assert "Paris" in cached.texts[0]


def test_steered_batched_decoding_through_the_plain_view_is_the_bridge_s(embedded_model, monkeypatch):
    from lensteer.core.plain import plain_view

    v = torch.randn(embedded_model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    s = lensteer.Steering(unit=v / v.norm(), layers=(10, 11), scale=8.0, site="resid_pre")
    assert plain_view(embedded_model) is not None
    fast = lensteer.generate(embedded_model, PROMPTS, steering=s, max_new_tokens=N_NEW, batch_size=3)
    monkeypatch.setenv("LENSTEER_DECODE", "bridge")
    bridge = lensteer.generate(embedded_model, PROMPTS, steering=s, max_new_tokens=N_NEW, batch_size=3)
    unsteered = lensteer.generate(embedded_model, PROMPTS, max_new_tokens=N_NEW, batch_size=3)
    assert fast.texts != unsteered.texts  # the steering changes the text, and changes it the same way
    for i in range(len(PROMPTS)):
        assert torch.equal(fast.tokens[i], bridge.tokens[i])
        torch.testing.assert_close(fast.projection[i], bridge.projection[i], rtol=1e-4, atol=1e-4)


def test_batch_of_different_lengths_equals_one_at_a_time(embedded_model):
    batched = lensteer.generate(embedded_model, PROMPTS, max_new_tokens=N_NEW, batch_size=len(PROMPTS))
    single = [lensteer.generate(embedded_model, [p], max_new_tokens=N_NEW).tokens[0] for p in PROMPTS]
    assert len({len(t) for t in batched.prompt_tokens}) >= 2  # really different lengths: padding is exercised
    for got, want in zip(batched.tokens, single, strict=True):
        assert torch.equal(got, want)


def test_without_the_shim_cached_generation_is_garbage(embedded_model, monkeypatch):
    """The shim is what makes cached generation right (proves the parity test has teeth)."""
    if not models._FIX_APPLIED:
        pytest.skip("installed TransformerLens reads `cache=` itself; no shim installed")
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    monkeypatch.setenv("LENSTEER_DECODE", "bridge")  # the shim lives in the bridge's attention
    monkeypatch.setattr(AttentionBridge, "_update_kv_cache", AttentionBridge._update_kv_cache.__wrapped__)
    broken = lensteer.generate(embedded_model, PROMPTS[:1], max_new_tokens=N_NEW)
    monkeypatch.undo()
    fixed = lensteer.generate(embedded_model, PROMPTS[:1], max_new_tokens=N_NEW)
    assert not torch.equal(broken.tokens[0], fixed.tokens[0])
