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
* the held-out KL (harmless test prompts along their unsteered continuations) and the calibration KL
  (the study's calibration set: held-apart harmless and borderline prompts) of every committed steering at
  the matched budget (StMP-push is StMP's twin; the random control's first seed stands for its others,
  calibrated by the same code), gate as deployed: ``docs/study/kl_by_prompt.json`` records them prompt by
  prompt (``scripts/record_study_kls.py``); its means are the reported ``kl_heldout`` of every method and
  the calibration KL each steering's file recorded, within 10%; and a sample of prompts from each set,
  re-measured now, gives the recorded continuations and each steering's recorded KL on every one of them
  (re-measuring every prompt took ~4 minutes of a core, most of ``make test``'s slowest file).
"""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import lensteer
from lensteer import threats
from lensteer.core.stats import mcnemar_exact
from lensteer.steering.calibration import sequence_scores
from lensteer.study.coherence import calibration_prompts
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
RECORD = json.loads((STUDY / "kl_by_prompt.json").read_text())
KL_SETS = {"calibration": calibration_prompts, "heldout": heldout_harmless}  # the prompts of each set
KL_SAMPLE = 6  # prompts of each set re-measured
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


def _weighted_mean(kls: list[float | None], positions: list[int]) -> float:
    """A set's mean per-token KL: each prompt's mean weighted by its continuation's positions."""
    return sum(k * n for k, n in zip(kls, positions, strict=True) if k is not None) / sum(positions)


def test_the_kl_record_covers_every_committed_steering_and_its_means_are_the_study_s():
    assert RECORD["kl_tokens"] == CONFIG.kl_tokens and set(RECORD["sets"]) == set(KL_SETS)
    assert set(RECORD["steerings"]) == {f"{tm}/{m}" for tm, m in CHECKED}
    for name, prompts in KL_SETS.items():
        assert len(RECORD["sets"][name]["positions"]) == len(prompts(CONFIG))
    for tm, m in CHECKED:
        per = RECORD["steerings"][f"{tm}/{m}"]
        calibration = _weighted_mean(per["calibration"], RECORD["sets"]["calibration"]["positions"])
        recorded = lensteer.load_steering(chosen_steering(STUDY, tm, m, BUDGET)).info["calibration"]["kl"]
        assert calibration == pytest.approx(recorded, rel=0.10, abs=0.005), (tm, m)
        heldout = _weighted_mean(per["heldout"], RECORD["sets"]["heldout"]["positions"])
        row = _row(tm, per["row"], BUDGET)  # the steering's results row (random0: random:0)
        assert heldout == pytest.approx(row["kl_heldout"], rel=0.10, abs=0.005), (tm, m)


@pytest.mark.parametrize("kl_set", sorted(KL_SETS))
def test_a_sample_of_prompts_gives_the_recorded_continuations_and_kls(embedded_model, kl_set):
    """Prompts spread over the set: their unsteered continuations again (at most one differs: a batch
    of another composition may flip a near-tie in greedy decoding), and along the recorded
    continuations every committed steering's KL on each prompt, gate as deployed."""
    recorded = RECORD["sets"][kl_set]
    prompts = KL_SETS[kl_set](CONFIG)
    picked = torch.linspace(0, len(prompts) - 1, KL_SAMPLE).round().long().tolist()
    again = lensteer.generate(
        embedded_model,
        [prompts[i] for i in picked],
        max_new_tokens=CONFIG.kl_tokens,
        batch_size=CONFIG.batch_size,
    )
    assert [t.tolist() for t in again.prompt_tokens] == [recorded["prompt_tokens"][i] for i in picked]
    same = sum(t.tolist() == recorded["continuations"][i] for t, i in zip(again.tokens, picked, strict=True))
    assert same >= KL_SAMPLE - 1, (kl_set, same)
    scores = sequence_scores(
        embedded_model,
        [_steering(embedded_model, tm, m) for tm, m in CHECKED],
        [torch.tensor(recorded["prompt_tokens"][i]) for i in picked],
        [torch.tensor(recorded["continuations"][i]) for i in picked],
        batch_size=CONFIG.batch_size,
    )
    assert scores.positions.tolist() == [recorded["positions"][i] for i in picked]
    for (tm, m), by_prompt in zip(CHECKED, scores.kl_by_prompt, strict=True):
        want = [RECORD["steerings"][f"{tm}/{m}"][kl_set][i] for i in picked]
        got = [None if x != x else x for x in by_prompt.tolist()]  # NaN (an empty continuation): None
        assert got == pytest.approx(want, rel=1e-3, abs=1e-6), (tm, m)


@pytest.mark.parametrize("threat_model", sorted(FINDINGS))
def test_every_significant_finding_reproduces(embedded_model, threat_model):
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
