"""Coherence-aware strength: reference norms, steering KL and calibration to a KL budget."""

from dataclasses import replace

import pytest
import torch

import lensteer
from lensteer.core.chat import tokenize_prompt

PROMPTS = ["hello there", "what a nice day it is", "tell me about cats", "ok"]


def _unit(seed: int, d: int = 32) -> torch.Tensor:
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def test_reference_norm_is_the_mean_token_norm_without_the_first_token(tiny_llama_bridge):
    got = lensteer.steering.reference_norm(tiny_llama_bridge, PROMPTS, 1)
    norms = []
    for p in PROMPTS:
        tokens = tokenize_prompt(tiny_llama_bridge, p).tokens[None]
        _, cache = tiny_llama_bridge.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
        norms.append(cache["blocks.1.hook_resid_post"][0, 1:].norm(dim=-1))
    assert got == pytest.approx(float(torch.cat(norms).mean()), rel=1e-5)
    with pytest.raises(lensteer.HookSiteError, match="layer 9"):
        lensteer.steering.reference_norm(tiny_llama_bridge, PROMPTS, 9)


@pytest.fixture(scope="module")
def kl_set(tiny_llama_bridge):
    return lensteer.steering.kl_probe(tiny_llama_bridge, PROMPTS, continuation_tokens=6)


def test_steering_kl_is_zero_unsteered_and_matches_a_hand_computation(tiny_llama_bridge, kl_set):
    v = _unit(1)
    s = lensteer.Steering(unit=v, layers=(0,), mode="swfc", scale=2.0, positions="generated")
    assert lensteer.steering.steering_kl(tiny_llama_bridge, s.with_scale(0.0), kl_set) == 0.0
    got = lensteer.steering.steering_kl(tiny_llama_bridge, s, kl_set)
    # by hand: every (prompt + continuation) on its own, steering the positions that choose continuation
    # tokens ("generated": the last prompt token and the continuation)
    from lensteer.core.forward import mean_token_kl

    gens = lensteer.generate(tiny_llama_bridge, PROMPTS, max_new_tokens=6)
    kls, counts = [], []
    for p, g in zip(gens.prompt_tokens, gens.tokens, strict=True):
        if len(g) == 0:
            continue
        seq = torch.cat([p, g])[None]
        n_p = len(p)

        def hook(x, hook, n_p=n_p):
            x = x.clone()
            x[:, n_p - 1 :] += 2.0 * v
            return x

        with torch.inference_mode():
            base = tiny_llama_bridge(seq)
            steered = tiny_llama_bridge.run_with_hooks(seq, fwd_hooks=[("blocks.0.hook_resid_post", hook)])
        mask = torch.zeros(seq.shape, dtype=torch.bool)
        mask[0, n_p - 1 : seq.shape[1] - 1] = True
        kls.append(mean_token_kl(steered, base, mask))
        counts.append(int(mask.sum()))
    want = sum(k * c for k, c in zip(kls, counts, strict=True)) / sum(counts)
    assert got == pytest.approx(want, rel=1e-3)
    assert got > 0


@pytest.mark.parametrize("mode", ["swfc", "angular"])
def test_calibration_hits_the_kl_budget_within_tolerance(tiny_llama_bridge, kl_set, mode):
    s = lensteer.Steering(unit=_unit(2), layers=(1,), mode=mode, scale=1.0, positions="all")
    reachable = lensteer.steering.steering_kl(
        tiny_llama_bridge, s.with_scale(90.0 if mode == "angular" else 8.0), kl_set
    )
    target = 0.4 * reachable  # the tiny model's KL saturates (RMSNorm), so aim inside its range
    cal = lensteer.calibrate(tiny_llama_bridge, s, kl_set, target, tolerance=0.05)
    assert cal.reached, cal.history
    assert cal.relative_error <= 0.05
    # the returned steering really has that KL
    assert lensteer.steering.steering_kl(tiny_llama_bridge, cal.steering, kl_set) == pytest.approx(
        cal.kl, rel=1e-6
    )
    assert cal.steering.info["calibration"]["target_kl"] == target


def test_calibration_reports_an_unreachable_budget(tiny_llama_bridge, kl_set):
    s = lensteer.Steering(unit=_unit(2), layers=(0,), mode="swfc", scale=1.0, positions="all")
    cal = lensteer.calibrate(tiny_llama_bridge, s, kl_set, 50.0)
    assert not cal.reached and cal.kl < 50.0 and len(cal.history) < 24


