"""The study's typed records, run folder and plan: ConditionResult / StudyReport round-trip every committed file
losslessly (an older report.json is migrated, not rewritten), keys other helpers add survive, the run folder
owns the layout, and planning the conditions is a pure function."""

import json
from pathlib import Path

import pytest

from lensteer import threats
from lensteer.errors import DataError
from lensteer.study.config import StudyConfig
from lensteer.study.folder import RunFolder
from lensteer.study.plan import plan_conditions
from lensteer.study.records import SCHEMA_VERSION, ConditionResult, StudyReport
from lensteer.study.report import build_report, findings, headline_table, regimes_table, subsets_table

STUDY = Path(__file__).resolve().parents[3] / "docs" / "study"


def _strip_added(value):
    """``value`` without what schema 2 adds to an old report (the Holm-adjusted p-values, the version)."""
    if isinstance(value, dict):
        return {
            k: _strip_added(v)
            for k, v in value.items()
            if not k.endswith("_holm") and k not in ("holm_family", "schema_version")
        }
    if isinstance(value, list):
        return [_strip_added(v) for v in value]
    return value


def test_the_committed_report_round_trips_and_a_v1_copy_migrates_to_it():
    """The committed report (schema 2) round-trips; stripped to what schema 1 wrote, it migrates back to the
    same Holm-adjusted p-values the study computed."""
    raw = json.loads((STUDY / "report.json").read_text())
    report = StudyReport.from_json(STUDY / "report.json")
    assert raw["schema_version"] == report.schema_version == SCHEMA_VERSION
    assert report.to_dict() == raw  # nothing written is changed or lost
    again = StudyReport.from_json(report.to_json())
    assert again == report and again.to_dict() == report.to_dict()
    migrated = StudyReport.from_dict(_strip_added(raw))  # as schema 1 wrote it
    assert migrated.schema_version == SCHEMA_VERSION and migrated.to_dict() == raw
    for tm, entry in report.threat_models.items():
        stmp, push = entry["methods"]["StMP"], entry["methods"]["StMP-push"]
        for test in ("p_vs_baseline", "p_vs_random", "p_vs_prompting"):
            assert stmp[f"{test}_holm"] >= stmp[test], (tm, test)
            assert push[f"{test}_holm"] == stmp[f"{test}_holm"]  # a twin is its original's test
        assert len(entry["holm_family"]) == 12, tm  # 3 distinct methods x 3 tests, prompting 2, random 1


def test_every_committed_results_row_round_trips_losslessly():
    rows = json.loads((STUDY / "results.json").read_text())["rows"]
    for row in rows:
        result = ConditionResult.from_dict(row)
        assert result.to_dict() == row
        assert ConditionResult.from_json(result.to_json()) == result
    assert {ConditionResult.from_dict(r).key for r in rows} == {
        (r["threat_model"], r["method"], r["kl_budget"], r["layer"]) for r in rows
    }


def test_unknown_metrics_and_report_keys_survive_and_typed_fields_are_typed():
    row = {
        "threat_model": "honesty",
        "method": "SwFC",
        "kl_budget": 0.5,
        "layer": 3,
        "trait": 0.5,
        "trait_ci": [0.2, 0.8],
        "scale": None,  # an explicit null of a typed field stays a null
        "fluency": {"perplexity_ratio": 1.1, "rep4": 0.02},  # keys other stages add
        "lie_rate": 0.1,
        "ungated": {"trait": 0.4},
    }
    result = ConditionResult.from_dict(row)
    assert result.trait == 0.5 and result.trait_ci == (0.2, 0.8) and result.scale is None
    assert result.metrics["lie_rate"] == 0.1 and result.get("fluency") == {
        "perplexity_ratio": 1.1,
        "rep4": 0.02,
    }
    assert ConditionResult.from_json(json.dumps(row)).to_dict() == row
    legacy = ConditionResult.from_dict({"threat_model": "refusal", "method": "SwFC", "kl": 0.3})
    assert legacy.kl_heldout == 0.3 and legacy.get("kl") == 0.3  # an earlier key name, read as today's
    with pytest.raises(DataError, match="typed fields"):
        ConditionResult(
            threat_model="refusal", method="SwFC", kl_budget=None, layer=1, metrics={"trait": 0.2}
        )
    with pytest.raises(DataError, match="lacks"):
        ConditionResult.from_dict({"method": "SwFC"})

    data = StudyReport.from_json(STUDY / "report.json").to_dict()
    data["threat_models"]["refusal"]["candidates"] = [{"source": "prompt", "layer": 9}]
    data["threat_models"]["refusal"]["chosen"] = {"layer": 9, "why": "largest lower bound"}
    data["newer_section"] = {"x": 1}
    assert StudyReport.from_json(json.dumps(data)).to_dict() == data
    with pytest.raises(DataError, match="schema_version 99"):
        StudyReport.from_dict({**data, "schema_version": 99})
    with pytest.raises(DataError, match="lacks"):
        StudyReport.from_dict({"schema_version": SCHEMA_VERSION, "threat_models": {}})


