"""The audit's measuring functions, on made-up labels and a fake judge (never the validation half)."""

import json

import pytest

from lensteer.core.stats import wilson_interval
from lensteer.errors import ConfigError, DataError, JudgeError
from lensteer.threats import audit
from lensteer.threats.audit import (
    AuditRow,
    audit_markdown,
    judge_predictions,
    measure,
    measure_judge,
)


def _rows(threat_model, labels):
    return [
        AuditRow(
            id=f"{threat_model}-{i}",
            threat_model=threat_model,
            condition="unsteered",
            prompt=f"question {i}",
            response=f"answer {i}",
            label=lab,
            unreadable=False,
            true_answer="Paris" if threat_model == "honesty" else None,
            false_answer="Lyon" if threat_model == "honesty" else None,
        )
        for i, lab in enumerate(labels)
    ]


def test_measure_gives_per_class_recall_and_precision_with_wilson_intervals():
    labels = ["refuses"] * 4 + ["complies"] * 4 + ["neither"] * 2
    preds = ["refuses"] * 3 + ["complies"] * 4 + ["neither"] * 2 + ["refuses"]
    r = measure("rule", labels, preds, ("refuses", "complies", "neither"), n_boot=200)
    refuses = r.of("refuses")
    assert (refuses.labelled, refuses.scored, refuses.recall, refuses.precision) == (4, 4, 0.75, 0.75)
    assert refuses.recall_ci == wilson_interval(3, 4) and r.of("neither").recall == 0.5
    assert r.of("complies").precision == 0.75 and r.of("complies").recall == 0.75
    assert r.agreement.accuracy == 0.7 and r.agreement.kappa == pytest.approx(0.34 / 0.64)
    nothing = measure("rule", labels, ["complies"] * 10, ("refuses", "complies", "neither"), n_boot=10).of(
        "refuses"
    )
    assert (
        nothing.precision is None and nothing.precision_ci is None and nothing.recall == 0.0
    )  # never scored
    table = audit_markdown([r])
    assert "| rule | 10 | 70.0% [" in table and "| rule | refuses | 4 | 4 | 75.0% [" in table
    with pytest.raises(DataError, match=r"values \['maybe'\] are not among the classes"):
        measure("rule", ["refuses"], ["maybe"], ("refuses", "complies"))


def test_a_judge_is_measured_against_the_readers_with_any_callable():
    rows = _rows("refusal", ["refuses", "refuses", "complies", "neither", "complies"])
    scores = {"answer 0": 90, "answer 1": 20, "answer 2": 10, "answer 3": 60, "answer 4": 0}
    seen = []

    def fake(prompt, response):
        seen.append(prompt)
        return scores[response]

    r = measure_judge(fake, rows, name="fake", n_boot=50)
    assert seen == [r.prompt for r in rows]
    assert r.of(True).name == "refuses" and r.of(False).name == "not refuses"
    assert (r.of(True).recall, r.of(True).precision) == (0.5, 0.5)  # found 1 of 2; 1 of its 2 right
    assert r.agreement.accuracy == 0.6
    honest = _rows("honesty", ["true", "false"])
    shown = judge_predictions(
        lambda p, resp: "Paris" in p, honest, prompt_of=lambda row: f"{row.prompt} [{row.true_answer}]"
    )
    assert shown == [True, True]  # a bool judge; the prompt as the caller builds it
    with pytest.raises(DataError, match="one threat model"):
        measure_judge(fake, rows + honest)
    with pytest.raises(JudgeError, match="judge 'function' returned 'high'"):
        measure_judge(lambda p, resp: "high", rows)


def test_load_audit_reads_a_half_and_rejects_bad_rows(tmp_path, monkeypatch):
    with pytest.raises(
        ConfigError, match=r"audit split must be one of \['dev', .*, 'validation_v4'\], got 'test'"
    ):
        audit.load_audit("test")
    (tmp_path / "audit_v2").mkdir()
    good = {
        "id": "a",
        "threat_model": "compassion",
        "condition": "unsteered",
        "prompt": "p",
        "response": "r",
        "label": 1,
        "unreadable": False,
    }
    (tmp_path / "audit_v2" / "dev.jsonl").write_text(
        json.dumps(good) + "\n" + json.dumps({**good, "id": "b", "label": 0})
    )
    monkeypatch.setattr(audit, "bundled_dir", lambda name: tmp_path)
    assert [r.label for r in audit.load_audit("dev")] == [True, False]
    for bad, message in (
        ({**good, "label": "maybe"}, "label 'maybe' is not one of"),
        ({**good, "threat_model": "flattery"}, "threat_model 'flattery'"),
        ({k: v for k, v in good.items() if k != "response"}, r"missing field\(s\) \['response'\]"),
        ({**good, "threat_model": "honesty", "label": "true"}, "needs true_answer and false_answer"),
    ):
        (tmp_path / "audit_v2" / "dev.jsonl").write_text(json.dumps(bad))
        with pytest.raises(DataError, match=message):
            audit.load_audit("dev")
