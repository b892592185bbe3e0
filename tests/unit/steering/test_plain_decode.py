"""Decoding through the plain Hugging Face view (``lensteer.core.plain``) equals decoding through the bridge.

Each test generates twice, once as is and once with ``LENSTEER_DECODE=bridge``, and requires the same
tokens and the same per-token steering records; a spy proves the plain path really ran.
"""

import pytest
import torch

import lensteer
import lensteer.steering.generation as generation
from lensteer.core import plain
from lensteer.steering import Gate, LastK, Steering, Window

PROMPTS = ["hi", "a much longer prompt, to force some left padding", "mid length one", "why?"]
SYSTEM = "You are a terse assistant who answers in one short line."


def _unit(seed: int, d: int) -> torch.Tensor:
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


@pytest.fixture(scope="module")
def tiny_qwen2_bridge(tiny_tokenizer):
    from builders import make_tiny_family_bridge

    return make_tiny_family_bridge(tiny_tokenizer, "qwen2")


@pytest.fixture(scope="module")
def tiny_gemma_bridge(tiny_tokenizer):
    from builders import make_tiny_family_bridge

    return make_tiny_family_bridge(tiny_tokenizer, "gemma")


@pytest.fixture
def plain_calls(monkeypatch):
    """How many times decoding got a plain view (``None`` results not counted)."""
    calls = []
    real = generation.plain_view
    monkeypatch.setattr(generation, "plain_view", lambda m: calls.append(1) or real(m) if real(m) else None)
    return calls


def _both(model, monkeypatch, prompts, **kw):
    fast = lensteer.generate(model, prompts, **kw)
    with monkeypatch.context() as m:
        m.setenv("LENSTEER_DECODE", "bridge")
        assert plain.plain_view(model) is None
        reference = lensteer.generate(model, prompts, **kw)
    return fast, reference


