"""The study reads honesty's direction where the decision is made (issue: honesty rebuilt around the
decision token), not as the mean over a written false sentence's tokens."""

from dataclasses import replace

import torch

import lensteer
from lensteer import threats
from lensteer.locate.probing import contrast_prompts
from lensteer.study.config import StudyConfig
from lensteer.study.layers import locate_threat_model


def test_the_study_steers_honesty_along_the_decision_token_difference_of_means(tiny_llama_bridge):
    cfg = replace(
        StudyConfig(),
        methods=("SwFC",),
        n_train=6,
        layer=1,
        massive_ratio=None,
        selective_fit="written_means",
    )
    loc = locate_threat_model(tiny_llama_bridge, "honesty", cfg, ["Hello there.", "Name a colour."])
    assert loc.probing["contrast"] == "decision" and loc.probing["position"] == "decision"
    train = (
        threats.get("honesty").load().with_responses().fit.stratified(cfg.n_train)
    )  # held-apart rows excluded
    honest, lying = contrast_prompts(train, "decision", threats.get("honesty").decision_contexts)[:2]
    acts = lensteer.collect_activations(tiny_llama_bridge, honest + lying, layers=[1], position="last")[:, 0]
    expected = acts[: len(honest)].mean(0) - acts[len(honest) :].mean(0)
    got = loc.steerings["SwFC"].unit
    assert torch.allclose(got, expected / expected.norm(), atol=1e-5)
    # and it is not the response contrast's direction
    response = lensteer.locate.probing.contrast_prompts(train, "response")[:2]
    r_acts = lensteer.collect_activations(
        tiny_llama_bridge, response[0] + response[1], layers=[1], position="response_mean"
    )[:, 0]
    r_dir = r_acts[: len(response[0])].mean(0) - r_acts[len(response[0]) :].mean(0)
    assert float(torch.nn.functional.cosine_similarity(got, r_dir, dim=0)) < 0.99
    assert {n for n in threats.BUNDLED if threats.get(n).decision_contexts} == {
        "honesty"
    }  # refusal and compassion keep the response contrast
