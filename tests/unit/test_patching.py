"""Patching equals TransformerLens' own patching functions, and fails clearly on bad input."""

import pytest
import torch
from transformer_lens import patching as tl_patching

import lensteer
from lensteer.patching import (
    PatchingError,
    logit_diff_metric,
    patch_heads,
    patch_layers,
    patch_residual,
)

METRIC = logit_diff_metric(3, 5)


def _tl_metric(logits):
    return METRIC(logits[:, -1]).mean()


@pytest.fixture(scope="module")
def pair():
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 64, (4, 7), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(0, 64, (4,), generator=g)
    return clean, corrupted


@pytest.mark.parametrize("max_rows", [4, 12, 1000])  # one cell per forward, several, everything at once
def test_residual_patching_equals_transformer_lens(tiny_bridge, pair, max_rows):
    clean, corrupted = pair
    _, clean_cache = tiny_bridge.run_with_cache(clean)
    expected = tl_patching.get_act_patch_resid_pre(tiny_bridge, corrupted, clean_cache, _tl_metric)
    ours = patch_residual(tiny_bridge, clean, corrupted, METRIC, max_rows=max_rows)
    assert ours.mean().shape == expected.shape == (4, 7)
    assert torch.allclose(ours.mean(), expected, atol=1e-4)


def test_mlp_attn_and_head_patching_equal_transformer_lens(tiny_bridge, pair):
    clean, corrupted = pair
    _, cache = tiny_bridge.run_with_cache(clean)
    mlp = tl_patching.get_act_patch_mlp_out(tiny_bridge, corrupted, cache, _tl_metric)
    attn = tl_patching.get_act_patch_attn_out(tiny_bridge, corrupted, cache, _tl_metric)
    heads = tl_patching.get_act_patch_attn_head_out_all_pos(tiny_bridge, corrupted, cache, _tl_metric)
    assert torch.allclose(patch_residual(tiny_bridge, clean, corrupted, METRIC, site="mlp_out").mean(), mlp, atol=1e-4)
    assert torch.allclose(patch_residual(tiny_bridge, clean, corrupted, METRIC, site="attn_out").mean(), attn, atol=1e-4)
    assert torch.allclose(patch_heads(tiny_bridge, clean, corrupted, METRIC).mean(), heads, atol=1e-4)


def test_whole_layer_patching_of_the_residual_restores_the_source(tiny_bridge, pair):
    clean, corrupted = pair
    res = patch_layers(tiny_bridge, clean, corrupted, METRIC, site="resid_pre")
    assert torch.allclose(res.normalized(), torch.ones(4, 1), atol=1e-4)  # patching every position = clean run


def test_denoising_and_noising_and_normalisation(tiny_bridge, pair):
    clean, corrupted = pair
    den = patch_residual(tiny_bridge, clean, corrupted, METRIC)
    noi = patch_residual(tiny_bridge, clean, corrupted, METRIC, direction="noising")
    assert torch.allclose(den.source, noi.target) and torch.allclose(den.target, noi.source)
    # only position 2 differs: at layer 0 patching it restores the source exactly, other positions do nothing
    assert torch.allclose(den.normalized()[0, 2], torch.tensor(1.0), atol=1e-4)
    others = [p for p in range(7) if p != 2]
    assert torch.allclose(den.normalized()[0, others], torch.zeros(6), atol=1e-4)
    assert den.top_cells(1)[0][:2] == (0, "2")
    assert den.to_dict()["direction"] == "denoising"


def test_patching_works_on_chat_prompts(tiny_llama_bridge):
    clean = [lensteer.ChatPrompt(user="abcd"), lensteer.ChatPrompt(user="wxyz")]
    corrupted = [lensteer.ChatPrompt(user="abce"), lensteer.ChatPrompt(user="wxya")]
    res = patch_residual(tiny_llama_bridge, clean, corrupted, logit_diff_metric(10, 11))
    n_tok = lensteer.tokenize_prompt(tiny_llama_bridge, clean[0]).n_tokens
    assert res.mean().shape == (2, n_tok) and len(res.col_labels) == n_tok


def test_equal_length_pairs_selects_rectangular_batches(tiny_llama_bridge):
    idx = lensteer.equal_length_pairs(tiny_llama_bridge, ["ab", "abc", "xy", "q"], ["cd", "abcd", "zz", "r"])
    assert idx == [0, 2]


@pytest.mark.parametrize(
    ("clean", "corrupted", "kwargs", "match"),
    [
        (torch.zeros(2, 5), torch.zeros(2, 6), {}, r"clean tokens \(2, 5\) and corrupted tokens \(2, 6\)"),
        (torch.zeros(2, 5), torch.zeros(2, 5), {"direction": "sideways"}, "direction must be 'denoising' or 'noising'"),
        (torch.zeros(2, 5), torch.zeros(2, 5), {"metric": lambda x: x.sum()}, r"must map \[batch, d_vocab\]"),
        (torch.zeros(2, 5), torch.zeros(2, 5), {"metric": lambda x: x[:, 0] * float("nan")}, "NaN"),
        (torch.zeros(2, 5), torch.zeros(2, 5), {"layers": [7]}, "layer 7 is out of range"),
    ],
)
def test_bad_patching_input_raises_clear_errors(tiny_bridge, clean, corrupted, kwargs, match):
    metric = kwargs.pop("metric", METRIC)
    unchecked = getattr(patch_residual, "__wrapped__", patch_residual)  # our messages, past jaxtyping's check
    with pytest.raises(lensteer.LensteerError, match=match):
        unchecked(tiny_bridge, clean.long(), corrupted.long(), metric, **kwargs)


def test_chat_prompts_of_different_lengths_are_refused(tiny_llama_bridge):
    with pytest.raises(PatchingError, match=r"different token lengths \[\d+, \d+\]"):
        patch_residual(tiny_llama_bridge, ["ab", "abc"], ["cd", "cde"], METRIC)


def test_attribution_patching_matches_baselines_and_correlates_with_exact_patching(tiny_bridge, pair):
    from lensteer.patching import attribute_residual

    clean, corrupted = pair
    exact = patch_residual(tiny_bridge, clean, corrupted, METRIC)
    approx = attribute_residual(tiny_bridge, clean, corrupted, METRIC)
    assert approx.method == "attribution" and approx.mean().shape == exact.mean().shape
    assert torch.allclose(approx.source, exact.source, atol=1e-4) and torch.allclose(approx.target, exact.target, atol=1e-4)
    # cells where source and target agree have zero estimated effect
    untouched = [p for p in range(7) if p != 2]
    assert torch.allclose(approx.mean()[0, untouched], approx.target.mean().expand(6), atol=1e-5)
    assert approx.correlation(exact) > 0.5
    assert tiny_bridge.list_hooks() == {}
