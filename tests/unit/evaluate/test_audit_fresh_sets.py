"""Development round 5 (``data/scoring/audit_v2/dev_round5.jsonl``) and validation set v4
(``data/scoring/audit_v4/validation.jsonl``): their prompts are fresh, their classes have power.

Reads labels and prompts only: no scorer runs here (validation v4 is for the lead's one-time evaluation).
"""

import importlib.util
from pathlib import Path

import pytest

from lensteer import load_dataset
from lensteer.core.bundled import bundled_dir, read_jsonl
from lensteer.core.splits import crossing_near_duplicates
from lensteer.threats import get
from lensteer.threats.audit import AUDIT_CLASSES, load_audit

EARLIER = ("dev", "validation", "validation_v3")
# the fewest answers per threat model, and per class, each set must hold (issue 27, the reader's brief)
MINIMUM = {
    ("dev_round5", "refusal"): 150,
    ("dev_round5", "honesty"): 150,
    ("validation_v4", "refusal"): 110,
    ("validation_v4", "honesty"): 120,
}
PER_CLASS = 25
_FILES = {"dev_round5": ("audit_v2", "dev_round5.jsonl"), "validation_v4": ("audit_v4", "validation.jsonl")}
_SPEC = importlib.util.spec_from_file_location(
    "make_audit_set", Path(__file__).parents[3] / "scripts" / "experiments" / "make_audit_set.py"
)


def _raw(split: str) -> list[dict]:
    folder, name = _FILES[split]
    return read_jsonl(bundled_dir("scoring") / folder / name)


@pytest.fixture(scope="module")
def generator():
    """The generator script (its ``request_of`` and ``asked_before``)."""
    module = importlib.util.module_from_spec(_SPEC)
    _SPEC.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def examples() -> dict[str, dict]:
    """Every row each fresh answer may name (``example_id``): the refusal, borderline and known honesty sets."""
    out: dict[str, dict] = {}
    for name in (get("refusal").dataset, "borderline", get("honesty").dataset):
        out.update({ex.id: ex for ex in load_dataset(name)})
    return out


@pytest.mark.parametrize("split", ["dev_round5", "validation_v4"])
def test_a_fresh_set_has_power_for_each_class(split):
    rows = load_audit(split)
    for (s, tm), least in MINIMUM.items():
        if s == split:
            labels = [r.label for r in rows if r.threat_model == tm]
            counts = {c: labels.count(c) for c in AUDIT_CLASSES[tm]}
            assert len(labels) >= least, (tm, len(labels))
            assert min(counts.values()) >= PER_CLASS, (tm, counts)


def test_fresh_answers_name_their_rows_and_ask_each_once(examples, generator):
    for split in _FILES:
        raw = _raw(split)
        ids = [r["example_id"] for r in raw]
        assert len(set(ids)) == len(ids), split  # no row asked twice within a set
        for r in raw:
            ex = examples[r["example_id"]]
            assert ex.prompt in generator.request_of(r["prompt"]), r["id"]
            if r["threat_model"] == "honesty":
                assert (ex.true_answer, ex.false_answer) == (r["true_answer"], r["false_answer"]), r["id"]
    assert not {r["example_id"] for r in _raw("dev_round5")} & {
        r["example_id"] for r in _raw("validation_v4")
    }


def test_no_fresh_prompt_is_asked_elsewhere_or_is_a_near_duplicate_across_sets(examples, generator):
    """Neither set asks a row any earlier answer asks (even inside a wrapper), and no row of development round 5
    is a near-duplicate of one of validation v4."""
    asked = generator.asked_before()
    fresh = {split: [examples[r["example_id"]] for r in _raw(split)] for split in _FILES}
    for split, rows in fresh.items():
        assert not [ex.id for ex in rows if any(ex.prompt in p for p in asked)], split
    every = [r for split in (*EARLIER, *_FILES) for r in load_audit(split)]
    assert len({r.id for r in every}) == len(every)  # no answer in two sets
    others = {r.response.strip() for split in (*EARLIER, "dev_round5") for r in load_audit(split)}
    assert not {r.response.strip() for r in load_audit("validation_v4")} & others  # no v4 text seen elsewhere
    both = [*fresh["dev_round5"], *fresh["validation_v4"]]
    split_of = {ex.id: split for split, rows in fresh.items() for ex in rows}
    assert not crossing_near_duplicates(both, split_of)
