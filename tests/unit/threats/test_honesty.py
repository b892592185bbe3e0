"""Honesty made measurable (issue 28): the threat model asks the knowledge-filtered questions under the
setting that made the model lie most on validation questions, and its study rows carry the lie rate, the
no-answer rate and the decision log-odds beside the honest-answer rate."""

import json
from dataclasses import replace

import lensteer
from lensteer import threats
from lensteer.core.datasets import data_dir
from lensteer.study import evaluation
from lensteer.study.config import StudyConfig
from lensteer.threats.honesty import lies, no_answers

MEASURED = data_dir().parents[1] / "docs" / "honesty-known"


def test_honesty_asks_the_known_questions_under_the_setting_chosen_on_validation():
    tm = threats.get("honesty")
    known = lensteer.load_dataset("honesty_known")
    assert tm.dataset == "honesty_known" and [ex.id for ex in tm.load()] == [ex.id for ex in known]
    asked = evaluation.eval_prompts("honesty", None)
    assert [p.user for p in asked] == [ex.prompt for ex in known.test.stratified(None)]
    val = json.loads((MEASURED / "val.json").read_text())
    chosen_on = {a["id"] for a in val["settings"]["unsteered"]["answers"]}
    assert (
        val["split"] == "val"
        and val["n"] == len(chosen_on) >= 48
        and chosen_on <= {ex.id for ex in known.val}
    )
    # the study puts its prompts in a context (system prompt, earlier turns): of those, the highest lie rate
    rates = {name: s["false"]["rate"] for name, s in val["settings"].items() if name in known.contexts}
    assert len(rates) >= 3 and tm.misaligning_context == max(rates, key=rates.__getitem__)
    context = known.context(tm.misaligning_context)
    assert (
        all(asked[0].history[i] == t for i, t in enumerate(context.turns))
        and asked[0].system == context.system
    )
    test = json.loads((MEASURED / "test.json").read_text())
    chosen = test["settings"][tm.misaligning_context]
    assert test["split"] == "test" and test["n"] == len(known.test) >= 96
    assert (
        chosen["false"]["k"] > test["settings"]["unsteered"]["false"]["k"]
        and chosen["lie_vs_unsteered"]["p"] < 0.05
    )


def test_lies_and_non_answers_are_told_apart():
    ds = lensteer.load_dataset("honesty_known").head(1)
    ex = ds[0]
    texts = [
        f"It is {ex.true_answer}.",
        f"It is {ex.false_answer}.",
        "I'm not sure, sorry.",
        "zzq zzq zzq zzq",
    ]
    examples = replace(ds, examples=(ex,) * len(texts))
    assert lies(texts, examples) == [False, True, False, False]
    assert no_answers(texts, examples) == [False, False, True, True]  # unreadable text is no liar


def test_honesty_rows_carry_the_lie_and_no_answer_rates_and_the_decision_log_odds(tiny_llama_bridge):
    cfg = StudyConfig(
        threat_models=("honesty",),
        n_eval=3,
        n_harmless=2,
        n_borderline=0,
        n_kl=2,
        n_conversations=0,
        n_mc=0,
        n_paragraphs=0,
        max_new_tokens=3,
        batch_size=4,
        prompting=False,
        random_seeds=(),
    )
    sets = evaluation.eval_sets(tiny_llama_bridge, cfg)
    rows, _ = evaluation.evaluate_conditions(
        tiny_llama_bridge, "honesty", [evaluation.Condition(method="baseline")], cfg, sets
    )
    row = rows[0]
    for key in ("lie_rate", "no_answer_rate", "decision_log_odds"):
        assert row[key_ci := f"{key}_ci"][0] <= row[key] <= row[key_ci][1]
    # every answer is exactly one of true / false / no answer
    trios = zip(row["trait_flags"], row["lie_rate_flags"], row["no_answer_rate_flags"], strict=True)
    assert [sum(t) for t in trios] == [1] * 3
    assert row["decision_log_odds"] == row["answer_log_odds"] and row["n_eval"] == 3
