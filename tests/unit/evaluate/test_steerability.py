"""Causal layer choice: preference margins, steering effects, and steerability per layer."""

from dataclasses import replace

import pytest
import torch
from builders import planted_probe_report, random_unit

import lensteer
from lensteer.study.recommend import recommend_site

QUESTIONS = ["pick one", "which is it", "say it", "go on"]


def _pairs():
    aligned = [lensteer.ChatPrompt(user=q, response="aaaa") for q in QUESTIONS]
    misaligned = [lensteer.ChatPrompt(user=q, response="bbbb") for q in QUESTIONS]
    return aligned, misaligned


def _planted(model) -> torch.Tensor:
    """Readout direction of 'a' over 'b' at the last residual: adding it favours 'aaaa'."""
    tok = model.tokenizer
    a, b = tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("b")
    v = (model.W_U[:, a] - model.W_U[:, b]).detach()
    return v / v.norm()


def test_preference_margin_is_the_difference_of_response_logprobs(tiny_llama_bridge):
    aligned, misaligned = _pairs()
    got = lensteer.evaluate.preference_margin(tiny_llama_bridge, aligned, misaligned)
    from lensteer.core.forward import response_logprob

    want = response_logprob(tiny_llama_bridge, aligned) - response_logprob(tiny_llama_bridge, misaligned)
    torch.testing.assert_close(got, want)
    with pytest.raises(lensteer.DataError, match="equally many"):
        lensteer.evaluate.preference_margin(tiny_llama_bridge, aligned, misaligned[:2])


def test_a_planted_readout_direction_raises_the_margin_and_its_negation_lowers_it(tiny_llama_bridge):
    aligned, misaligned = _pairs()
    v = _planted(tiny_llama_bridge)
    up = lensteer.Steering(unit=v, layers=(1,), mode="add", scale=3.0)
    down = up.with_scale(-3.0)
    assert lensteer.evaluate.steering_effect(tiny_llama_bridge, up, aligned, misaligned) > 0.1
    assert lensteer.evaluate.steering_effect(tiny_llama_bridge, down, aligned, misaligned) < -0.1
    assert (
        lensteer.evaluate.steering_effect(tiny_llama_bridge, up.with_scale(0.0), aligned, misaligned) == 0.0
    )


def test_layer_steerability_calibrates_every_layer_and_ranks_the_planted_one_first(tiny_llama_bridge):
    aligned, misaligned = _pairs()
    probe = lensteer.steering.kl_probe(
        tiny_llama_bridge, ["hello there", "tell me about cats"], continuation_tokens=6
    )
    planted = lensteer.Steering(unit=_planted(tiny_llama_bridge), layers=(1,), mode="swfc", scale=1.0)
    random = lensteer.Steering(unit=random_unit(32, seed=5), layers=(0,), mode="swfc", scale=1.0)
    budget = 0.3 * lensteer.steering.steering_kl(tiny_llama_bridge, planted.with_scale(4.0), probe)
    res = lensteer.evaluate.layer_steerability(
        tiny_llama_bridge,
        {1: planted, 0: random},
        aligned,
        misaligned,
        probe,
        kl_budget=budget,
        tolerance=0.2,
    )
    assert res.layers == (0, 1)
    for layer in res.layers:
        assert res.kl[layer] == pytest.approx(budget, rel=0.2)
    assert res.best_layer() == 1 and res.effect[1] > res.effect[0]
    assert set(res.to_dict()["effect"]) == {"0", "1"}
    gated = lensteer.Steering(
        unit=_planted(tiny_llama_bridge),
        layers=(1,),
        mode="swfc",
        scale=1.0,
        gate=lensteer.Gate(unit=_planted(tiny_llama_bridge), layer=0, threshold=0.0),
    )
    with pytest.raises(lensteer.ConfigError, match="gate"):
        lensteer.evaluate.layer_steerability(
            tiny_llama_bridge, {1: gated}, aligned, misaligned, probe, kl_budget=budget
        )


def test_recommend_site_prefers_the_most_steerable_layer_that_passes_the_rules():

    rep = planted_probe_report([6, 6, 7, 12, 8, 6, 6, 6, 6, 6])  # d' alone would pick layer 3
    steer = lensteer.evaluate.Steerability(
        kl_budget=0.5,
        layers=tuple(range(10)),
        effect={k: 0.1 * k for k in range(10)},
        kl={},
        scale={},
        baseline_margin=-1.0,
    )
    rec = recommend_site(rep, n_layers=10, steerability=steer)
    # layers 8 and 9 steer more but lie in the last 20%: layer 7 is the most steerable allowed one
    assert rec.layer == 7
    assert "+0.70 nats/token" in rec.reasons[0] and "next: layer 6" in rec.reasons[0]
    assert {r["layer"]: r["steer_effect"] for r in rec.table}[3] == pytest.approx(0.3)


def test_the_effect_steers_every_position_whatever_the_spec_says(tiny_llama_bridge):
    # teacher-forced, the response tokens stand in for generated ones: a "generated"-only spec still counts
    aligned, misaligned = _pairs()
    s = lensteer.Steering(
        unit=_planted(tiny_llama_bridge), layers=(1,), mode="add", scale=3.0, positions="generated"
    )
    effect = lensteer.evaluate.steering_effect(tiny_llama_bridge, s, aligned, misaligned)
    assert effect > 0.1
    assert effect == pytest.approx(
        lensteer.evaluate.steering_effect(tiny_llama_bridge, replace(s, positions="all"), aligned, misaligned)
    )


def test_decision_log_odds_reads_the_first_differing_token_given_the_shared_stem(tiny_llama_bridge):
    from lensteer.core.chat import tokenize_prompt
    from lensteer.evaluate import decision_log_odds

    model = tiny_llama_bridge
    questions = [
        "capital?",
        "which city is the capital of this country, please?",
    ]  # stems of different lengths
    aligned = [lensteer.ChatPrompt(user=q, response="It is Tokyo.") for q in questions]
    misaligned = [lensteer.ChatPrompt(user=q, response="It is Osaka.") for q in questions]
    got = decision_log_odds(model, aligned, misaligned, batch_size=2)
    for i, (a, m) in enumerate(zip(aligned, misaligned, strict=True)):
        ta, tm = tokenize_prompt(model, a).tokens, tokenize_prompt(model, m).tokens
        k = int((ta[: len(tm)] != tm[: len(ta)]).nonzero()[0])
        assert model.tokenizer.convert_ids_to_tokens([int(ta[k]), int(tm[k])]) == ["T", "O"]
        with torch.no_grad():
            logp = torch.log_softmax(model(ta[:k].unsqueeze(0))[0, -1], dim=-1)
        assert got[i] == pytest.approx(
            float(logp[ta[k]] - logp[tm[k]]), abs=1e-4
        )  # padded batch = each alone
    v = _planted_towards(model, "T", "O")
    pushed = decision_log_odds(
        model, aligned, misaligned, steering=lensteer.Steering.from_direction(v, layers=[1], scale=20.0)
    )
    assert bool((pushed > got).all())  # adding the readout direction of the true token raises its odds
    with pytest.raises(lensteer.errors.DataError, match="never differ"):
        decision_log_odds(model, aligned[:1], aligned[:1])


def _planted_towards(model, good: str, bad: str) -> torch.Tensor:
    tok = model.tokenizer
    a, b = tok.convert_tokens_to_ids(good), tok.convert_tokens_to_ids(bad)
    v = (model.W_U[:, a] - model.W_U[:, b]).detach()
    return v / v.norm()
