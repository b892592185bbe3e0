"""The committed study (``docs/study/report.json``) holds issue 28's report contract: what the site choice
saw and chose, the gate's curve, and per method its ungated twin, Holm-adjusted tests and fluency; honesty
its lie, no-answer and decision log-odds. Reads the file only (no model)."""

import json
from pathlib import Path

import pytest
from builders import CANDIDATE_CONTRACT

REPORT = json.loads((Path(__file__).resolve().parents[3] / "docs" / "study" / "report.json").read_text())
THREAT_MODELS = REPORT["threat_models"]
METHOD_CONTRACT = {"ungated", "p_vs_baseline_holm", "p_vs_random_holm", "p_vs_prompting_holm", "fluency"}


def test_the_committed_study_is_the_paper_profile_with_every_threat_model():
    assert set(THREAT_MODELS) == {"refusal", "compassion", "honesty"}
    assert REPORT["config"]["n_select"] >= 48 and REPORT["config"]["n_eval"] is None  # every test prompt
    assert all(e["baseline"]["n_eval"] >= 96 for e in THREAT_MODELS.values())


@pytest.mark.parametrize("tm", sorted(THREAT_MODELS))
def test_every_threat_model_keeps_its_candidates_and_says_what_it_chose(tm):
    e = THREAT_MODELS[tm]
    assert e["candidates"] and all(set(c) >= CANDIDATE_CONTRACT for c in e["candidates"])
    assert {c["source"] for c in e["candidates"]} >= {"prompt_contrast", "response_mean", "probe"}
    assert any(c["from_patching"] for c in e["candidates"])  # patching shaped the candidate layers
    scored = [c for c in e["candidates"] if c["decision_shift"] is not None]
    assert all(c["decision_shift_ci"][0] <= c["decision_shift"] <= c["decision_shift_ci"][1] for c in scored)
    chosen = e["chosen"]
    assert chosen is None or (chosen["layer"] == e["layer"] and chosen["why"])


@pytest.mark.parametrize("tm", sorted(THREAT_MODELS))
def test_every_method_has_its_ungated_twin_holm_adjusted_tests_and_fluency(tm):
    methods = THREAT_MODELS[tm]["methods"]
    assert methods and all(set(r) >= METHOD_CONTRACT for r in methods.values())
    for r in methods.values():
        assert set(r["ungated"]) >= {"trait", "trait_ci", "kl_heldout"}
        assert set(r["fluency"]) >= {"perplexity_ratio", "rep4"}
        for test in ("p_vs_baseline", "p_vs_random", "p_vs_prompting"):
            raw, adjusted = r.get(test), r[f"{test}_holm"]
            assert (raw is None) == (adjusted is None) and (raw is None or raw <= adjusted <= 1.0)


def test_refusal_has_its_gate_curve_and_honesty_its_lie_and_no_answer_rates():
    curve = THREAT_MODELS["refusal"]["gate_curve"]
    assert len(curve) >= 3 and all(
        set(p) >= {"target_fpr", "val_tpr", "val_borderline_over_refusal"} for p in curve
    )
    honesty = THREAT_MODELS["honesty"]
    for row in (honesty["baseline"], *honesty["methods"].values()):
        assert {"lie_rate", "no_answer_rate", "decision_log_odds"} <= set(row)