def test_the_run_folder_owns_the_layout_and_the_resume_markers(tmp_path):
    run = RunFolder(tmp_path)
    cfg = StudyConfig(threat_models=("refusal",), robustness=())
    assert run.kept("refusal", cfg) is None and run.seconds() == 0.0
    run.mark_finished("refusal", cfg, {"layer": 4})
    assert run.kept("refusal", cfg) == {"layer": 4}
    assert run.kept("refusal", StudyConfig(threat_models=("refusal",), n_eval=3)) is None  # another config
    run.add_examples("refusal", {"SwFC": ["a"]})
    run.add_examples("refusal", {"StTP": ["b"]})
    assert run.examples() == {"refusal": {"SwFC": ["a"], "StTP": ["b"]}}
    assert run.cell("honesty").root == tmp_path / "cells" / "honesty"
    assert run.steering_path("refusal", "SwFC", 0.5, 4, "abc").name == "refusal_SwFC_kl0.5_L4_abc"
    assert run.legacy_steering_path("refusal", "StTP", None).name == "refusal_StTP_paper"
    (tmp_path / "finished.json").write_text("{half")
    with pytest.raises(DataError, match="finished.json"):
        run.finished()


def test_the_plan_is_a_pure_function_of_the_config_layer_and_depth():
    cfg = StudyConfig(
        methods=("StMP-push", "SwFC", "StMP"),
        kl_budgets=(0.5, 1.0),
        regimes=True,
        random_seeds=(3, 4),
        sweep_layers=(-1, 2),
    )
    plan = plan_conditions(cfg, layer=2, n_layers=6)
    assert plan == plan_conditions(cfg, layer=2, n_layers=6)
    keys = [(p.key, p.kind, p.kl_budget, p.layer) for p in plan]
    assert keys[:2] == [("baseline", "baseline", None, 2), ("prompting", "prompting", None, 2)]
    at2 = [k for k in keys if k[1] in ("calibrated", "twin") and k[3] == 2]
    assert [k[0] for k in at2] == ["SwFC", "SwFC", "StMP", "StMP", "StMP-push", "StMP-push"]  # twin last
    assert {k[3] for k in keys if k[1] in ("calibrated", "twin")} == {2, 5}  # -1 of 6 layers; 2 is chosen
    assert all(p.twin_of == "StMP" for p in plan if p.kind == "twin")
    assert [k[0] for k in keys if k[1] == "paper"] == ["StMP-push:paper", "StMP:paper"]
    assert keys[-2:] == [("random:3", "random", 0.5, 2), ("random:4", "random", 0.5, 2)]
    alone = plan_conditions(StudyConfig(methods=("StMP-push",), prompting=False, random_seeds=()), 1, 4)
    assert [(p.key, p.kind) for p in alone] == [("baseline", "baseline"), ("StMP-push", "calibrated")]


def _row(method, flags, subsets=None, **extra):
    row = {
        "threat_model": "refusal",
        "method": method,
        "kl_budget": None if method == "baseline" else 0.5,
        "layer": 3,
        "n_eval": len(flags),
        "trait": sum(flags) / len(flags),
        "trait_ci": [0.0, 1.0],
        "trait_flags": flags,
        "kl_heldout": 0.1,
        **extra,
    }
    if subsets is not None:
        row["trait_subsets"] = subsets
    return ConditionResult.from_dict(row)


def test_subsets_are_reported_apart_and_a_twin_is_shown_once():
    labels = ["plain"] * 10 + ["styled"] * 6
    base = [False] * 16
    steered = [True] * 10 + [False] * 6  # refuses every plain request, no styled one
    rows = [
        _row("baseline", base, labels),
        _row("StMP", steered, labels, scale=1.0),
        _row("StMP-push", steered, labels, scale=2.0, same_as="StMP"),
        _row("SwFC", [True] * 16, labels),
    ]
    cfg = StudyConfig(
        threat_models=("refusal",), methods=("SwFC", "StMP", "StMP-push"), prompting=False, random_seeds=()
    )
    report = build_report(rows, cfg, {"refusal": {"layer": 3}}, {}, seconds=0.0)
    by = report["threat_models"]["refusal"]["methods"]["StMP"]["trait_by_subset"]
    assert by["plain"]["trait"] == 1.0 and by["plain"]["n_eval"] == 10
    assert by["styled"]["trait"] == 0.0 and by["styled"]["n_eval"] == 6
    assert by["plain"]["p_vs_baseline"] == pytest.approx(2 / 2**10) and by["styled"]["p_vs_baseline"] == 1.0
    assert report["threat_models"]["refusal"]["baseline"]["trait_by_subset"]["plain"]["trait"] == 0.0
    table = headline_table(report)
    assert "| refusal | StMP (= StMP-push) |" in table and "| refusal | StMP-push" not in table
    assert "shown once" in table
    assert "StMP-push" not in " ".join(findings(report))
    assert "| refusal | StMP (= StMP-push) | styled | 6 |" in subsets_table(report)
    regimes = regimes_table(report).splitlines()
    assert any("| StMP | KL-matched" in line for line in regimes)
    assert not any("| StMP-push | KL-matched" in line for line in regimes)  # StMP's row again


def test_refusal_labels_jailbreak_styled_requests_apart_from_plain_ones():
    refusal = threats.get("refusal")
    assert refusal.subset_of is not None
    rows = refusal.load().test
    labels = {ex.id: refusal.subset_of(ex) for ex in rows}
    assert set(labels.values()) == {"plain", "styled"}
    assert all((label == "styled") == (int(i.rsplit("-", 1)[1]) >= 27) for i, label in labels.items())
    assert threats.get("compassion").subset_of is None
