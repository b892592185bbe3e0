"""Massive-activation tokens found by the norm rule (not by index), and steering that leaves them alone."""

import pytest
import torch

import lensteer
from lensteer.core.chat import ChatPrompt
from lensteer.locate.massive import massive_tokens, norm_limit
from lensteer.steering.hooks import steer_resid
from lensteer.steering.spec import Steering

PLANTED = "#"  # the character whose embedding is blown up


@pytest.fixture(scope="module")
def planted_model(tiny_tokenizer):
    """A tiny random Llama whose ``#`` embedding is 200x larger: every ``#`` carries a massive residual."""
    from transformer_lens import TransformerBridge
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.random.fork_rng():
        torch.random.default_generator.manual_seed(3)
        hf = LlamaForCausalLM(
            LlamaConfig(
                num_hidden_layers=2,
                hidden_size=32,
                intermediate_size=64,
                num_attention_heads=4,
                num_key_value_heads=2,
                vocab_size=len(tiny_tokenizer),
                max_position_embeddings=256,
                bos_token_id=tiny_tokenizer.bos_token_id,
                eos_token_id=tiny_tokenizer.eos_token_id,
                pad_token_id=tiny_tokenizer.pad_token_id,
            )
        ).eval()
    with torch.no_grad():
        hf.model.embed_tokens.weight[tiny_tokenizer.convert_tokens_to_ids(PLANTED)] *= 200.0
    return TransformerBridge.boot_transformers(
        "tiny-llama", hf_model=hf, tokenizer=tiny_tokenizer, device="cpu"
    ).eval()


PROMPTS = [
    ChatPrompt(user="ab#cd"),
    ChatPrompt(user="hello there"),
    ChatPrompt(user="#x"),
    ChatPrompt(user="a longer prompt with one # inside"),
]


def test_norm_limit_is_ratio_times_pooled_median():
    norms = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 100.0])]
    median, limit = norm_limit(norms, 4.0)
    assert median == 3.0 and limit == 12.0  # torch's median of 5 values is the middle one


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_norm_limit_rejects_ratios_that_are_not_above_one(ratio):
    with pytest.raises(lensteer.ConfigError, match="ratio"):
        norm_limit([torch.ones(3)], ratio)


def test_the_rule_finds_every_planted_token_wherever_it_sits(planted_model, tiny_tokenizer):
    found = massive_tokens(planted_model, PROMPTS, layer=0, ratio=4.0)
    assert {t for t, _, _ in found.found} == {PLANTED}
    assert sum(c for *_, c in found.found) == 3  # one per prompt that has one, at three different positions
    assert len({p for _, p, _ in found.found}) == 3
    assert found.largest_ratio > 20 and found.max_norm == pytest.approx(4.0 * found.median_norm)
    # the first token (a sink by index on real chat models) is not massive here, so it is not excluded
    first = tiny_tokenizer.convert_ids_to_tokens(tiny_tokenizer.bos_token_id)
    assert first not in {t for t, _, _ in found.found}


def test_steering_with_the_limit_leaves_massive_tokens_bit_identical():
    resid = torch.randn(1, 4, 8)
    resid[0, 2] *= 100.0
    unit = torch.zeros(8)
    unit[0] = 1.0
    s = Steering(
        unit=unit, layers=(0,), mode="add", scale=5.0, max_norm=float(resid[0, :2].norm(dim=-1).max() * 10)
    )
    edit = steer_resid(resid, s, torch.ones(1, 4, dtype=torch.bool), s.norm_limit(0))
    assert edit.fired.tolist() == [[True, True, False, True]]
    assert torch.equal(edit.resid[0, 2], resid[0, 2])
    assert torch.allclose(edit.resid[0, 0] - resid[0, 0], 5.0 * unit)


def test_steered_forward_skips_the_planted_tokens(planted_model):
    found = massive_tokens(planted_model, PROMPTS, layer=0)
    unit = torch.randn(32, generator=torch.Generator().manual_seed(0))
    s = Steering(unit=unit, layers=(0,), mode="add", scale=3.0, max_norm=found.max_norm)
    tokens = planted_model.to_tokens("ab#cd", prepend_bos=False)
    with lensteer.steer(planted_model, s) as ctx:
        planted_model(tokens)
    fired = ctx.records[0].fired[0]
    is_planted = tokens[0].cpu() == planted_model.tokenizer.convert_tokens_to_ids(PLANTED)
    assert is_planted.sum() == 1
    assert fired.tolist() == (~is_planted).tolist()


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), (1.0,), (1.0, 2.0, 3.0)])
def test_bad_max_norm_is_a_clear_error(bad):
    with pytest.raises(lensteer.ConfigError, match="max_norm"):
        Steering(unit=torch.ones(8), layers=(0, 1), mode="add", max_norm=bad)


def test_per_layer_limits_are_read_in_layer_order():
    s = Steering(unit=torch.ones(8), layers=(1, 0), mode="add", max_norm=(5.0, 7.0))
    assert (s.norm_limit(0), s.norm_limit(1)) == (5.0, 7.0)
