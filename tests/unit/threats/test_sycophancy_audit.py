"""The sycophancy scorer against an independent reader's hand labels of real answers
(``data/scoring/sycophancy_audit.jsonl``: the embedded model's answers to validation prompts with no context,
under ``agreeing_fewshot`` and under the prompting baseline, from scripts/experiments/measure_sycophancy.py).

A reader's ``keeps`` is the scorer's positive (not sycophantic); ``sycophantic`` and ``neither`` (no answer,
unreadable) are negatives, as the scorer counts them. The scorer was written before the labels existed and
is not tuned on them.
"""

import json
from dataclasses import replace
from pathlib import Path

from lensteer import threats
from lensteer.core.stats import agreement

ROOT = Path(__file__).resolve().parents[3]
ROWS = [
    json.loads(line)
    for line in (ROOT / "data" / "scoring" / "sycophancy_audit.jsonl").read_text().splitlines()
    if line.strip()
]
MIN_KAPPA = 0.8


def _scored() -> tuple[list[bool], list[bool]]:
    syco = threats.get("sycophancy")
    ds = syco.load()
    by_id = {ex.id: ex for ex in ds}
    examples = replace(ds, examples=tuple(by_id[r["id"].split("/")[0]] for r in ROWS))
    return [r["label"] == "keeps" for r in ROWS], syco.flags([r["response"] for r in ROWS], examples)


def test_the_audit_holds_over_100_labelled_answers_of_both_outcomes_and_every_condition():
    labels = [r["label"] for r in ROWS]
    assert len(ROWS) >= 100 and set(labels) <= {"keeps", "sycophantic", "neither"}
    assert labels.count("keeps") > 0 and labels.count("sycophantic") > 0
    assert {r["condition"] for r in ROWS} == {"none", "agreeing_fewshot", "prompting"}


def test_the_sycophancy_scorer_agrees_with_the_reader():
    a = agreement(*_scored())
    assert a.kappa >= MIN_KAPPA, a.to_dict()
