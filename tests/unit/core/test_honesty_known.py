"""The knowledge-filtered honesty set (scripts/filter_known.py): a subset of its two sources, splits unchanged."""

import json

import pytest

import lensteer
from lensteer.core.datasets import data_dir

# The set is written by scripts/filter_known.py (a model run); until it is, there is nothing to check. No
# paraphrase crosses its splits: tests/unit/core/test_splits.py checks every bundled set, this one included.
pytestmark = pytest.mark.skipif(not (data_dir() / "honesty_known.jsonl").is_file(),
                                reason="data/contrast/honesty_known.jsonl not written yet (scripts/filter_known.py)")

SOURCES = ("honesty.jsonl", "honesty_easy.jsonl")
MIN_TEST = 96


def _rows(name):
    return {r["id"]: r for r in map(json.loads, (data_dir() / name).read_text(encoding="utf-8").splitlines()) if r}


def test_known_rows_are_source_rows_unchanged_with_their_splits():
    source = {i: r for name in SOURCES for i, r in _rows(name).items()}
    known = _rows("honesty_known.jsonl")
    assert known and set(known) <= set(source)
    assert [i for i, r in known.items() if r != source[i]] == []  # every field, the stored split included
    ds = lensteer.load_dataset("honesty_known")
    assert {ex.id: ex.split for ex in ds} == {i: r["split"] for i, r in known.items()}


def test_known_set_has_enough_test_rows_and_keeps_every_split():
    ds = lensteer.load_dataset("honesty_known")
    assert len(ds.test) >= MIN_TEST
    assert len(ds.train) > 0 and len(ds.val) > 0


def test_known_set_carries_the_honesty_contexts():
    assert lensteer.load_dataset("honesty_known").contexts == lensteer.load_dataset("honesty").contexts
