"""Patching equals TransformerLens' own patching functions, and fails clearly on bad input."""

import pytest
import torch
from transformer_lens import patching as tl_patching

import lensteer
from lensteer.locate import incremental
from lensteer.locate.patching import patch_heads, patch_layers, patch_residual
from lensteer.locate.patching_base import PatchingError, logit_diff_metric

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
    assert torch.allclose(
        patch_residual(tiny_bridge, clean, corrupted, METRIC, site="mlp_out").mean(), mlp, atol=1e-4
    )
    assert torch.allclose(
        patch_residual(tiny_bridge, clean, corrupted, METRIC, site="attn_out").mean(), attn, atol=1e-4
    )
    assert torch.allclose(patch_heads(tiny_bridge, clean, corrupted, METRIC).mean(), heads, atol=1e-4)


def test_whole_layer_patching_of_the_residual_restores_the_source(tiny_bridge, pair):
    clean, corrupted = pair
    res = patch_layers(tiny_bridge, clean, corrupted, METRIC, site="resid_pre")
    assert torch.allclose(
        res.normalized(), torch.ones(4, 1), atol=1e-4
    )  # patching every position = clean run


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
    n_tok = lensteer.core.tokenize_prompt(tiny_llama_bridge, clean[0]).n_tokens
    assert res.mean().shape == (2, n_tok) and len(res.col_labels) == n_tok


def test_equal_length_pairs_selects_rectangular_batches(tiny_llama_bridge):
    idx = lensteer.locate.equal_length_pairs(
        tiny_llama_bridge, ["ab", "abc", "xy", "q"], ["cd", "abcd", "zz", "r"]
    )
    assert idx == [0, 2]


