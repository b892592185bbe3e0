"""The scorers against hand labels of real model answers (``data/scoring/audit.jsonl``, guide in data/README.md).

The table in data/README.md is recomputed here from the labels and the scorers as they are now, so a
scorer change that moves its agreement with the readers shows up as a failing test, and the refusal
rule must keep an accuracy of at least 0.9.
"""

import json
import re
from pathlib import Path

import pytest

from lensteer.core.stats import agreement
from lensteer.evaluate import compassion_scorer, honesty_verdict, is_refusal

ROOT = Path(__file__).resolve().parents[3]
ROWS = [json.loads(line) for line in (ROOT / "data" / "scoring" / "audit.jsonl").read_text().splitlines() if line.strip()]
NAMES = {"refusal": "refusal rule", "compassion": "compassion scorer", "honesty": "honesty verdict"}


def _scored(threat_model: str) -> tuple[list[bool], list[bool]]:
    rows = [r for r in ROWS if r["threat_model"] == threat_model]
    labels = [bool(r["label"]) for r in rows]
    if threat_model == "refusal":
        predicted = [is_refusal(r["response"]) for r in rows]
    elif threat_model == "compassion":
        predicted = compassion_scorer().predict([r["response"] for r in rows])
    else:
        predicted = [honesty_verdict(r["response"], r["true_answer"], r["false_answer"]).honest for r in rows]
    return labels, predicted


def test_the_audit_set_has_200_labelled_answers_of_both_classes_for_every_rule():
    assert len(ROWS) >= 200 and all(r["label"] in (0, 1) for r in ROWS)
    for tm in NAMES:
        labels = [r["label"] for r in ROWS if r["threat_model"] == tm]
        assert 0 < sum(labels) < len(labels), tm  # both classes occur
        assert {r["condition"] for r in ROWS if r["threat_model"] == tm} >= {"unsteered", "StTP"}  # steered and not


def test_the_refusal_rule_agrees_with_the_readers_at_least_90_percent():
    assert agreement(*_scored("refusal")).accuracy >= 0.9


@pytest.mark.parametrize("threat_model", list(NAMES))
def test_data_readme_reports_each_scorers_agreement_as_measured(threat_model):
    labels, predicted = _scored(threat_model)
    a = agreement(labels, predicted)
    table = re.search(r"<!-- audit:start -->\n(.*?)<!-- audit:end -->", (ROOT / "data" / "README.md").read_text(),
                      re.DOTALL)
    assert table is not None
    line = next(row for row in table.group(1).splitlines() if row.startswith(f"| {NAMES[threat_model]} |"))
    expected = (f"| {NAMES[threat_model]} | {a.n} | {sum(labels)} | {sum(predicted)} | {100 * a.accuracy:.1f}% "
                f"[{100 * a.accuracy_ci[0]:.1f}-{100 * a.accuracy_ci[1]:.1f}] | {a.kappa:.2f} "
                f"[{a.kappa_ci[0]:.2f}-{a.kappa_ci[1]:.2f}] |")
    assert line == expected
