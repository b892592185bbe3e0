"""StTP / StMP as defined (both StMP readings against hand computations) and the per-token fit data."""

import pytest
import torch

import lensteer
from lensteer.core.chat import ChatPrompt
from lensteer.locate.directions import fit_probe
from lensteer.steering.hooks import steer_resid
from lensteer.steering.spec import Steering
from lensteer.steering.token_fit import answer_positions, response_token_activations

E0 = torch.tensor([1.0, 0.0, 0.0, 0.0])


def _resid(projections):
    """One row of tokens whose projection on e0 is given; the other coordinates are fixed noise."""
    r = torch.tensor([[0.0, 0.3, -0.7, 0.2]]).repeat(len(projections), 1)
    r[:, 0] = torch.tensor(projections)
    return r[None]


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        # tau = 1: tokens at -3 and 0 are below; mirror sends s -> 2 tau - s, push sends s -> tau
        ("mirror", [5.0, 2.0, 1.5, 4.0]),
        ("push", [1.0, 1.0, 1.5, 4.0]),
    ],
)
def test_stmp_variants_match_a_hand_computation(variant, expected):
    s = Steering(unit=E0, layers=(0,), mode="stmp", threshold=1.0, stmp_variant=variant)
    edit = steer_resid(_resid([-3.0, 0.0, 1.5, 4.0]), s, torch.ones(1, 4, dtype=torch.bool))
    assert edit.resid[0, :, 0].tolist() == expected
    assert edit.fired.tolist() == [[True, True, False, False]]
    assert torch.equal(edit.resid[0, :, 1:], _resid([0, 0, 0, 0])[0, :, 1:])  # only the e0 coordinate moves


def test_the_scale_multiplies_each_variants_edit():
    for variant, per_unit in (("mirror", 2.0), ("push", 1.0)):
        s = Steering(unit=E0, layers=(0,), mode="stmp", threshold=1.0, stmp_variant=variant, scale=0.5)
        edit = steer_resid(_resid([-3.0]), s, torch.ones(1, 1, dtype=torch.bool))
        assert float(edit.resid[0, 0, 0]) == pytest.approx(-3.0 + 0.5 * per_unit * 4.0)


def test_sttp_moves_to_the_target():
    s = Steering(unit=E0, layers=(0,), mode="sttp", threshold=1.0, target=2.5)
    edit = steer_resid(_resid([-3.0, 3.0]), s, torch.ones(1, 2, dtype=torch.bool))
    assert edit.resid[0, :, 0].tolist() == [2.5, 3.0]


def test_mirror_is_the_default_and_unknown_variants_are_refused():
    assert Steering(unit=E0, layers=(0,), mode="stmp", threshold=0.0).stmp_variant == "mirror"
    with pytest.raises(lensteer.ConfigError, match="stmp_variant 'reflect'.*mirror.*push"):
        Steering(unit=E0, layers=(0,), mode="stmp", threshold=0.0, stmp_variant="reflect")


def test_variant_and_norm_limit_survive_a_save_and_load(tmp_path):
    s = Steering(unit=E0, layers=(0,), mode="stmp", threshold=0.5, stmp_variant="push", max_norm=12.5)
    lensteer.save_steering(s, tmp_path / "s")
    back = lensteer.load_steering(tmp_path / "s")
    assert (back.stmp_variant, back.max_norm) == ("push", 12.5)


def test_answer_positions_are_the_ones_a_steering_sees_while_decoding():
    assert answer_positions(5, 3) == [4, 5, 6, 7]  # the last prompt token chooses the first answer token
    assert answer_positions(5, 0) == [4]
    with pytest.raises(lensteer.DataError):
        answer_positions(0, 2)


