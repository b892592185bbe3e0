import json

import pytest
from builders import write_jsonl

import lensteer
from lensteer.errors import DataError


@pytest.mark.parametrize(("name", "n_min"), [("refusal", 300), ("compassion", 150), ("honesty", 150)])
def test_bundled_dataset_sizes_and_schema(name, n_min):
    ds = lensteer.load_dataset(name)
    assert len(ds) >= n_min
    assert len({ex.id for ex in ds}) == len(ds)
    assert all(ex.prompt.strip() for ex in ds)


def test_refusal_has_ten_categories_pairs_and_150_response_rows():
    ds = lensteer.load_dataset("refusal")
    assert len(ds.categories) >= 10
    assert len(ds.paired_prompts) == len(ds) >= 300
    assert len(ds.with_responses()) >= 150
    # matched form: harmful and harmless prompts of similar length on average
    mean_len = lambda texts: sum(len(t.split()) for t in texts) / len(texts)  # noqa: E731
    assert abs(mean_len(ds.prompts) - mean_len(ds.paired_prompts)) < 2


def test_honesty_answers_are_planted_in_their_sentences():
    for ex in lensteer.load_dataset("honesty"):
        assert ex.true_answer.lower() in ex.aligned_response.lower()
        assert ex.false_answer.lower() in ex.misaligned_response.lower()
        assert ex.true_answer.lower() not in ex.misaligned_response.lower()


def test_contexts_load_and_apply_few_shot_turns():
    ds = lensteer.load_dataset("compassion")
    ctx = ds.context("dismissive_fewshot")
    assert len(ctx.turns) >= 6 and ctx.turns[0].role == "user"
    prompt = ds.chat_prompts(context="dismissive_fewshot")[0]
    assert prompt.history == ctx.turns and prompt.user == ds[0].prompt
    system = lensteer.load_dataset("honesty").chat_prompts(context="lying_system")[0]
    assert system.system and not system.history
    with pytest.raises(lensteer.ConfigError, match="no context 'nope'"):
        ds.context("nope")


@pytest.mark.parametrize("name", ["refusal", "compassion", "honesty"])
def test_splits_are_deterministic_disjoint_and_cover_the_set(name):
    ds = lensteer.load_dataset(name)
    ids = [{ex.id for ex in getattr(ds, s)} for s in ("train", "val", "test")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert len(ids[0] | ids[1] | ids[2]) == len(ds)
    assert 0.55 < len(ids[0]) / len(ds) < 0.65
    again = lensteer.load_dataset(name)
    assert [ex.id for ex in again.test] == [ex.id for ex in ds.test]


def test_split_is_stable_when_rows_are_added(tmp_path):
    rows = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(50)]
    small = lensteer.load_dataset(write_jsonl(tmp_path / "a.jsonl", rows))
    big = lensteer.load_dataset(
        write_jsonl(tmp_path / "b.jsonl", [*rows, *({"id": f"n{i}", "prompt": "x"} for i in range(50))])
    )
    small_train = {ex.id for ex in small.train}
    big_test = {ex.id for ex in big.test}
    assert len(small_train & big_test) <= 3  # hash order: almost no train row moves into test


def test_user_file_jsonl_and_csv_load_with_the_same_call(tmp_path):
    rows = [
        {"id": "a", "prompt": "p1", "paired_prompt": "q1"},
        {"id": "b", "prompt": "p2", "paired_prompt": "q2"},
    ]
    jl = lensteer.load_dataset(write_jsonl(tmp_path / "mine.jsonl", rows))
    csv_path = tmp_path / "mine.csv"
    csv_path.write_text(
        "id,prompt,paired_prompt,aligned_response,misaligned_response\na,p1,q1,,\nb,p2,q2,,\n"
    )
    cs = lensteer.load_dataset(csv_path)
    assert jl.prompts == cs.prompts == ["p1", "p2"] and cs.paired_prompts == ["q1", "q2"]
    assert cs.name == "mine" and len(cs) == 2


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([{"id": "a"}], "line 1: missing required field 'prompt'"),
        ([{"id": "a", "prompt": "x", "colour": "red"}], r"unknown field\(s\) \['colour'\]"),
        ([{"id": "a", "prompt": "x", "aligned_response": "yes"}], "lacks 'misaligned_response'"),
        ([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}], "duplicate id 'a'"),
        ([{"id": "a", "prompt": 3}], "field 'prompt' must be a string"),
        ([], "has no rows"),
    ],
)
def test_malformed_rows_raise_data_errors_naming_the_problem(tmp_path, rows, match):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=match):
        lensteer.load_dataset(path)


def test_bad_json_unknown_name_and_wrong_suffix(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"id": "a", "prompt": "x"}\n{not json\n')
    with pytest.raises(DataError, match="line 2: not valid JSON"):
        lensteer.load_dataset(tmp_path / "x.jsonl")
    with pytest.raises(DataError, match="neither a bundled name"):
        lensteer.load_dataset("refusals")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="use .jsonl or .csv"):
        lensteer.load_dataset(tmp_path / "x.txt")


def test_response_prompts_need_responses():
    ds = lensteer.load_dataset("refusal")
    with pytest.raises(DataError, match="has no aligned_response"):
        ds.chat_prompts(response="aligned")
    prompts = ds.with_responses().chat_prompts(response="misaligned")
    assert all(p.response for p in prompts)


def test_contexts_file_malformed(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "prompt": "x"}])
    (tmp_path / "d.contexts.json").write_text(json.dumps({"c": {"turns": [{"role": "user"}]}}))
    with pytest.raises(DataError, match="context 'c' is malformed"):
        lensteer.load_dataset(tmp_path / "d.jsonl")