def test_calibration_rejects_bad_budgets_and_ace(tiny_llama_bridge, kl_set):
    s = lensteer.Steering(unit=_unit(3), layers=(0,))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(lensteer.ConfigError, match="target_kl"):
            lensteer.calibrate(tiny_llama_bridge, s, kl_set, bad)
    ace = lensteer.Steering(unit=_unit(3), layers=(0,), mode="ace", reference=0.0)
    with pytest.raises(lensteer.ConfigError, match="ace"):
        lensteer.calibrate(tiny_llama_bridge, ace, kl_set, 0.1)
    with pytest.raises(lensteer.DataError, match="non-empty"):
        lensteer.steering.kl_probe(tiny_llama_bridge, [])


def test_sequence_kl_on_the_probes_own_continuations_equals_steering_kl(tiny_llama_bridge, kl_set):
    from lensteer.steering.calibration import sequence_kl

    s = lensteer.Steering(unit=_unit(4), layers=(0,), mode="swfc", scale=1.5, positions="generated")
    gens = lensteer.generate(tiny_llama_bridge, PROMPTS, max_new_tokens=6)
    along = sequence_kl(tiny_llama_bridge, s, gens.prompt_tokens, gens.tokens, gated=False)
    assert along == pytest.approx(lensteer.steering.steering_kl(tiny_llama_bridge, s, kl_set), rel=1e-6)
    assert sequence_kl(tiny_llama_bridge, s.with_scale(0.0), gens.prompt_tokens, gens.tokens) == 0.0


def test_sequence_kl_with_a_closed_gate_costs_nothing_and_an_open_one_the_full_edit(tiny_llama_bridge):
    from lensteer.steering.calibration import sequence_kl

    gens = lensteer.generate(tiny_llama_bridge, PROMPTS, max_new_tokens=6)
    v = _unit(5)
    closed = lensteer.Gate(unit=v, layer=1, threshold=1e6)  # no prompt projects above 1e6
    opened = lensteer.Gate(unit=v, layer=1, threshold=-1e6)
    s = lensteer.Steering(unit=_unit(6), layers=(0,), mode="swfc", scale=2.0, positions="generated")
    ungated = sequence_kl(tiny_llama_bridge, s, gens.prompt_tokens, gens.tokens, gated=False)
    assert ungated > 0
    assert sequence_kl(tiny_llama_bridge, replace(s, gate=closed), gens.prompt_tokens, gens.tokens) == 0.0
    assert sequence_kl(
        tiny_llama_bridge, replace(s, gate=opened), gens.prompt_tokens, gens.tokens
    ) == pytest.approx(ungated)
    assert sequence_kl(
        tiny_llama_bridge, replace(s, gate=closed), gens.prompt_tokens, gens.tokens, gated=False
    ) == pytest.approx(ungated)


def test_sequence_kls_of_several_steerings_equal_each_alone(tiny_llama_bridge):
    from lensteer.steering.calibration import sequence_kl, sequence_kls

    gens = lensteer.generate(tiny_llama_bridge, PROMPTS, max_new_tokens=6)
    closed = lensteer.Gate(unit=_unit(5), layer=1, threshold=1e6)
    steerings = [
        lensteer.Steering(unit=_unit(6), layers=(0,), mode="swfc", scale=2.0, positions="generated"),
        lensteer.Steering(unit=_unit(7), layers=(1,), mode="add", scale=3.0, gate=closed),
        lensteer.Steering(unit=_unit(8), layers=(1,), mode="add", scale=3.0),
    ]
    together = sequence_kls(tiny_llama_bridge, steerings, gens.prompt_tokens, gens.tokens, batch_size=2)
    alone = [
        sequence_kl(tiny_llama_bridge, s, gens.prompt_tokens, gens.tokens, batch_size=2) for s in steerings
    ]
    assert together == pytest.approx(alone, rel=1e-9) and together[1] == 0.0 and together[0] != together[2]
    with pytest.raises(lensteer.DataError, match="at least one steering"):
        sequence_kls(tiny_llama_bridge, [], gens.prompt_tokens, gens.tokens)
