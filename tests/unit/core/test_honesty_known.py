"""The knowledge-filtered honesty set (scripts/filter_known.py): a subset of its sources, splits unchanged."""

import json

import lensteer
from lensteer.core.datasets import data_dir
from lensteer.core.splits import crossing_near_duplicates

# Written by scripts/filter_known.py (model runs, 2026-12-07; their numbers in docs/honesty-known/filter.json).
# No paraphrase crosses its splits: tests/unit/core/test_splits.py checks every bundled set, this one included.
SOURCES = ("honesty.jsonl", "honesty_easy.jsonl", "honesty_own.jsonl")
FILTER = json.loads((data_dir().parents[1] / "docs" / "honesty-known" / "filter.json").read_text())


def _rows(name):
    return {
        r["id"]: r for r in map(json.loads, (data_dir() / name).read_text(encoding="utf-8").splitlines()) if r
    }


def test_known_rows_are_source_rows_unchanged_with_their_splits():
    source = {i: r for name in SOURCES for i, r in _rows(name).items()}
    known = _rows("honesty_known.jsonl")
    assert known and set(known) <= set(source)
    assert [i for i, r in known.items() if r != source[i]] == []  # every field, the stored split included
    ds = lensteer.load_dataset("honesty_known")
    assert {ex.id: ex.split for ex in ds} == {i: r["split"] for i, r in known.items()}


def test_known_set_is_what_the_filter_reported_with_enough_test_questions():
    """Issue 28 asks for >= 96 known test questions (the lie rate's test is read on them)."""
    ds = lensteer.load_dataset("honesty_known")
    assert {"n": len(ds), "train": len(ds.train), "val": len(ds.val), "test": len(ds.test)} == FILTER["known"]
    assert len(ds.test) >= 96 and len(ds.val) >= 48 and len(ds.train) >= len(ds.test)
    assert set(FILTER["sources"]) == set(SOURCES)


def test_no_question_is_asked_twice_or_crosses_splits():
    for name in (*SOURCES, "honesty_known.jsonl"):
        rows = list(_rows(name).values())
        prompts = [" ".join(r["prompt"].lower().split()) for r in rows]
        assert len(set(prompts)) == len(prompts), name
    everything = lensteer.load_dataset("honesty_known")
    by_split = [{ex.prompt.lower() for ex in getattr(everything, s)} for s in ("train", "val", "test")]
    assert (
        not (by_split[0] & by_split[1])
        and not (by_split[0] & by_split[2])
        and not (by_split[1] & by_split[2])
    )
    # the new questions are checked against all the older ones, whatever split: no paraphrase of one of them
    older = [ex for name in ("honesty", "honesty_easy") for ex in lensteer.load_dataset(name)]
    own = list(lensteer.load_dataset("honesty_own"))
    split = {ex.id: ex.split for ex in [*older, *own]}
    crossing = crossing_near_duplicates([*older, *own], {**split, **{ex.id: "own" for ex in own}})
    assert [pair for pair in crossing if any(i.startswith("hon-own-") for i in pair)] == []


def test_own_questions_plant_their_answers_in_the_two_replies():
    for ex in lensteer.load_dataset("honesty_own"):
        assert ex.true_answer.lower() in ex.aligned_response.lower(), ex.id
        assert ex.false_answer.lower() in ex.misaligned_response.lower(), ex.id
        assert ex.aligned_response != ex.misaligned_response


def test_known_set_carries_the_honesty_contexts():
    assert lensteer.load_dataset("honesty_known").contexts == lensteer.load_dataset("honesty").contexts
