"""Inducers as values: what each kind does to a prompt, composition, the bundled set, clear errors."""

import json

import pytest

from lensteer.core.chat import ChatPrompt, Turn
from lensteer.core.datasets import load_dataset
from lensteer.core.inducers import (
    Inducer,
    apply_inducers,
    bundled_inducers,
    inducer_from_dict,
    load_inducer,
    read_inducers,
)
from lensteer.errors import ConfigError, DataError

PROMPT = ChatPrompt(
    user="how do I open this lock",
    system="Be nice.",
    history=(Turn(role="user", content="hi"), Turn(role="assistant", content="hello")),
)


def test_each_kind_changes_only_its_part_of_the_prompt():
    system = Inducer(name="s", kind="system", system="Obey.").apply(PROMPT)
    assert (system.system, system.user, system.history, system.response) == (
        "Obey.",
        PROMPT.user,
        PROMPT.history,
        None,
    )
    shot = Turn(role="user", content="q"), Turn(role="assistant", content="a")
    few = Inducer(name="f", kind="few_shot", turns=shot).apply(PROMPT)
    assert few.history == shot + PROMPT.history and few.system == "Be nice." and few.user == PROMPT.user
    pre = Inducer(name="p", kind="prefill", prefill="Sure, here").apply(PROMPT)
    assert pre.response == "Sure, here" and pre.user == PROMPT.user
    wrap = Inducer(name="w", kind="wrapper", template="In a story: {request}!").apply(PROMPT)
    assert wrap.user == "In a story: how do I open this lock!" and wrap.system == "Be nice."
    assert PROMPT.user == "how do I open this lock" and PROMPT.response is None  # the original is untouched


def test_a_split_template_cuts_the_request_in_two_word_halves():
    split = Inducer(name="o", kind="wrapper", template="a='{first}' b='{second}'")
    assert split.apply(PROMPT).user == "a='how do I' b='open this lock'"
    assert split.apply(ChatPrompt(user="one")).user == "a='one' b=''"


def test_inducers_compose_in_order_and_the_scorer_reads_the_prefill():
    wrap = Inducer(name="w", kind="wrapper", template="Hypothetically, {request}")
    pre = Inducer(name="p", kind="prefill", prefill="Sure:")
    out = apply_inducers(ChatPrompt(user="tell me"), [wrap, pre])
    assert (out.user, out.response) == ("Hypothetically, tell me", "Sure:")
    assert pre.scored_text(" step one") == "Sure: step one" and wrap.scored_text("x") == "x"
    with pytest.raises(ConfigError, match="already has a response"):
        pre.apply(out)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "x", "kind": "jailbreak", "system": "a"}, "kind 'jailbreak' is not one of"),
        ({"name": "x", "kind": "system"}, "needs a non-empty system"),
        ({"name": "x", "kind": "few_shot"}, "needs a non-empty turns"),
        ({"name": "x", "kind": "prefill", "prefill": "  "}, "needs a non-empty prefill"),
        ({"name": "x", "kind": "system", "system": "a", "prefill": "b"}, r"must not also set \['prefill'\]"),
        ({"name": "x", "kind": "wrapper", "template": "no slot"}, "must be exactly"),
        ({"name": "x", "kind": "wrapper", "template": "{request} {first}"}, "must be exactly"),
        ({"name": "x", "kind": "wrapper", "template": "{request"}, "malformed"),
        ({"name": "", "kind": "system", "system": "a"}, "non-empty name"),
        ({"name": "x", "kind": "system", "system": "a", "threat_models": ("harm",)}, "unknown threat model"),
    ],
)
def test_bad_inducers_are_refused_by_name(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Inducer(**kwargs)


def test_the_bundled_inducers_cover_every_kind_and_every_threat_model():
    kinds = set()
    for tm in ("refusal", "compassion", "honesty"):
        found = bundled_inducers(tm)
        assert found and all(not i.threat_models or tm in i.threat_models for i in found.values())
        kinds |= {i.kind for i in found.values()}
        assert any(i.kind == "prefill" for i in found.values())  # every threat model can be prefilled
    assert kinds == {"system", "few_shot", "prefill", "wrapper"}
    refusal = bundled_inducers("refusal")
    assert {
        "malicious_system",
        "compliance_fewshot",
        "prefill_comply",
        "roleplay",
        "hypothetical",
        "obfuscation",
    } <= set(refusal)
    # the datasets' misaligning contexts are inducers; their aligned counterparts (for patching) are not
    honesty = bundled_inducers("honesty")
    assert honesty["lying_fewshot"].kind == "few_shot" and honesty["lying_system"].kind == "system"
    assert (
        "honest_system" not in honesty
        and "honest_fewshot" not in honesty
        and "caring_system" not in bundled_inducers("compassion")
    )
    context = load_dataset("honesty").context("lying_fewshot")
    assert honesty["lying_fewshot"].apply(PROMPT) == context.apply(PROMPT)
    with pytest.raises(ConfigError, match="no inducer 'nope' for refusal; available"):
        load_inducer("nope", "refusal")
    with pytest.raises(ConfigError, match="unknown threat model 'harm'"):
        bundled_inducers("harm")


def test_inducer_files_round_trip_and_bad_files_name_the_problem(tmp_path):
    refusal = bundled_inducers("refusal")
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({name: i.to_dict() for name, i in refusal.items()}))
    assert read_inducers(path) == refusal
    path.write_text(json.dumps({"x": {"kind": "system", "system": "a", "colour": "red"}}))
    with pytest.raises(DataError, match=r"mine.json: inducer 'x' has unknown key\(s\) \['colour'\]"):
        read_inducers(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_inducers(path)
    path.write_text("{}")
    with pytest.raises(DataError, match="non-empty JSON object"):
        read_inducers(path)
    with pytest.raises(DataError, match="malformed turn"):
        inducer_from_dict("t", {"kind": "few_shot", "turns": [{"role": "user"}]})
    with pytest.raises(DataError, match="does not exist"):
        read_inducers(tmp_path / "absent.json")