@pytest.mark.parametrize(
    ("clean", "corrupted", "kwargs", "match"),
    [
        (torch.zeros(2, 5), torch.zeros(2, 6), {}, r"clean tokens \(2, 5\) and corrupted tokens \(2, 6\)"),
        (
            torch.zeros(2, 5),
            torch.zeros(2, 5),
            {"direction": "sideways"},
            "direction must be 'denoising' or 'noising'",
        ),
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
    from lensteer.locate.attribution import attribute_residual

    clean, corrupted = pair
    exact = patch_residual(tiny_bridge, clean, corrupted, METRIC)
    approx = attribute_residual(tiny_bridge, clean, corrupted, METRIC)
    assert approx.method == "attribution" and approx.mean().shape == exact.mean().shape
    assert torch.allclose(approx.source, exact.source, atol=1e-4) and torch.allclose(
        approx.target, exact.target, atol=1e-4
    )
    # cells where source and target agree have zero estimated effect
    untouched = [p for p in range(7) if p != 2]
    assert torch.allclose(approx.mean()[0, untouched], approx.target.mean().expand(6), atol=1e-5)
    assert approx.correlation(exact) > 0.5
    assert tiny_bridge.list_hooks() == {}


# --------------------------------------------------------------------------- incremental (fast) path


@pytest.fixture(scope="module")
def pair_shared_prefix():
    """Pairs that share their first 3 tokens and differ at different later positions (one at two)."""
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 64, (3, 9), generator=g)
    corrupted = clean.clone()
    corrupted[0, 3] = (clean[0, 3] + 1) % 64
    corrupted[1, 5] = (clean[1, 5] + 7) % 64
    corrupted[2, 4], corrupted[2, 7] = (clean[2, 4] + 3) % 64, (clean[2, 7] + 9) % 64
    return clean, corrupted


def _tl_reference(model, clean, corrupted, site):
    _, cache = model.run_with_cache(clean)
    return tl_patching.generic_activation_patch(
        model,
        corrupted,
        cache,
        _tl_metric,
        tl_patching.layer_pos_patch_setter,
        site,
        index_axis_names=("layer", "pos"),
    )


@pytest.fixture
def no_full_forward_per_cell(monkeypatch):
    """Fail if the reference path (one forward per cell) runs: the incremental path must be used."""
    from lensteer.locate import patching as patching

    def refuse(*args, **kwargs):
        raise AssertionError("fell back to one forward per cell")

    monkeypatch.setattr(patching, "_sweep", refuse)


@pytest.mark.parametrize("model_name", ["tiny_bridge", "tiny_llama_bridge"])
@pytest.mark.parametrize("site", ["resid_pre", "resid_post", "resid_mid", "attn_out", "mlp_out"])
@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_incremental_patching_equals_transformer_lens(
    request, pair_shared_prefix, model_name, site, direction, no_full_forward_per_cell
):
    model = request.getfixturevalue(model_name)
    clean, corrupted = pair_shared_prefix
    source, target = (clean, corrupted) if direction == "denoising" else (corrupted, clean)
    expected = _tl_reference(model, source, target, site)
    ours = patch_residual(model, clean, corrupted, METRIC, site=site, direction=direction, max_rows=7)
    assert torch.allclose(ours.mean(), expected, atol=1e-4)
    # cells before a pair's first difference are the target run itself
    assert torch.allclose(
        ours.per_example[:, :3], ours.target.expand(ours.per_example.shape[0], 3, -1), atol=1e-5
    )


def test_the_kv_prefix_is_used_on_llama_and_layer_skipping_only_on_native_blocks(
    tiny_llama_bridge, tiny_bridge, pair_shared_prefix
):
    _, corrupted = pair_shared_prefix
    assert incremental.Replayer(tiny_llama_bridge, corrupted).use_prefix  # transformers blocks take a cache
    assert not incremental.Replayer(tiny_bridge, corrupted).use_prefix  # TL's native blocks do not


def test_incremental_staircase_starts_rows_at_their_layer_and_position(
    tiny_llama_bridge, pair_shared_prefix, monkeypatch
):
    clean, corrupted = pair_shared_prefix
    seen = []
    original = incremental.Replayer._staircase

    def spy(self, chunk, p):
        seen.append((p, [(r.start, r.pos, r.example) for r in chunk]))
        return original(self, chunk, p)

    monkeypatch.setattr(incremental.Replayer, "_staircase", spy)
    patch_residual(tiny_llama_bridge, clean, corrupted, METRIC)
    rows = [r for p, chunk in seen[1:] for r in chunk]  # seen[0] is the replayer's self-check
    assert all(p >= 3 for p, _ in seen[1:])  # no group before the first difference
    # example 1 differs at token 5 only: layer 0's input (the embedding) differs there alone, layer 1's
    # at every position from 5 on; no other cell of example 1 changes anything, so none is recomputed
    assert sorted((s, q) for s, q, e in rows if e == 1) == [(0, 5)] + [(1, q) for q in range(5, 9)]
    assert len(rows) == (1 + 1 + 2) + (9 - 3) + (9 - 5) + (9 - 4)


@pytest.mark.parametrize("model_name", ["tiny_bridge", "tiny_llama_bridge"])
@pytest.mark.parametrize("site", ["resid_pre", "resid_post", "attn_out", "mlp_out"])
def test_incremental_whole_layer_and_head_patching_equal_the_full_path(
    request, pair_shared_prefix, model_name, site
):
    model = request.getfixturevalue(model_name)
    clean, corrupted = pair_shared_prefix
    fast = patch_layers(model, clean, corrupted, METRIC, site=site)
    full = patch_layers(model, clean, corrupted, METRIC, site=site, algorithm="full")
    assert torch.allclose(fast.per_example, full.per_example, atol=1e-4)
    if site == "resid_pre":
        heads_fast = patch_heads(model, clean, corrupted, METRIC, max_rows=5)
        heads_full = patch_heads(model, clean, corrupted, METRIC, algorithm="full")
        assert torch.allclose(heads_fast.per_example, heads_full.per_example, atol=1e-4)


def test_heads_incremental_equals_transformer_lens_on_llama(
    tiny_llama_bridge, pair_shared_prefix, no_full_forward_per_cell
):
    clean, corrupted = pair_shared_prefix
    _, cache = tiny_llama_bridge.run_with_cache(clean)
    expected = tl_patching.get_act_patch_attn_head_out_all_pos(
        tiny_llama_bridge, corrupted, cache, _tl_metric
    )
    assert torch.allclose(
        patch_heads(tiny_llama_bridge, clean, corrupted, METRIC).mean(), expected, atol=1e-4
    )


def test_models_whose_blocks_cannot_be_replayed_fall_back_to_the_full_path(tiny_bridge, pair, monkeypatch):
    clean, corrupted = pair

    def unsupported(*args, **kwargs):
        raise incremental.Unsupported("test")

    monkeypatch.setattr(incremental, "Replayer", unsupported)
    _, cache = tiny_bridge.run_with_cache(clean)
    expected = tl_patching.get_act_patch_resid_pre(tiny_bridge, corrupted, cache, _tl_metric)
    assert torch.allclose(patch_residual(tiny_bridge, clean, corrupted, METRIC).mean(), expected, atol=1e-4)


def test_a_replay_that_does_not_reproduce_the_model_is_refused(tiny_llama_bridge, pair, monkeypatch):
    _, corrupted = pair
    monkeypatch.setattr(
        incremental.Replayer, "_final", lambda self, x: x[:, :1].expand(-1, x.shape[-1]) * 0 + 1
    )
    with pytest.raises(incremental.Unsupported, match="does not reproduce"):
        incremental.Replayer(tiny_llama_bridge, corrupted)


def test_nan_activations_raise_a_clear_error(tiny_llama_bridge, tiny_bridge, pair):
    clean, corrupted = pair

    def poison(act, hook):
        return act * float("nan")

    for model in (tiny_llama_bridge, tiny_bridge):
        for algorithm in ("incremental", "full"):
            with (
                model.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", poison)]),
                pytest.raises(PatchingError, match="(clean|corrupted) run has NaN or Inf"),
            ):
                patch_residual(model, clean, corrupted, METRIC, algorithm=algorithm)


def test_unknown_algorithm_is_refused(tiny_bridge, pair):
    clean, corrupted = pair
    unchecked = getattr(patch_residual, "__wrapped__", patch_residual)
    with pytest.raises(lensteer.ConfigError, match="algorithm must be 'incremental' or 'full'"):
        unchecked(tiny_bridge, clean, corrupted, METRIC, algorithm="magic")


# --------------------------------------------------------------------------- AtP* GradDrop


def _grads_with_cut(model, tokens, cut, names):
    """Gradients of the metric at ``names`` with block ``cut``'s output as ``in + (out - in).detach()``."""
    stream_in, acts = {}, {}

    def keep_in(act, hook):
        stream_in["x"] = act
        return act

    def cut_out(act, hook):
        return stream_in["x"] + (act - stream_in["x"]).detach()

    def grab(name):
        def hook(act, hook):
            act = act if act.requires_grad else act.detach().requires_grad_(True)
            acts[name] = act
            return act

        return hook

    hooks = [(f"blocks.{cut}.hook_resid_pre", keep_in), (f"blocks.{cut}.hook_resid_post", cut_out)]
    hooks += [(n, grab(n)) for n in names]
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        values = METRIC(model(tokens)[:, -1])
        grads = torch.autograd.grad(values.sum(), [acts[n] for n in names])
    return {n: a.detach() for n, a in acts.items()}, dict(zip(names, grads, strict=True))


def _graddrop_by_definition(model, clean, corrupted):
    """AtP* GradDrop magnitudes ``[layer, pos, example]`` from one cut forward/backward per layer."""
    n_layers = model.cfg.n_layers
    names = [f"blocks.{la}.hook_resid_pre" for la in range(n_layers)]
    _, src = model.run_with_cache(clean)
    total = torch.zeros(n_layers, clean.shape[1], clean.shape[0])
    for cut in range(n_layers):
        acts, grads = _grads_with_cut(model, corrupted, cut, names)
        for i, n in enumerate(names):
            total[i] += ((src[n] - acts[n]) * grads[n]).sum(-1).abs().T
    return total / n_layers


def test_graddrop_equals_its_definition_and_keeps_the_atp_sign(tiny_bridge, pair_shared_prefix):
    from lensteer.locate.attribution import attribute_residual

    clean, corrupted = pair_shared_prefix
    plain = attribute_residual(tiny_bridge, clean, corrupted, METRIC)
    star = attribute_residual(tiny_bridge, clean, corrupted, METRIC, method="atp*")
    expected = _graddrop_by_definition(tiny_bridge, clean, corrupted)
    est = star.per_example - star.target
    assert torch.allclose(est.abs(), expected, atol=1e-5)
    plain_est = plain.per_example - plain.target
    assert torch.equal(est.sign()[expected > 1e-6], plain_est.sign()[expected > 1e-6])
    assert star.method.startswith("attribution") and torch.allclose(star.source, plain.source)


def test_graddrop_arguments_are_checked(tiny_bridge, pair):
    from lensteer.locate.attribution import attribute_residual

    clean, corrupted = pair
    unchecked = getattr(attribute_residual, "__wrapped__", attribute_residual)
    with pytest.raises(lensteer.ConfigError, match="method must be 'atp' or 'atp\\*'"):
        unchecked(tiny_bridge, clean, corrupted, METRIC, method="ig")
    with pytest.raises(lensteer.ConfigError, match="supports sites 'resid_pre' and 'resid_post'"):
        unchecked(tiny_bridge, clean, corrupted, METRIC, method="atp*", site="mlp_out")


def test_head_attribution_adds_up_to_attn_out_and_correlates_with_exact_head_patching(tiny_bridge, pair):
    from lensteer.locate.attribution import attribute_heads, attribute_residual

    clean, corrupted = pair
    heads = attribute_heads(tiny_bridge, clean, corrupted, METRIC)
    exact = patch_heads(tiny_bridge, clean, corrupted, METRIC)
    assert heads.kind == "head" and heads.method == "attribution" and heads.mean().shape == exact.mean().shape
    assert torch.allclose(heads.target, exact.target, atol=1e-4) and torch.allclose(
        heads.source, exact.source, atol=1e-4
    )
    # W_O is linear: a layer's heads add up to the attribution of its attention output (all positions)
    attn = attribute_residual(tiny_bridge, clean, corrupted, METRIC, site="attn_out")
    by_layer = (heads.per_example - heads.target).sum(1)  # [n_layers, n_examples]
    by_attn = (attn.per_example - attn.target).sum(1)
    torch.testing.assert_close(by_layer, by_attn, atol=1e-4, rtol=1e-4)
    assert heads.correlation(exact) > 0.5
    with pytest.raises(PatchingError, match="metric must map"):
        attribute_heads(tiny_bridge, clean, corrupted, lambda logits: logits.sum())
