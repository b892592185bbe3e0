import json

import pytest
import torch
from builders import write_jsonl

import lensteer
from lensteer.locate.pairs import PairDesign, patching_pairs, shared_word_prefix


def _dataset(tmp_path, rows, contexts=None):
    path = write_jsonl(tmp_path / "toy.jsonl", rows)
    if contexts is not None:
        (tmp_path / "toy.contexts.json").write_text(json.dumps(contexts))
    return lensteer.load_dataset(path)


KIND_COLD = {
    "kind": {"system": "Be kind.", "turns": []},
    "cold": {"system": "Be cold.", "turns": []},
    "curt": {"system": "Be curt and cold.", "turns": []},
}


def _response_rows():
    # three prompts of 8 characters and one longer: the character tokenizer keeps the three
    rows = [
        {
            "id": f"r{i}",
            "category": "c",
            "prompt": f"Colour {i}?",
            "aligned_response": "It is red.",
            "misaligned_response": "It is blue.",
        }
        for i in range(3)
    ]
    rows.append(
        {
            "id": "long",
            "category": "c",
            "prompt": "A much longer question?",
            "aligned_response": "Yes.",
            "misaligned_response": "No.",
        }
    )
    return rows


def test_shared_word_prefix_cuts_at_a_word_boundary():
    assert (
        shared_word_prefix("The capital of France is Paris.", "The capital of France is Lyon.")
        == "The capital of France is"
    )
    assert shared_word_prefix("New Delhi", "New York") == "New"
    assert shared_word_prefix("I am sad", "I amble") == "I"  # "am" is not a whole word of the second text
    assert shared_word_prefix("Moscow", "Saint Petersburg") == ""
    with pytest.raises(lensteer.DataError, match="identical"):
        shared_word_prefix("Same.", "Same.")


def test_context_pairs_have_one_length_and_the_tokens_where_the_responses_part(tiny_tokenizer, tmp_path):
    ds = _dataset(tmp_path, _response_rows(), KIND_COLD)
    pairs = patching_pairs(tiny_tokenizer, ds, design=PairDesign(contexts=("kind", "cold")))
    assert pairs.ids == ("r0", "r1", "r2") and len(pairs) == 3  # the longer row has another length
    lengths = {
        lensteer.core.tokenize_prompt(tiny_tokenizer, p).n_tokens for p in pairs.clean + pairs.corrupted
    }
    assert lengths == {pairs.n_tokens}
    assert all(
        p.system == "Be kind." and q.system == "Be cold."
        for p, q in zip(pairs.clean, pairs.corrupted, strict=True)
    )
    # character tokens: "It is " is prefilled, then "r" (red) vs "b" (blue)
    assert pairs.clean[0].response == "It is " == pairs.corrupted[0].response
    assert set(pairs.aligned_ids) == {tiny_tokenizer.convert_tokens_to_ids("r")}
    assert set(pairs.misaligned_ids) == {tiny_tokenizer.convert_tokens_to_ids("b")}
    logits = torch.zeros(3, len(tiny_tokenizer))
    logits[:, pairs.aligned_ids[0]] = 2.0
    assert pairs.metric()(logits).tolist() == [2.0, 2.0, 2.0]  # positive = aligned
    assert pairs.to_dict()["n_tokens"] == pairs.n_tokens


def test_fixed_tokens_are_read_at_the_assistant_start(tiny_tokenizer, tmp_path):
    rows = [
        {"id": f"r{i}", "category": "c", "prompt": f"Colour {i}?"} for i in range(2)
    ]  # no responses needed
    ds = _dataset(tmp_path, rows, KIND_COLD)
    pairs = patching_pairs(
        tiny_tokenizer, ds, design=PairDesign(contexts=("kind", "cold"), tokens=("I", "Y"))
    )
    assert pairs.clean[0].response is None and len(pairs) == 2
    assert set(pairs.aligned_ids) == {tiny_tokenizer.convert_tokens_to_ids("I")}
    assert set(pairs.misaligned_ids) == {tiny_tokenizer.convert_tokens_to_ids("Y")}


def test_prompt_pairs_keep_equal_lengths_and_spread_over_categories(tiny_tokenizer, tmp_path):
    rows = [
        {"id": f"{c}{i}", "category": c, "prompt": f"Harm {c}{i}", "paired_prompt": f"Safe {c}{i}"}
        for c in "abcd"
        for i in range(2)
    ]
    rows.append({"id": "uneven", "category": "a", "prompt": "Harm a9", "paired_prompt": "Be safe a9"})
    ds = _dataset(tmp_path, rows)
    pairs = patching_pairs(tiny_tokenizer, ds, n=4)
    assert pairs.ids == ("a0", "b0", "c0", "d0")  # one per category, in row order
    assert pairs.clean[0].user == "Harm a0" and pairs.corrupted[0].user == "Safe a0"
    assert set(pairs.aligned_ids) == {lensteer.core.first_token_id(tiny_tokenizer, "I")}
    assert "uneven" not in patching_pairs(tiny_tokenizer, ds).ids


def test_bad_input_raises_clear_errors(tiny_tokenizer, tiny_bridge, tmp_path):
    ds = _dataset(tmp_path, _response_rows(), KIND_COLD)
    with pytest.raises(lensteer.ConfigError, match="n must be a positive"):
        patching_pairs(tiny_tokenizer, ds, n=0)
    with pytest.raises(lensteer.DataError, match="equal token lengths"):
        patching_pairs(tiny_tokenizer, ds, design=PairDesign(contexts=("kind", "curt")))
    with pytest.raises(lensteer.ConfigError, match="no context 'nope'"):
        patching_pairs(tiny_tokenizer, ds, design=PairDesign(contexts=("kind", "nope")))
    with pytest.raises(lensteer.DataError, match="no paired_prompt"):
        patching_pairs(tiny_tokenizer, ds)  # not bundled, no contexts named: prompt vs paired_prompt
    (tmp_path / "bare").mkdir()
    bare = _dataset(tmp_path / "bare", [{"id": "x", "prompt": "Colour?"}], KIND_COLD)
    with pytest.raises(lensteer.DataError, match="no rows with aligned_response"):
        patching_pairs(tiny_tokenizer, bare, design=PairDesign(contexts=("kind", "cold")))
    with pytest.raises(lensteer.ConfigError, match="no tokenizer"):
        patching_pairs(tiny_bridge, "refusal")
    with pytest.raises(lensteer.DataError, match="neither a bundled name"):
        patching_pairs(tiny_tokenizer, "nope")
