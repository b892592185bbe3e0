import pytest
import torch
from builders import planted_probe_report

import lensteer
from lensteer.locate.direction_patching import ablation_kl
from lensteer.study.recommend import recommend_site


def test_recommendation_skips_the_last_fifth_and_weak_layers():
    # layer 9 separates best but lies in the last 20%; layer 5 is the best allowed one
    rep = planted_probe_report([0, 0, 0.5, 1, 2, 3, 2.5, 2, 4, 5])
    rec = recommend_site(rep, n_layers=10)
    assert rec.layer == 5 and rec.site == "resid_post"
    assert "outside the last 20%" in " ".join(rec.reasons)
    why = {r["layer"]: r["why_not"] for r in rec.table}
    assert "last 20%" in why[9] and "lower bound" in why[0]
    assert str(rec).startswith("steer at layer 5")


def test_ablation_kl_rule_and_no_layer_passing():
    rep = planted_probe_report([0, 0, 3, 3, 0])
    rec = recommend_site(rep, n_layers=5, ablation_kl={2: 0.5, 3: 0.05})
    assert rec.layer == 3 and "KL 0.050" in " ".join(rec.reasons)
    with pytest.raises(lensteer.ConfigError, match="no layer passes the selection rules"):
        recommend_site(planted_probe_report([0, 0, 0, 0, 0]), n_layers=5)
    with pytest.raises(lensteer.ConfigError, match="pass n_layers"):
        recommend_site(rep)


def test_ablation_kl_is_zero_for_an_orthogonal_nothing_and_positive_otherwise(tiny_llama_bridge):
    prompts = ["hello", "what is up"]
    zero = torch.zeros(32)
    assert ablation_kl(tiny_llama_bridge, prompts, zero) == pytest.approx(0.0, abs=1e-6)
    w = tiny_llama_bridge.W_U[:, 10].detach()
    assert ablation_kl(tiny_llama_bridge, prompts, w / w.norm(), site="resid_post") > 0


def test_saturated_auroc_ties_are_broken_by_d_prime():
    # every allowed layer separates perfectly; the margin (d') is largest at layer 3
    rep = planted_probe_report([6, 6, 7, 12, 8, 6, 6, 6, 6, 6])
    rec = recommend_site(rep, n_layers=10)
    assert rec.layer == 3 and "d'" in rec.reasons[-1]


def test_a_layer_where_steering_does_not_help_is_never_recommended():
    from types import SimpleNamespace

    rep = planted_probe_report([0, 0, 3, 3, 0])  # layers 2 and 3 pass the probe rule
    helps = SimpleNamespace(effect={2: -0.4, 3: 0.2}, kl_budget=0.5)
    rec = recommend_site(rep, n_layers=5, steerability=helps)
    assert rec.layer == 3
    assert "does not help" in {r["layer"]: r["why_not"] for r in rec.table}[2]
    nowhere = SimpleNamespace(effect={2: -0.4, 3: 0.0}, kl_budget=0.5)
    with pytest.raises(lensteer.ConfigError, match="no layer helps: steering at KL 0.5 does not raise"):
        recommend_site(rep, n_layers=5, steerability=nowhere)


def test_rule_thresholds_are_keyword_options_checked_by_name():
    rep = planted_probe_report([0, 0, 0.5, 1, 2, 3, 2.5, 2, 4, 5])
    # skipping only the last 10% lets layer 8 (second-best separation) through
    assert recommend_site(rep, n_layers=10, skip_last_fraction=0.1).layer == 8
    with pytest.raises(lensteer.ConfigError, match=r"unknown recommend_site options \['skip_last'\]"):
        recommend_site(rep, n_layers=10, skip_last=0.1)  # type: ignore[call-arg]
    with pytest.raises(lensteer.ConfigError, match=r"skip_last_fraction must be in \[0, 1\), got 1.0"):
        recommend_site(rep, n_layers=10, skip_last_fraction=1.0)
