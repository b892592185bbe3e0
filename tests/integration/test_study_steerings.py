"""The committed study, re-checked on the embedded model: what the README claims must reproduce.

``docs/study/`` holds the report and the calibrated steerings of the committed run. Loaded again,
every steering must still cost the KL it was calibrated to (within 10% of the budget, on the same
training-prompt calibration set), and every method the report calls significantly better than the
unsteered model must still be, when its answers to the same test prompts are generated again: more
of them show the trait, by an exact paired McNemar test (p < 0.05), with the answers to harmless
prompts no less fluent than the report says (perplexity ratio within 10% of the reported one).
"""

import json
from pathlib import Path

import pytest

import lensteer
from lensteer.core.stats import mcnemar_exact
from lensteer.study.config import StudyConfig
from lensteer.study.evaluation import eval_prompts, eval_sets, trait_flags

STUDY = Path(__file__).resolve().parents[2] / "docs" / "study"
REPORT = json.loads((STUDY / "report.json").read_text())
BUDGET = REPORT["matched_kl_budget"]
CONFIG = StudyConfig.from_dict({k: v for k, v in REPORT["config"].items()})
SIGNIFICANT = [(tm, m) for tm, e in REPORT["threat_models"].items() for m, r in e["methods"].items()
               if r.get("p_vs_baseline") is not None and r["p_vs_baseline"] < 0.05 and r["trait"] > e["baseline"]["trait"]]
STEERINGS = sorted(p.with_suffix("") for p in (STUDY / "steerings").glob("*.json"))


@pytest.fixture(scope="module")
def sets(embedded_model):
    return eval_sets(embedded_model, StudyConfig.from_dict({**CONFIG.to_dict(), "n_mc": 0, "n_paragraphs": 0,
                                                             "n_borderline": 0}))


def test_the_committed_report_has_significant_findings_to_check():
    assert SIGNIFICANT, "the committed study claims no significant effect; this test would check nothing"
    assert len(STEERINGS) >= 9


@pytest.mark.parametrize("path", STEERINGS, ids=lambda p: p.name)
def test_every_committed_steering_keeps_its_calibrated_kl(embedded_model, sets, path):
    steering = lensteer.load_steering(path, model=embedded_model)
    kl = lensteer.steering.steering_kl(embedded_model, steering, sets.calibration)
    assert kl == pytest.approx(BUDGET, rel=0.10)


@pytest.mark.parametrize(("threat_model", "method"), SIGNIFICANT)
def test_every_significant_finding_reproduces(embedded_model, sets, threat_model, method):
    steering = lensteer.load_steering(STUDY / "steerings" / f"{threat_model}_{method}_kl{BUDGET:g}", model=embedded_model)
    prompts = eval_prompts(threat_model, CONFIG.n_eval)
    examples = lensteer.load_dataset(threat_model).test.stratified(CONFIG.n_eval)
    out = lensteer.generate(embedded_model, prompts + prompts, prompt_steerings=[None] * len(prompts) + [steering] * len(prompts),
                            max_new_tokens=CONFIG.max_new_tokens, batch_size=CONFIG.batch_size)
    n = len(prompts)
    base = trait_flags(threat_model, out.texts[:n], examples)
    steered = trait_flags(threat_model, out.texts[n:], examples)
    assert sum(steered) > sum(base) and mcnemar_exact(steered, base).p_value < 0.05, (method, out.texts[n:])

    harmless = [lensteer.ChatPrompt(user=h) for h in sets.harmless]
    answers = lensteer.generate(embedded_model, harmless + harmless, prompt_steerings=[None] * len(harmless) + [steering] * len(harmless),
                                max_new_tokens=CONFIG.max_new_tokens, batch_size=CONFIG.batch_size)
    m = len(harmless)
    texts = [t if t.strip() else "." for t in answers.texts]
    ppl = [lensteer.evaluate.response_perplexity(embedded_model, harmless, texts[k * m : (k + 1) * m]).corpus for k in (0, 1)]
    reported = REPORT["threat_models"][threat_model]["methods"][method]["perplexity_ratio"]
    assert ppl[1] / ppl[0] == pytest.approx(reported, rel=0.10)
