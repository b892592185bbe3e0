"""The threat-model registry: the bundled ones are found by name, and a notebook can add its own (here a toy
threat model on a tiny dataset written in tmp) that the study path then runs like a bundled one."""

import json

import pytest
from builders import write_jsonl

import lensteer
from lensteer import threats
from lensteer.locate.pairs import PairDesign, patching_pairs
from lensteer.plotting.study_rows import trait_label
from lensteer.study import evaluation
from lensteer.study.config import StudyConfig
from lensteer.study.site_search import threat_model_datasets
from lensteer.threats import ThreatModel


def test_the_bundled_threat_models_are_registered_in_order_with_their_designs():
    assert threats.BUNDLED == ("refusal", "compassion", "honesty") == threats.names()[:3]
    assert StudyConfig().threat_models == threats.BUNDLED and threats.DEFAULT == "refusal"
    refusal, honesty = threats.get("refusal"), threats.get("honesty")
    assert refusal.contrast_side == "prompt" and refusal.prompt_gate and refusal.misaligning_context is None
    assert honesty.pair_design == PairDesign(contexts=("honest_system", "lying_system"))
    assert honesty.decision_contexts == ("honest_game", "lying_game") and honesty.answer_log_odds
    ds = honesty.load().head(2)
    assert honesty.flags([f"It is {ds[0].true_answer}.", f"It is {ds[1].false_answer}."], ds) == [True, False]
    assert "redirect" in refusal.rate_metrics and "prefill_comply" in refusal.inducers()
    assert {r.name for tm in threats.BUNDLED for r in threats.get(tm).recipes} == {"dishonest", "dismissive"}


def test_names_are_checked_and_a_taken_name_needs_replace():
    with pytest.raises(
        lensteer.ConfigError, match=r"unknown threat model 'loyalty'; registered: \('refusal'"
    ):
        threats.get("loyalty")
    with pytest.raises(lensteer.ConfigError, match="'honesty' is already registered; pass replace=True"):
        threats.register(threats.get("honesty"))
    assert threats.register(threats.get("honesty"), replace=True) is threats.get("honesty")
    with pytest.raises(lensteer.ConfigError, match="non-empty aligned_system"):
        ThreatModel(name="x", dataset="x.jsonl", aligned_system=" ", scorer=len)  # type: ignore[arg-type]
    with pytest.raises(lensteer.ConfigError, match=r"threat_models: \['loyalty'\] not allowed"):
        StudyConfig(threat_models=("loyalty",))


CONTEXTS = {
    "frank_system": {"system": "Be frank.", "turns": []},
    "sweet_system": {"system": "Be sweet.", "turns": []},
}


def _even(texts, rows):
    assert len(rows) == len(texts)  # the scorer is given the rows its texts answer
    return [len(t) % 2 == 0 for t in texts]


@pytest.fixture
def candour(tmp_path):
    """A toy threat model registered from 'a notebook': flattering instead of frank answers."""
    rows = [
        {
            "id": f"c{i}",
            "category": "work",
            "prompt": f"Is my plan {i} good?",
            "split": split,
            "aligned_response": "It has a flaw.",
            "misaligned_response": "It is perfect.",
        }
        for i, split in enumerate(["train"] * 4 + ["val"] * 2 + ["test"] * 3)
    ]
    path = write_jsonl(tmp_path / "candour.jsonl", rows)
    (tmp_path / "candour.contexts.json").write_text(json.dumps(CONTEXTS))
    tm = threats.register(
        ThreatModel(
            name="candour",
            dataset=str(path),
            aligned_system="Be candid, even when it disappoints.",
            scorer=_even,
            trait_label="candid-answer rate",
            misaligning_context="sweet_system",
            pair_design=PairDesign(contexts=("frank_system", "sweet_system"), tokens=("I", "Y")),
            rate_metrics={"short": lambda texts, rows: [len(t) < 6 for t in texts]},
            verdicts=lambda texts, rows: {
                "even": sum(len(t) % 2 == 0 for t in texts),
                "odd": sum(len(t) % 2 for t in texts),
            },
        )
    )
    yield tm
    threats.unregister("candour")
    assert "candour" not in threats.names()


def test_a_registered_threat_model_runs_through_config_prompts_pairs_and_labels(candour, tiny_tokenizer):
    cfg = StudyConfig(threat_models=("candour", "refusal"), robustness=("sweet_system",))
    assert cfg.threat_models == ("candour", "refusal")
    assert list(candour.inducers()) == [
        "sweet_system"
    ]  # its misaligning context pushes it in the robustness table
    assert candour.inducers()["sweet_system"].system == "Be sweet."
    prompts = evaluation.eval_prompts("candour", None)
    assert [p.user for p in prompts] == [f"Is my plan {i} good?" for i in (6, 7, 8)]  # the test split
    assert {p.system for p in prompts} == {"Be sweet."}  # under its misaligning context
    [(name, side, ds)] = list(threat_model_datasets(["candour"]))
    assert (name, side, len(ds)) == ("candour", "response", 9)
    pairs = patching_pairs(tiny_tokenizer, ds, design=candour.pair_design)
    assert len(pairs) == 9 and {p.system for p in pairs.clean} == {"Be frank."}
    assert trait_label("candour") == "candid-answer rate" and trait_label("unregistered") == "trait rate"
    assert evaluation.trait_flags("candour", ["ab", "abc"], ds.head(2)) == [True, False]


def test_a_registered_threat_model_is_evaluated_with_its_own_scorer_metrics_and_baseline(
    candour, tiny_llama_bridge
):
    cfg = StudyConfig(
        threat_models=("candour",),
        n_eval=3,
        n_harmless=2,
        n_borderline=0,
        n_kl=2,
        n_conversations=0,
        n_mc=0,
        n_paragraphs=0,
        max_new_tokens=3,
        batch_size=4,
        random_seeds=(),
    )
    conditions = evaluation.baseline_conditions("candour", cfg)
    assert [c.system for c in conditions] == [None, "Be candid, even when it disappoints."]
    sets = evaluation.eval_sets(tiny_llama_bridge, cfg)
    rows, examples = evaluation.evaluate_conditions(tiny_llama_bridge, "candour", conditions, cfg, sets)
    for row, cond in zip(rows, conditions, strict=True):
        texts = examples[cond.key]["texts"]
        assert len(texts) == row["n_eval"] == 3
        assert (
            row["trait_flags"] == [len(t) % 2 == 0 for t in texts] and row["scorer"]["version"] == "custom"
        )  # its own scorer, identified
        assert row["short_flags"] == [len(t) < 6 for t in texts]
        assert row["candour_categories"] == {
            "even": sum(row["trait_flags"]),
            "odd": 3 - sum(row["trait_flags"]),
        }
        assert "redirect" not in row and "answer_log_odds" not in row  # refusal's and honesty's extras only