def _assert_same(fast, reference):
    for i in range(len(reference)):
        assert torch.equal(fast.tokens[i], reference.tokens[i]), (i, fast.texts[i], reference.texts[i])
        assert torch.equal(fast.fired[i], reference.fired[i])
        torch.testing.assert_close(fast.shift[i], reference.shift[i], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(
            fast.projection[i], reference.projection[i], rtol=1e-4, atol=1e-4, equal_nan=True
        )
        assert fast.prompt_fired_share[i] == pytest.approx(reference.prompt_fired_share[i])
    assert fast.gated == reference.gated


@pytest.mark.parametrize("fixture", ["tiny_llama_bridge", "tiny_qwen2_bridge", "tiny_gemma_bridge"])
def test_the_plain_view_shares_every_weight_and_holds_no_bridge_component(fixture, request):
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    model = request.getfixturevalue(fixture)
    view = plain.plain_view(model)
    assert view is not None and len(view.layers) == model.cfg.n_layers
    assert not any(isinstance(m, GeneralizedComponent) for m in view.module.modules())
    ours = {id(p) for p in view.module.parameters()}
    assert ours == {id(p) for p in model.original_model.parameters()}  # the same tensors, not copies
    assert plain.plain_view(model) is view  # built once


def test_no_plain_view_where_the_bridge_computes_with_weights_of_its_own(
    tiny_bridge, tiny_tokenizer, monkeypatch
):
    from builders import make_tiny_family_bridge

    assert plain.plain_view(tiny_bridge) is None  # a native bridge has no Hugging Face model to unwrap
    gpt2 = make_tiny_family_bridge(tiny_tokenizer, "gpt2")  # the bridge splits GPT-2's fused QKV into copies
    assert plain.plain_view(gpt2) is None
    # accelerate's device_map dispatch rebinds module forwards (a copy would call the original): no view
    from builders import make_tiny_llama_bridge

    dispatched = make_tiny_llama_bridge(tiny_tokenizer, seed=1)
    assert plain.plain_view(dispatched) is not None  # built before the dispatch: checked again on every call
    layer = dispatched.blocks[0].original_component
    layer.forward = layer.forward  # an instance attribute, as accelerate's add_hook_to_module sets
    assert plain.plain_view(dispatched) is None
    s = Steering(unit=_unit(6, gpt2.cfg.d_model), layers=(0,), scale=3.0)
    fast, reference = _both(gpt2, monkeypatch, PROMPTS[:2], steering=s, max_new_tokens=4)
    _assert_same(fast, reference)  # generation still works, through the bridge


@pytest.mark.parametrize("fixture", ["tiny_llama_bridge", "tiny_qwen2_bridge", "tiny_gemma_bridge"])
@pytest.mark.parametrize(
    ("mode", "site", "positions"),
    [
        ("add", "resid_pre", "all"),
        ("swfc", "resid_post", "generated"),
        ("sttp", "resid_pre", Window(1, None)),
        ("stmp", "resid_post", LastK(2)),
        ("ablate", "resid_post", "prompt"),
    ],
    ids=str,
)
def test_steered_decoding_is_the_bridge_s_token_for_token(
    fixture, mode, site, positions, request, monkeypatch, plain_calls
):
    model = request.getfixturevalue(fixture)
    v = _unit(1, model.cfg.d_model)
    extra = (
        {"threshold": 100.0, **({"target": 101.0} if mode == "sttp" else {})}
        if mode in ("sttp", "stmp")
        else {}
    )
    s = Steering(unit=v, layers=(0, 1), mode=mode, scale=4.0, site=site, positions=positions, **extra)
    fast, reference = _both(model, monkeypatch, PROMPTS, steering=s, max_new_tokens=8, batch_size=4)
    assert plain_calls  # the plain path ran
    _assert_same(fast, reference)
    assert any(bool(f.any()) for f in fast.fired) or mode == "ablate" or positions == "prompt"


def test_several_conditions_gates_a_shared_prefix_and_sampling_match_the_bridge(
    tiny_llama_bridge, monkeypatch, plain_calls
):
    model = tiny_llama_bridge
    v, w = _unit(2, model.cfg.d_model), _unit(3, model.cfg.d_model)
    prompts = [lensteer.ChatPrompt(user=u, system=SYSTEM) for u in PROMPTS]
    with torch.inference_mode():
        proj = lensteer.collect_activations(model, prompts, layers=[1], position="last")[:, 0] @ v
    gate = Gate(unit=v, layer=1, threshold=float(proj.median()))  # opens for some rows only
    conditions = [
        Steering(unit=v, layers=(0,), scale=3.0, gate=gate),
        None,
        Steering(unit=w, layers=(1,), mode="swfc", scale=2.0, site="resid_post"),
        None,
    ]
    for kw in ({}, {"do_sample": True, "temperature": 0.8, "seed": 5}):
        fast, reference = _both(
            model, monkeypatch, prompts, prompt_steerings=conditions, max_new_tokens=6, **kw
        )
        _assert_same(fast, reference)
    prefixes = []
    real = generation.prefill_shared_prefix
    monkeypatch.setattr(
        generation, "prefill_shared_prefix", lambda *a: prefixes.append(a[3].length) or real(*a)
    )
    _assert_same(
        *_both(
            model, monkeypatch, prompts, steering=Steering(unit=w, layers=(1,), scale=3.0), max_new_tokens=6
        )
    )
    assert len(prefixes) == 2 and prefixes[0] >= 16  # the system prompt was run once, on both paths
    assert plain_calls


def test_a_user_hook_another_site_or_compatibility_mode_keeps_the_bridge_path(
    tiny_llama_bridge, monkeypatch, plain_calls
):
    model = tiny_llama_bridge
    seen = []
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda x, hook: seen.append(1))]):
        assert plain.plain_view(model) is None
        lensteer.generate(model, ["hi"], max_new_tokens=3)
    assert len(seen) == 3  # the user's hook saw every step: decoding went through the bridge
    handle = model.blocks[1].register_forward_pre_hook(lambda module, args: seen.append(2))  # plain PyTorch
    try:
        assert plain.foreign_hooks(model) == ["blocks.1"] and plain.plain_view(model) is None
    finally:
        handle.remove()
    assert plain.foreign_hooks(model) == [] and plain.plain_view(model) is not None
    mid = Steering(unit=_unit(4, model.cfg.d_model), layers=(0,), scale=2.0, site="resid_mid")
    lensteer.generate(model, ["hi"], steering=mid, max_new_tokens=3)
    assert not plain_calls  # resid_mid lies inside a decoder layer: only the bridge has it
    monkeypatch.setattr(model, "compatibility_mode", True, raising=False)
    assert plain.plain_view(model) is None  # folded weights live in the bridge's components


def test_an_error_mid_decode_leaves_no_hook_on_the_view_or_the_bridge(tiny_llama_bridge, monkeypatch):
    import lensteer.steering.hooks as hooks

    model = tiny_llama_bridge
    calls = []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("boom")
        return real(*a, **k)

    real = hooks.steer_resid
    monkeypatch.setattr(hooks, "steer_resid", failing)
    s = Steering(unit=_unit(5, model.cfg.d_model), layers=(0, 1), scale=2.0, site="resid_post")
    with pytest.raises(RuntimeError, match="boom"):
        lensteer.generate(model, PROMPTS, steering=s, max_new_tokens=6)
    view = plain.plain_view(model)
    assert view is not None and len(calls) == 5
    assert plain.foreign_hooks(view.module) == []
    assert model.list_hooks() == {}


def test_mask_positions_count_real_tokens_only():
    mask = torch.tensor(
        [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 0, 0, 1]]
    )  # left pad; none; prefix-then-pad
    assert plain.mask_positions(mask, 5).tolist() == [[1, 1, 0, 1, 2], [0, 1, 2, 3, 4], [0, 1, 1, 1, 2]]
    assert plain.mask_positions(mask, 1).tolist() == [[2], [4], [2]]
