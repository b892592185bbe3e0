"""The committed study, re-checked on the embedded model: what the README claims must reproduce.

``docs/study/`` holds the report, the per-prompt results and the calibrated steerings of the committed
paper-profile run (issue 28's protocol). Checked here:

* every finding the report makes (a steering method whose trait differs from the unsteered model's at
  Holm-adjusted p < 0.05 within its threat model, either way: a steering that lowers the trait is a
  claim too) is carried by the committed per-prompt flags: the trait and the exact McNemar p recomputed
  from them, its Holm adjustment as reported and below 0.05;
* regenerated now, a sample of prompts that carry the findings (steered and unsteered answers judged
  differently; four, shared by the methods, with two others) get the same flags again (at most
  one in eight differs: batches of another composition may flip a near-tie in greedy decoding);
* the held-out KL (harmless test prompts along their unsteered continuations) of every finding's method
  is the reported one within 10%;
* every committed steering at the matched budget (StMP-push is StMP's twin; the random control's first
  seed stands for its others, calibrated by the same code) still costs the KL its calibration recorded,
  within 10%, on the study's calibration set (held-apart harmless and borderline prompts) with its gate
  as deployed.
"""

import json
from dataclasses import replace
from pathlib import Path

import pytest

import lensteer
from lensteer import threats
from lensteer.core.stats import mcnemar_exact
from lensteer.steering.calibration import sequence_kls, steering_kl
from lensteer.study.coherence import calibration_set
from lensteer.study.config import StudyConfig
from lensteer.study.evaluation import eval_prompts, heldout_harmless, trait_flags
from lensteer.study.runner import chosen_steering

STUDY = Path(__file__).resolve().parents[2] / "docs" / "study"
REPORT = json.loads((STUDY / "report.json").read_text())
ROWS = json.loads((STUDY / "results.json").read_text())["rows"]
BUDGET = REPORT["matched_kl_budget"]
CONFIG = StudyConfig.from_dict(REPORT["config"])
ALPHA = 0.05


def _is_finding(entry: dict, method: str) -> bool:
    r = entry["methods"][method]
    holm = r.get("p_vs_baseline_holm")
    return not r.get("same_as") and holm is not None and holm < ALPHA


FINDINGS = {
    tm: found
    for tm, entry in REPORT["threat_models"].items()
    if (found := [m for m in entry["methods"] if _is_finding(entry, m)])
}
CHECKED = [
    (tm, m) for tm in REPORT["threat_models"] for m in (*CONFIG.methods, "random0") if m != "StMP-push"
]
MAX_SAMPLE, CARRYING = 6, 4


def _row(threat_model: str, method: str, budget: float | None) -> dict:
    found = [
        r
        for r in ROWS
        if r["threat_model"] == threat_model
        and r["method"] == method
        and r["kl_budget"] == budget
        and r.get("layer") == REPORT["threat_models"][threat_model]["layer"]
    ]
    assert len(found) == 1, (threat_model, method, budget, len(found))
    return found[0]


def _sample(steered: list[list[bool]], base: list[bool]) -> list[int]:
    """The prompts to regenerate, the same for every method: those that carry every method's finding
    (steered and unsteered answers judged differently) first, then some method's, then a few others."""
    carried_by = [sum(s[i] != base[i] for s in steered) for i in range(len(base))]
    carrying = sorted((i for i, c in enumerate(carried_by) if c), key=lambda i: -carried_by[i])[:CARRYING]
    others = [i for i in range(len(base)) if i not in carrying]
    return sorted(carrying + others[: MAX_SAMPLE - len(carrying)])


def _steering(model, threat_model: str, method: str):
    return lensteer.load_steering(chosen_steering(STUDY, threat_model, method, BUDGET), model=model)


def test_the_committed_report_has_findings_and_steerings_to_check():
    assert FINDINGS, "the committed study claims no significant effect; this test would check nothing"
    assert {tm for tm, _ in CHECKED} == set(REPORT["threat_models"]) and len(CHECKED) >= 3 * 4