def test_answer_token_residuals_equal_a_cached_forward(tiny_llama_bridge):
    prompts = [ChatPrompt(user="ab"), ChatPrompt(user="a longer one")]
    got = response_token_activations(tiny_llama_bridge, prompts, layer=1, max_new_tokens=5, batch_size=2)
    gens = lensteer.generate(tiny_llama_bridge, prompts, max_new_tokens=5)
    assert got.texts == gens.texts
    for i, (p, a) in enumerate(zip(gens.prompt_tokens, gens.tokens, strict=True)):
        ids = torch.cat([p, a])[None]
        _, cache = tiny_llama_bridge.run_with_cache(ids)
        want = cache["blocks.1.hook_resid_post"][0, answer_positions(len(p), len(a))]
        assert torch.allclose(got.acts[got.row == i], want, atol=1e-5)
    kept = got.rows([1])
    assert set(kept.row.tolist()) == {1} and kept.n_tokens == int((got.row == 1).sum())


def test_answers_of_different_lengths_read_in_batches_equal_each_alone(tiny_llama_bridge):
    from dataclasses import replace

    prompts = [ChatPrompt(user=u) for u in ("ab", "a longer one", "mid one", "x")]
    gens = lensteer.generate(tiny_llama_bridge, prompts, max_new_tokens=5)
    cut = replace(gens, tokens=(gens.tokens[0][:2], gens.tokens[1], gens.tokens[2][:0], gens.tokens[3][:4]))
    got = response_token_activations(tiny_llama_bridge, prompts, layer=1, generations=cut, batch_size=3)
    assert [int((got.row == i).sum()) for i in range(4)] == [3, 6, 1, 5]
    for i, (p, a) in enumerate(zip(cut.prompt_tokens, cut.tokens, strict=True)):
        _, cache = tiny_llama_bridge.run_with_cache(torch.cat([p, a])[None])
        want = cache["blocks.1.hook_resid_post"][0, answer_positions(len(p), len(a))]
        assert torch.allclose(got.acts[got.row == i], want, atol=1e-5)


def test_tokens_above_the_norm_limit_are_left_out_of_the_fit(tiny_llama_bridge):
    prompts = [ChatPrompt(user="ab")]
    every = response_token_activations(tiny_llama_bridge, prompts, layer=1, max_new_tokens=4)
    limit = float(every.acts.norm(dim=-1).median())
    some = response_token_activations(tiny_llama_bridge, prompts, layer=1, max_new_tokens=4, max_norm=limit)
    assert some.n_tokens + some.skipped_massive == every.n_tokens and some.skipped_massive > 0
    assert bool((some.acts.norm(dim=-1) <= limit).all())


def test_push_at_twice_the_scale_is_the_same_edit_as_mirror():
    # why the study derives KL-matched StMP-push from StMP instead of calibrating it again
    resid = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 5, dtype=torch.bool)
    mirror = Steering(unit=E0, layers=(0,), mode="stmp", threshold=0.2, scale=0.7)
    push = Steering(unit=E0, layers=(0,), mode="stmp", threshold=0.2, scale=1.4, stmp_variant="push")
    assert torch.allclose(steer_resid(resid, mirror, mask).resid, steer_resid(resid, push, mask).resid)


def test_the_boundary_is_class_balanced_so_the_larger_class_does_not_swallow_it():
    # two overlapping 1-D classes, four times as many aligned tokens: an unweighted logistic fit puts
    # the boundary below almost every token; the balanced fit keeps it near the midpoint of the means
    g = torch.Generator().manual_seed(0)
    unit = torch.tensor([1.0, 0.0])
    aligned = torch.stack([torch.randn(400, generator=g) * 3 + 1.0, torch.zeros(400)], 1)
    misaligned = torch.stack([torch.randn(100, generator=g) * 3 - 1.0, torch.zeros(100)], 1)
    unweighted = fit_probe(aligned[:, :1], misaligned[:, :1], layer=0, l2_grid=(1e-3,))
    assert unweighted.boundary < -3.0  # the bug the balanced fit avoids
    steering = Steering.from_contrast(unit, aligned, misaligned, mode="sttp", layers=0)
    assert abs(steering.threshold - 0.0) < 0.5
    below = (misaligned[:, 0] < steering.threshold).float().mean()
    assert 0.5 < float(below) < 0.8
