"""Every study row names the scorer that judged it, and the report compares only rows one scorer judged."""

import json
from pathlib import Path

import pytest

from lensteer.errors import ArtifactMismatchError, DataError
from lensteer.evaluate.coherence import COHERENCE_SCORER
from lensteer.evaluate.judges import HttpJudge
from lensteer.evaluate.provenance import ScorerId
from lensteer.study.config import StudyConfig
from lensteer.study.report import build_report
from lensteer.threats.audit import judge_scorer_id, scorer_id

ROOT = Path(__file__).resolve().parents[3]
CFG = StudyConfig(threat_models=("refusal",), kl_budgets=(0.3,), random_seeds=(0,), methods=("SwFC",))


def _rows(scorers):
    """baseline, prompting, SwFC and one random control, with the given ``scorer`` records (None: legacy)."""
    out = []
    for method, scorer in zip(("baseline", "prompting", "SwFC", "random:0"), scorers, strict=True):
        flags = [method == "SwFC", False, False, True]
        row = {
            "threat_model": "refusal",
            "method": method,
            "kl_budget": None if method in ("baseline", "prompting") else 0.3,
            "layer": 3,
            "trait": sum(flags) / 4,
            "trait_flags": flags,
            "n_eval": 4,
        }
        if scorer is not None:
            row |= {"scorer": scorer, "coherence_scorer": COHERENCE_SCORER.to_dict()}
        out.append(row)
    return out


def test_rows_of_one_scorer_are_compared_and_the_report_names_it():
    rule = scorer_id("refusal").to_dict()
    entry = build_report(_rows([rule] * 4), CFG, {"refusal": {"layer": 3}}, {}, seconds=0.0)["threat_models"][
        "refusal"
    ]
    assert entry["methods"]["SwFC"]["scorer"] == rule and entry["baseline"]["scorer"] == rule
    assert entry["methods"]["SwFC"]["p_vs_baseline"] == 1.0  # compared: one discordant pair


def test_the_report_gives_each_conditions_unreadable_share_and_scorers():
    rule = scorer_id("refusal").to_dict()
    rows = _rows([rule] * 4)
    for share, row in zip((0.0, 0.25, 0.75, 0.5), rows, strict=True):
        row |= {"unreadable_share": share, "unreadable_share_ci": [0.0, 1.0]}
    entry = build_report(rows, CFG, {"refusal": {"layer": 3}}, {}, seconds=0.0)["threat_models"]["refusal"]
    controls = entry["controls"]
    assert entry["baseline"]["unreadable_share"] == 0.0 and controls["prompting"]["unreadable_share"] == 0.25
    assert controls["random"]["unreadable_share"] == 0.5
    assert entry["methods"]["SwFC"]["unreadable_share"] == 0.75  # a steering that broke its text shows it
    assert entry["methods"]["SwFC"]["coherence_scorer"] == COHERENCE_SCORER.to_dict()


def test_legacy_rows_without_a_scorer_still_make_a_report():
    entry = build_report(_rows([None] * 4), CFG, {"refusal": {"layer": 3}}, {}, seconds=0.0)["threat_models"][
        "refusal"
    ]
    assert "scorer" not in entry["methods"]["SwFC"] and entry["methods"]["SwFC"]["p_vs_baseline"] == 1.0
    committed = json.loads((ROOT / "docs" / "study" / "results.json").read_text())["rows"]
    assert committed and all("scorer" in r for r in committed)  # the committed study records its scorers


@pytest.mark.parametrize(
    ("scorers", "named"),
    [
        (
            [None, None, scorer_id("refusal").to_dict(), None],
            r"legacy, e\.g\. on baseline; refusal-fitted v1 \(\w+\), e\.g\. on SwFC",
        ),
        (
            [scorer_id("refusal").to_dict()] * 3 + [{"name": "refusal-rule", "version": "1", "hash": "abc"}],
            r"refusal-rule v1 \(abc\)",
        ),
        (
            [judge_scorer_id(HttpJudge(base_url="http://127.0.0.1:9", name="judge:x")).to_dict()]
            + [scorer_id("refusal").to_dict()] * 3,
            r"judge:x vhttp",
        ),
    ],
)
def test_the_report_refuses_to_compare_conditions_scored_by_different_scorers(scorers, named):
    with pytest.raises(
        ArtifactMismatchError, match=rf"refusal: conditions were scored by different scorers \(.*{named}"
    ):
        build_report(_rows(scorers), CFG, {"refusal": {"layer": 3}}, {}, seconds=0.0)


def test_a_different_coherence_scorer_is_refused_too():
    rows = _rows([scorer_id("refusal").to_dict()] * 4)
    rows[2]["coherence_scorer"] = {"name": "coherence-rule", "version": "2", "hash": "000000000000"}
    with pytest.raises(ArtifactMismatchError, match="different coherence scorers"):
        build_report(rows, CFG, {"refusal": {"layer": 3}}, {}, seconds=0.0)


def test_scorer_ids_change_with_the_rules_and_read_back():
    ids = {scorer_id(v) for v in ("refusal", "compassion", "honesty", "unreadable")}
    assert len(ids) == 4 and all(len(i.digest) == 12 for i in ids)
    assert ScorerId.from_dict(scorer_id("honesty").to_dict()) == scorer_id("honesty")
    with pytest.raises(DataError, match="needs string fields name, version and hash"):
        ScorerId.from_dict({"name": "x"})
    a = judge_scorer_id(HttpJudge(base_url="http://127.0.0.1:9", rubric="Rate {response}"))
    b = judge_scorer_id(HttpJudge(base_url="http://127.0.0.1:9", rubric="Score {response}"))
    assert a.name == b.name and a.digest != b.digest  # another rubric is another scorer
    assert judge_scorer_id(lambda p, r: 1.0).version == "callable"