@pytest.fixture(scope="module")
def calibration_probe(embedded_model):
    return calibration_set(embedded_model, CONFIG)[1]


@pytest.mark.parametrize("tm_method", CHECKED, ids=lambda x: f"{x[0]}-{x[1]}")
def test_every_committed_steering_costs_its_recorded_calibration_kl(
    embedded_model, calibration_probe, tm_method
):
    steering = _steering(embedded_model, *tm_method)
    recorded = steering.info["calibration"]["kl"]
    kl = steering_kl(embedded_model, steering, calibration_probe)  # gate as deployed
    assert kl == pytest.approx(recorded, rel=0.10, abs=0.005)


@pytest.fixture(scope="module")
def heldout_kls(embedded_model):
    """Every finding's held-out KL: the study's held-out harmless prompts along their unsteered
    continuations, one unsteered pass for all of them (``{(threat_model, method): kl}``)."""
    reference = lensteer.generate(
        embedded_model,
        heldout_harmless(CONFIG),
        max_new_tokens=CONFIG.kl_tokens,
        batch_size=CONFIG.batch_size,
    )
    found = [(tm, m) for tm, methods in FINDINGS.items() for m in methods]
    kls = sequence_kls(
        embedded_model,
        [_steering(embedded_model, tm, m) for tm, m in found],
        reference.prompt_tokens,
        reference.tokens,
        batch_size=CONFIG.batch_size,
    )
    return dict(zip(found, kls, strict=True))


@pytest.mark.parametrize("threat_model", sorted(FINDINGS))
def test_every_significant_finding_reproduces(embedded_model, heldout_kls, threat_model):
    methods = FINDINGS[threat_model]
    entry = REPORT["threat_models"][threat_model]
    base_flags = _row(threat_model, "baseline", None)["trait_flags"]
    steered_flags = {m: _row(threat_model, m, BUDGET)["trait_flags"] for m in methods}
    for m, flags in steered_flags.items():
        reported = entry["methods"][m]
        assert sum(flags) / len(flags) == pytest.approx(reported["trait"])
        test = mcnemar_exact(flags, base_flags)
        assert test.p_value == pytest.approx(reported["p_vs_baseline"]) and test.difference != 0
        assert (test.difference > 0) == (reported["trait"] > entry["baseline"]["trait"])
        assert reported["p_vs_baseline_holm"] >= test.p_value and reported["p_vs_baseline_holm"] < ALPHA

    steerings = {m: _steering(embedded_model, threat_model, m) for m in methods}
    picked = _sample(list(steered_flags.values()), base_flags)
    rows = [(None, i) for i in picked] + [(m, i) for m in methods for i in picked]
    every_prompt = eval_prompts(threat_model, CONFIG.n_eval)
    every = threats.get(threat_model).load().test.stratified(CONFIG.n_eval)
    out = lensteer.generate(
        embedded_model,
        [every_prompt[i] for _, i in rows],
        prompt_steerings=[None if m is None else steerings[m] for m, _ in rows],
        max_new_tokens=CONFIG.max_new_tokens,
        batch_size=CONFIG.batch_size,
    )
    picked_set = replace(every, examples=tuple(every[i] for _, i in rows))
    flags = trait_flags(threat_model, out.texts, picked_set, embedded_model)  # as the study scored them
    again = dict(zip(rows, flags, strict=True))
    for m in methods:
        assert any(steered_flags[m][i] != base_flags[i] for i in picked), m  # the sample carries it
        committed = [base_flags[i] for i in picked] + [steered_flags[m][i] for i in picked]
        now = [again[None, i] for i in picked] + [again[m, i] for i in picked]
        differ = sum(a != c for a, c in zip(now, committed, strict=True))
        assert differ <= len(committed) // 8, (m, differ, len(committed))

    kls = [heldout_kls[threat_model, m] for m in methods]
    assert kls == pytest.approx([entry["methods"][m]["kl_heldout"] for m in methods], rel=0.10, abs=0.005)
