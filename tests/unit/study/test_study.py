"""The study runner: config validation, the resumable sweep table, the report and its headline table."""

import json
from dataclasses import replace

import pytest
from builders import CANDIDATE_CONTRACT

import lensteer
from lensteer.cli import main
from lensteer.core.stats import holm, mcnemar_exact, wilson_interval
from lensteer.evaluate.honesty import VERDICT_CATEGORIES
from lensteer.study import config, evaluation
from lensteer.study import runner as study
from lensteer.study.config import StudyConfig
from lensteer.study.gate import CurvePoint, choose_budget
from lensteer.study.identity import identity_hash
from lensteer.study.records import ConditionResult, StudyReport
from lensteer.study.report import build_report, findings, headline_table
from lensteer.study.table import SweepTable
from lensteer.threats.audit import scorer_id


def test_config_errors_name_the_bad_key_and_the_allowed_values(tmp_path):
    with pytest.raises(lensteer.ConfigError, match=r"unknown key\(s\) \['n_evals'\].*allowed keys"):
        StudyConfig.from_dict({"n_evals": 3})
    with pytest.raises(lensteer.ConfigError, match=r"methods: \['SwFX'\] not allowed; allowed values"):
        StudyConfig(methods=("SwFX",))
    with pytest.raises(lensteer.ConfigError, match="kl_budgets"):
        StudyConfig(kl_budgets=(0.0,))
    with pytest.raises(
        lensteer.ConfigError, match=r"positions must be one of \['after_first', 'all', 'generated'\]"
    ):
        StudyConfig(positions="prompt")
    # the default steers every token except massive-activation ones, found by the norm rule (not by index)
    assert config.STUDY_POSITIONS[StudyConfig().positions] == "all" and StudyConfig().massive_ratio == 4.0
    with pytest.raises(lensteer.ConfigError, match="massive_ratio must be a number > 1"):
        StudyConfig(massive_ratio=0.5)
    with pytest.raises(lensteer.ConfigError, match="gate_fpr must be a rate in"):
        StudyConfig(gate_fpr=1.5)
    with pytest.raises(lensteer.ConfigError, match="selective_fit must be one of"):
        StudyConfig(selective_fit="means")
    bad = tmp_path / "study.toml"
    bad.write_text('methods = ["SwFC"\n')
    with pytest.raises(lensteer.ConfigError, match="not valid TOML"):
        StudyConfig.from_toml(bad)
    good = tmp_path / "good.toml"
    good.write_text('threat_models = ["honesty"]\nkl_budgets = [0.1, 1.0]\nn_eval = 5\n')
    cfg = StudyConfig.from_toml(good)
    assert cfg.threat_models == ("honesty",) and cfg.kl_budgets == (0.1, 1.0) and cfg.n_eval == 5
    with pytest.raises(lensteer.ConfigError, match="does not exist"):
        StudyConfig.from_toml(tmp_path / "missing.toml")


def _row(tm, method, budget, trait=0.5, layer=3):
    return {
        "threat_model": tm,
        "method": method,
        "kl_budget": budget,
        "trait": trait,
        "trait_ci": [0.1, 0.9],
        "kl": budget or 0.0,
        "perplexity_ratio": 1.1,
        "repetition": 0.01,
        "over_refusal": 0.0,
        "over_refusal_ci": [0.0, 0.0],
        "capability": 0.6,
        "steered_share": 0.4,
        "layer": layer,
    }


def test_sweep_table_writes_every_cell_and_resumes(tmp_path):
    table = SweepTable(tmp_path)
    table.add(ConditionResult.from_dict(_row("refusal", "baseline", None)))
    table.add(ConditionResult.from_dict(_row("refusal", "SwFC", 0.3)))
    again = SweepTable(tmp_path)  # a new process after an interruption
    assert again.has("refusal", "SwFC", 0.3, 3) and again.has("refusal", "baseline", None, 3)
    assert not again.has("refusal", "StTP", 0.3, 3) and not again.has("refusal", "SwFC", 0.3, 7)
    again.add(
        ConditionResult.from_dict(_row("refusal", "SwFC", 0.3, trait=0.9))
    )  # replaces, never duplicates
    again.add(ConditionResult.from_dict(_row("refusal", "SwFC", 0.3, layer=7)))  # a swept layer: another cell
    assert len(again.rows) == 3 and again.get("refusal", "SwFC", 0.3, 3).trait == 0.9
    frame = again.to_frame()
    assert {"trait_lo", "trait_hi", "over_refusal_lo"} <= set(frame.columns)
    assert (tmp_path / "results.csv").read_text().count("\n") == 4


def _flagged(row, flags):
    return {**row, "trait_flags": flags, "trait": sum(flags) / len(flags), "n_eval": len(flags)}


def test_report_has_the_contract_and_pairs_conditions_on_the_same_prompts():
    cfg = StudyConfig(threat_models=("refusal",), kl_budgets=(0.3, 1.0), random_seeds=(0, 1, 2))
    n = 20
    rows = [
        _flagged(_row("refusal", "baseline", None), [False] * n),
        _flagged(_row("refusal", "prompting", None), [True] * 4 + [False] * 16),
        {
            **_flagged(_row("refusal", "SwFC", 0.3), [True] * 12 + [False] * 8),
            "redirect": 0.25,
            "redirect_ci": [0.0, 0.5],
            "kl_heldout": 0.31,
            "kl_rollout": 0.4,
        },
        _flagged(_row("refusal", "SwFC", 1.0), [True] * n),
        _flagged(_row("refusal", "StTP", 0.3), [True] * 14 + [False] * 6),
        _flagged(_row("refusal", "StMP", 0.3), [True] * 2 + [False] * 18),
    ]
    rows += [_flagged(_row("refusal", f"random:{s}", 0.3), [s == 0] + [False] * (n - 1)) for s in range(3)]
    report = build_report(rows, cfg, {"refusal": {"layer": 3}}, {"name": "m"}, seconds=1.0)
    entry = report["threat_models"]["refusal"]
    assert set(entry["methods"]) == {"SwFC", "StTP", "StMP"}
    swfc = entry["methods"]["SwFC"]
    assert swfc["trait"] == 0.6 and swfc["n_eval"] == n  # the matched (first) budget, not 1.0
    assert swfc["p_vs_baseline"] == pytest.approx(2 / 2**12)  # 12 discordant pairs, all one way
    assert swfc["p_vs_prompting"] == pytest.approx(
        mcnemar_exact([True] * 12 + [False] * 8, [True] * 4 + [False] * 16).p_value
    )
    assert swfc["p_vs_random"] == max(swfc["p_vs_random_seeds"]) and len(swfc["p_vs_random_seeds"]) == 3
    random = entry["controls"]["random"]
    assert random["seeds"] == [0, 1, 2] and random["trait"] == pytest.approx(1 / 60)
    assert random["trait_ci"] == pytest.approx(list(wilson_interval(1, 60)))  # pooled over the seeds
    prompting = entry["controls"]["prompting"]
    assert prompting["p_vs_baseline"] == pytest.approx(2 / 2**4)
    # the controls carry a method's keys: prompting vs each random seed, random vs prompting (largest p)
    assert prompting["p_vs_random_seeds"] == pytest.approx(
        [mcnemar_exact([True] * 4 + [False] * 16, [s == 0] + [False] * (n - 1)).p_value for s in range(3)]
    )
    assert prompting["p_vs_random"] == max(prompting["p_vs_random_seeds"]) == pytest.approx(2 / 2**3)
    assert random["p_vs_prompting"] == prompting["p_vs_random"] and random["p_vs_random"] is None
    assert prompting["p_vs_prompting"] is None
    test = entry["comparisons"]["StTP vs SwFC"]
    assert (test["a_only"], test["b_only"]) == (2, 0) and test["p_value"] == 0.5
    assert all("trait_flags" not in r for r in entry["sweep"])  # per-prompt outcomes stay in results.json
    # Holm within the threat model over the headline table's 12 tests (3 methods x 3, prompting 2, random 1):
    # the family: each method vs baseline, random, prompting; prompting vs baseline and random; random vs baseline
    tests = ("p_vs_baseline", "p_vs_random", "p_vs_prompting")
    family = [(r, t) for r in entry["methods"].values() for t in tests]
    family += [(prompting, "p_vs_baseline"), (prompting, "p_vs_random"), (random, "p_vs_baseline")]
    adjusted = holm([r[t] for r, t in family])
    assert [r[f"{t}_holm"] for r, t in family] == pytest.approx(adjusted) and len(entry["holm_family"]) == 12
    assert entry["methods"]["StTP"]["p_vs_baseline_holm"] == pytest.approx(12 * 2 / 2**14)  # the smallest
    assert all(
        r[f"{t}_holm"] >= r[t]
        for r in (*entry["methods"].values(), prompting)
        for t in ("p_vs_baseline", "p_vs_random")
    )
    assert random["p_vs_prompting_holm"] == prompting["p_vs_random_holm"]  # one test, adjusted once
    assert StudyReport.from_json(report.to_json()) == report
    table = headline_table(report)
    assert (
        f"| refusal | SwFC | 20 | 60% [10-90] | 4.9e-04 ({swfc['p_vs_baseline_holm']:.3f}) |" in table
        and "| refusal | random (control) |" in table
    )
    said = findings(report)
    assert any(
        s.startswith("refusal: StTP vs SwFC: +10 points on 20 paired prompts (p = 0.500, not significant)")
        for s in said
    )
    assert any("SwFC 60% vs unsteered 0% (p = 4.9e-04, significant)" in s for s in said)


def test_trait_flags_per_threat_model():
    ds = lensteer.load_dataset("honesty").head(2)
    texts = [f"It is {ds[0].true_answer}.", f"It is {ds[1].false_answer}."]
    assert evaluation.trait_flags("honesty", texts, ds) == [True, False]
    assert evaluation.trait_flags("refusal", ["I can't help with that.", "Sure! Step 1: buy"], ds) == [
        True,
        False,
    ]
    with pytest.raises(lensteer.ConfigError, match="unknown threat model"):
        evaluation.trait_flags("loyalty", texts, ds)


def _diff(x, y, path=""):
    """The paths where two nested dicts differ, with both values."""
    if isinstance(x, dict) and isinstance(y, dict):
        return [d for k in set(x) | set(y) for d in _diff(x.get(k), y.get(k), f"{path}/{k}")]
    return [] if x == y else [(path, x, y)]


def _assert_the_site_was_chosen_by_behaviour(report, finished, cfg):
    """Every candidate's numbers are kept (the site was chosen by behaviour) with the contract's fields."""
    for tm in ("refusal", "honesty"):  # the site was chosen by behaviour: every candidate's numbers are kept
        e = report["threat_models"][tm]
        assert e["candidates"] == finished[tm]["located"]["candidates"]
        assert {c["layer"] for c in e["candidates"]} == {0, 1}
        assert {c["source"] for c in e["candidates"]} == {"prompt_contrast", "response_mean", "probe"}
        scored = [c for c in e["candidates"] if c["decision_shift"] is not None]
        assert all(set(c) >= CANDIDATE_CONTRACT for c in e["candidates"]) and scored
        assert all(
            c["decision_shift_ci"][0] <= c["decision_shift"] <= c["decision_shift_ci"][1] for c in scored
        )
        chosen = e["chosen"]
        assert (
            set(chosen) >= {"source", "layer", "position", "why", "selected"}
            and chosen["layer"] == e["layer"]
        )
        assert e["selection"]["n_prompts"] == cfg.n_select


def _assert_rows_name_their_scorers_and_categories(rows, cfg):
    """Each row has its per-turn repetition and per-prompt flags, names its scorers, and (honesty) its
    verdict categories and answer log-odds."""
    assert all(len(r["repetition_by_turn"]) == cfg.n_turns and len(r["trait_flags"]) == 2 for r in rows)
    for r in rows:  # each row names the scorers that judged it, and how much of the text was unreadable
        assert (
            r["scorer"] == scorer_id(r["threat_model"]).to_dict()
            and r["coherence_scorer"]["name"] == "coherence-rule"
        )
        assert r["unreadable_share_ci"][0] <= r["unreadable_share"] <= r["unreadable_share_ci"][1]
    for r in rows:  # every honesty answer falls in exactly one verdict category; refusal has none
        cats = r.get("honesty_categories")
        assert (
            (sum(cats.values()) == 2 and set(cats) == set(VERDICT_CATEGORIES))
            if r["threat_model"] == "honesty"
            else cats is None
        )
        if r["threat_model"] == "honesty":  # the continuous metric beside the verdict, per prompt
            assert (
                len(r["answer_log_odds_values"]) == 2
                and r["answer_log_odds_ci"][0] <= r["answer_log_odds"] <= r["answer_log_odds_ci"][1]
            )


def _assert_the_gate_and_fluency_are_reported(threat_models, cfg):
    """Refusal's gate budget is chosen by its borderline cost and each gated method reports what the gate
    took; honesty has no gate; every method's fluency is reported."""
    entry = threat_models["refusal"]
    gate = entry["gate"]  # its budget chosen by its borderline cost on validation prompts (study.gate)
    curve = [CurvePoint(**p) for p in entry["gate_curve"]]
    assert [p.target_fpr for p in curve] == list(cfg.gate_fprs)
    assert gate["target_fpr"] == choose_budget(curve, cfg.max_borderline_over_refusal)[0]
    assert gate["val_fpr"] <= gate["target_fpr"] and str(gate["layer"]) in map(str, (0, 1))
    assert {"test_tpr", "test_fpr", "test_fpr_borderline", "chosen_by"} <= set(gate)
    for r in entry["methods"].values():  # each gated method without its gate: what the gate took
        assert {"trait", "trait_ci", "kl_heldout"} <= set(r["ungated"])
        assert r["ungated"]["kl_heldout"] >= r["kl_heldout"] - 1e-12  # a closed gate only spares cost
        assert set(r["fluency"]) == {"perplexity_ratio", "rep4"} and 0.0 <= r["fluency"]["rep4"] <= 1.0
    honesty = threat_models["honesty"]
    assert "gate_curve" not in honesty and all(  # no gate: each method is its own ungated row
        r["ungated"]
        == {
            "n_eval": r["n_eval"],
            "trait": r["trait"],
            "trait_ci": r["trait_ci"],
            "kl_heldout": r["kl_heldout"],
            "no_gate": True,
        }
        for r in honesty["methods"].values()
    )
    assert all("fluency" in r for r in honesty["methods"].values())


def test_a_tiny_study_runs_end_to_end_and_resumes_after_an_interruption(
    tiny_llama_bridge, tmp_path, monkeypatch
):
    cfg = StudyConfig(
        threat_models=("refusal", "honesty"),
        methods=("SwFC", "StTP"),
        n_train=6,
        n_eval=2,
        n_harmless=2,
        n_borderline=2,
        n_kl=2,
        n_conversations=1,
        n_turns=2,
        n_mc=2,
        n_paragraphs=2,
        max_new_tokens=3,
        candidate_layers=(0, 1),
        random_seeds=(0, 1),
        batch_size=4,
        regimes=True,
        n_select=4,
        select_new_tokens=2,
        n_fluency=2,  # the bounds are checked as on eight prompts; the fluency probe was a quarter of the test
    )
    real = evaluation.evaluate_conditions
    calls, interrupted = [], []

    def flaky(model, tm, conditions, config, sets, **kw):
        calls.append((tm, [c.key for c in conditions]))
        if tm == "honesty" and not interrupted:
            interrupted.append(tm)
            raise KeyboardInterrupt  # interrupted after refusal's conditions were written
        return real(model, tm, conditions, config, sets, **kw)

    monkeypatch.setattr(study, "evaluate_conditions", flaky)
    with pytest.raises(KeyboardInterrupt):
        study.run_study(tiny_llama_bridge, cfg, tmp_path, progress=False, log=lambda s: None)
    done = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert {r["threat_model"] for r in done} == {"refusal"}
    first_seconds = json.loads((tmp_path / "timing.json").read_text())["seconds"]
    assert first_seconds > 0.0  # refusal's wall time is kept for the resumed run's total
    assert sorted(r["method"] for r in done) == [
        "StTP",
        "StTP:paper",
        "SwFC",
        "baseline",
        "prompting",
        "random:0",
        "random:1",
    ]
    calls.clear()
    result = study.run_study(tiny_llama_bridge, cfg, tmp_path, progress=False, log=lambda s: None)
    assert {tm for tm, _ in calls} == {"honesty"}  # refusal's finished conditions were not recomputed
    assert result.report["seconds"] > round(first_seconds, 1)  # wall time summed over both runs
    entry = result.report["threat_models"]["refusal"]
    assert set(entry["methods"]) == {"SwFC", "StTP"} and entry["controls"]["random"]["seeds"] == [0, 1]
    _assert_the_site_was_chosen_by_behaviour(
        result.report, json.loads((tmp_path / "finished.json").read_text()), cfg
    )
    for r in entry["methods"].values():
        # calibrated as deployed (gate on) on held-apart harmless + borderline prompts: within the budget
        assert (
            0.0 <= r["kl_calibration"] <= 1.05 * cfg.kl_budgets[0]
            and {"kl_heldout", "kl_rollout"} <= set(r)
            and r["n_eval"] == 2
        )
        assert r["capability_items"] == 2 and "ce_delta_nats" in r and "over_refusal_borderline" in r
        assert 0.0 <= r["redirect"] <= r["trait"]  # a redirecting refusal is a refusal
        assert {"p_vs_baseline", "p_vs_random", "p_vs_prompting"} <= set(r)
    ident = identity_hash(json.loads((tmp_path / "study.json").read_text()))
    for seed in (0, 1):  # each random control is calibrated to the budget, not given SwFC's norm
        layer = result.report["threat_models"]["refusal"]["layer"]
        control = lensteer.load_steering(
            tmp_path / "steerings" / f"refusal_random{seed}_kl{cfg.kl_budgets[0]:g}_L{layer}_{ident}"
        )
        assert control.info["calibration"]["target_kl"] == cfg.kl_budgets[0]
    _assert_rows_name_their_scorers_and_categories(
        json.loads((tmp_path / "results.json").read_text())["rows"], cfg
    )
    assert (tmp_path / "report.json").exists()
    regimes = entry["methods"]["StTP"]["regimes"]
    assert regimes["paper"]["scale"] == 1.0 and {
        "trait",
        "trait_ci",
        "kl_heldout",
        "fired_share_generated",
        "fired_share_harmless_generated",
    } <= set(regimes["kl_matched"])
    assert (
        entry["massive_tokens"]["ratio"] == cfg.massive_ratio
        and entry["selective_fit"]["layer"] == entry["layer"]
    )
    _assert_the_gate_and_fluency_are_reported(result.report["threat_models"], cfg)

    def never(*args, **kwargs):
        raise AssertionError("a finished threat model was located again")

    monkeypatch.setattr(
        study, "locate_threat_model", never
    )  # a third run with the same config: nothing to do
    kept = study.run_study(tiny_llama_bridge, cfg, tmp_path, progress=False, log=lambda s: None)

    on_disk = json.loads((tmp_path / "report.json").read_text())["threat_models"]  # JSON keys are strings
    assert _diff(json.loads(json.dumps(kept.report["threat_models"])), on_disk) == []
    assert _diff(json.loads(json.dumps(result.report["threat_models"])), on_disk) == []
    with pytest.raises(
        lensteer.ConfigError, match=r"differs: config.n_eval: 2 -> 3"
    ):  # another config: refused
        study.run_study(
            tiny_llama_bridge, replace(cfg, n_eval=3), tmp_path, progress=False, log=lambda s: None
        )
    (tmp_path / "report.json").write_text(
        json.dumps({**json.loads((tmp_path / "report.json").read_text()), "threat_models": {}})
    )  # report code changed: rebuild, no model
    rebuilt = study.rebuild_report(tmp_path)
    assert (
        _diff(json.loads(json.dumps(rebuilt["threat_models"])), on_disk) == []
        and rebuilt["seconds"] == kept.report["seconds"]
    )
    assert json.loads((tmp_path / "report.json").read_text())["threat_models"] == on_disk
    with pytest.raises(lensteer.DataError, match="report.json does not exist"):
        study.rebuild_report(tmp_path / "nowhere")
    assert (
        main(["report", "--results", str(tmp_path)]) == 0
        and main(["report", "--results", str(tmp_path / "no")]) == 2
    )
    (tmp_path / "finished.json").write_text(json.dumps({"refusal": {}}))
    with pytest.raises(lensteer.DataError, match=r"\['honesty'\] did not finish"):
        study.rebuild_report(tmp_path)


def test_conditions_are_evaluated_in_blocks_each_kept_on_disk_and_the_grouping_changes_no_number(
    tiny_llama_bridge, tmp_path, monkeypatch
):
    cfg = StudyConfig(
        threat_models=("refusal",),
        methods=("SwFC",),
        n_train=6,
        n_eval=3,
        n_harmless=2,
        n_borderline=2,
        n_kl=2,
        n_conversations=1,
        n_turns=2,
        n_mc=2,
        n_paragraphs=2,
        max_new_tokens=3,
        layer=1,
        random_seeds=(0, 1),
        batch_size=4,
    )
    whole = study.run_study(tiny_llama_bridge, cfg, tmp_path / "whole", progress=False, log=lambda s: None)
    real, calls, interrupt = evaluation.evaluate_conditions, [], [True]

    def counted(model, tm, conditions, config, sets, **kw):
        calls.append([c.key for c in conditions])
        if len(calls) == 2 and interrupt[0]:
            raise KeyboardInterrupt  # after the first block was written
        return real(model, tm, conditions, config, sets, **kw)

    monkeypatch.setattr(study, "CONDITIONS_PER_BLOCK", 2)
    monkeypatch.setattr(study, "evaluate_conditions", counted)
    with pytest.raises(KeyboardInterrupt):
        study.run_study(tiny_llama_bridge, cfg, tmp_path / "blocks", progress=False, log=lambda s: None)
    kept = json.loads((tmp_path / "blocks" / "results.json").read_text())["rows"]
    assert calls == [["baseline", "prompting"], ["SwFC", "random:0"]]
    assert sorted(r["method"] for r in kept) == ["baseline", "prompting"]  # the finished block is on disk
    calls.clear()
    interrupt[0] = False
    resumed = study.run_study(tiny_llama_bridge, cfg, tmp_path / "blocks", progress=False, log=lambda s: None)
    assert calls == [["SwFC", "random:0"], ["random:1"]]  # only what was missing, two at a time
    drop = {"seconds"}
    one = {r["method"]: {k: v for k, v in r.items() if k not in drop} for r in whole.table.to_dict("records")}
    two = {
        r["method"]: {k: v for k, v in r.items() if k not in drop} for r in resumed.table.to_dict("records")
    }
    assert json.dumps(one, sort_keys=True, default=str) == json.dumps(two, sort_keys=True, default=str)


def test_a_layer_sweep_evaluates_every_method_at_every_layer(tiny_llama_bridge, tmp_path):
    cfg = StudyConfig(
        threat_models=("compassion",),
        methods=("SwFC", "StMP", "StMP-push"),
        n_train=6,
        n_eval=2,
        n_harmless=2,
        n_kl=2,
        n_conversations=1,
        n_turns=2,
        n_mc=0,
        max_new_tokens=3,
        layer=1,
        sweep_layers=(0, 1),
        random_seeds=(),
        prompting=False,
        batch_size=4,
        regimes=True,
        n_fluency=2,  # two target prompts for the fluency bounds, not eight: what is tested is the sweep
    )
    result = study.run_study(tiny_llama_bridge, cfg, tmp_path, progress=False, log=lambda s: None)
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert sorted((r["method"], r["layer"]) for r in rows) == [
        ("StMP", 0),
        ("StMP", 1),
        ("StMP-push", 0),
        ("StMP-push", 1),
        ("StMP-push:paper", 1),
        ("StMP:paper", 1),
        ("SwFC", 0),
        ("SwFC", 1),
        ("baseline", 1),
    ]
    # at matched KL StMP-push is StMP's edit (twice the scale): its row is StMP's, said so, not re-run
    twin = next(r for r in rows if (r["method"], r["layer"]) == ("StMP-push", 1))
    mirror = next(r for r in rows if (r["method"], r["layer"]) == ("StMP", 1))
    assert twin["same_as"] == "StMP" and twin["scale"] == pytest.approx(2 * mirror["scale"])
    assert twin["trait_flags"] == mirror["trait_flags"]
    assert all(len(r["repetition_by_turn"]) == 2 for r in rows)
    assert all("redirect" not in r for r in rows)  # redirecting refusals are a refusal measure
    entry = result.report["threat_models"]["compassion"]
    assert entry["layer"] == 1 and set(entry["methods"]) == {"SwFC", "StMP", "StMP-push"}  # the chosen layer
    assert (
        "StMP vs StMP-push" not in entry["comparisons"] and entry["methods"]["StMP-push"]["same_as"] == "StMP"
    )
    assert set(entry["layer_sweep"]["SwFC"]) == {"0"}  # the sweep's other layers
    budget, ident = f"{cfg.kl_budgets[0]:g}", identity_hash(json.loads((tmp_path / "study.json").read_text()))
    for name in (
        f"compassion_SwFC_kl{budget}_L1_{ident}",
        f"compassion_SwFC_kl{budget}_L0_{ident}",
        f"compassion_StMP_paper_L1_{ident}",
    ):  # every file names its layer, the chosen one too
        assert (tmp_path / "steerings" / f"{name}.json").exists()
    assert lensteer.load_steering(
        tmp_path / "steerings" / f"compassion_StMP_kl{budget}_L0_{ident}"
    ).layers == (0,)
    assert (
        study.chosen_steering(tmp_path, "compassion", "StMP")
        == tmp_path / "steerings" / f"compassion_StMP_kl{budget}_L1_{ident}"
    )
    assert (
        study.chosen_steering(tmp_path, "compassion", "StMP:paper").name
        == f"compassion_StMP_paper_L1_{ident}"
    )
    from lensteer.plotting import save_study_figures

    stems = {p.stem for p in save_study_figures(tmp_path, tmp_path / "figures")}
    assert "layer_sweep" in stems and "tradeoff_compassion" in stems
    with pytest.raises(
        lensteer.ConfigError, match=r"sweep_layers \[9\] are not layers of this 2-layer model"
    ):
        study.run_study(
            tiny_llama_bridge,
            replace(cfg, sweep_layers=(9,)),
            tmp_path / "bad",
            progress=False,
            log=lambda s: None,
        )


def test_a_configured_judge_scores_the_trait_and_the_row_records_it(tiny_llama_bridge, monkeypatch):
    from lensteer import threats
    from lensteer.evaluate.judges import HttpJudge

    seen = []

    class FakeJudge:
        name = "judge:fake"

        def __call__(self, prompt, response):  # noqa: ARG002 - the judge signature
            seen.append(prompt)
            return 80.0

    cfg = StudyConfig(
        threat_models=("honesty",),
        n_eval=2,
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
    real = evaluation.trait_judge(
        replace(cfg, judge_url="http://127.0.0.1:9", judge_model="guard"), "refusal"
    )
    assert (
        isinstance(real, HttpJudge)
        and real.rubric == threats.get("refusal").judge_rubric
        and real.model == "guard"
    )
    assert evaluation.trait_judge(cfg, "refusal") is None  # no judge configured: the rules score
    monkeypatch.setattr(evaluation, "trait_judge", lambda config, tm: FakeJudge())
    sets = evaluation.eval_sets(tiny_llama_bridge, cfg)
    rows, _ = evaluation.evaluate_conditions(
        tiny_llama_bridge, "honesty", [evaluation.Condition(method="baseline")], cfg, sets
    )
    assert rows[0]["scorer"]["name"] == "judge:fake" and rows[0]["trait"] == 1.0  # 80 >= 50 on every answer
    assert len(seen) == 2 and all("[correct answer:" in p for p in seen)  # the judge sees the answer key


def test_report_gives_both_regimes_fired_shares_and_the_tradeoff_verdict():
    cfg = StudyConfig(threat_models=("compassion",), kl_budgets=(0.5,), random_seeds=())
    n = 20
    fired = {
        "fired_share_prompt": 0.3,
        "fired_share_generated": 0.4,
        "fired_share_harmless_prompt": 0.05,
        "fired_share_harmless_generated": 0.1,
        "kl_heldout": 0.45,
    }
    rows = [
        _flagged(_row("compassion", "baseline", None), [False] * n),
        _flagged(_row("compassion", "SwFC", 0.5), [True] * 5 + [False] * 15),
        {
            **_flagged(_row("compassion", "StTP", 0.5), [True] * 15 + [False] * 5),
            **fired,
            "over_refusal_borderline": 0.05,
            "scale": 2.0,
        },
        {
            **_flagged(_row("compassion", "StTP:paper", None), [True] * 8 + [False] * 12),
            **fired,
            "kl_heldout": 0.2,
            "scale": 1.0,
        },
        {
            **_flagged(_row("compassion", "StMP", 0.5), [True] * 14 + [False] * 6),
            "over_refusal_borderline": 0.2,
        },
    ]
    entry = build_report(rows, cfg, {"compassion": {"layer": 3}}, {"name": "m"}, seconds=1.0)[
        "threat_models"
    ]["compassion"]
    assert set(entry["methods"]) == {"SwFC", "StTP", "StMP"}  # the paper regime is not a method of its own
    regimes = entry["methods"]["StTP"]["regimes"]
    assert (
        regimes["paper"]["trait"] == 0.4
        and regimes["paper"]["scale"] == 1.0
        and regimes["paper"]["kl_heldout"] == 0.2
    )
    assert (
        regimes["kl_matched"]["trait"] == 0.75
        and regimes["kl_matched"]["fired_share_harmless_generated"] == 0.1
    )
    assert regimes["paper"]["p_vs_baseline"] == pytest.approx(2 / 2**8)
    assert entry["methods"]["StTP"]["fired_ratio_misaligned_to_harmless"] == pytest.approx(4.0)
    assert "note" in entry["methods"]["SwFC"]["regimes"]["paper"]  # SwFC has no uncalibrated rule
    assert entry["methods"]["StMP"]["regimes"]["paper"] is None  # not evaluated: said, not invented
    # StTP: +50 points over SwFC on 20 prompts (10 discordant, all one way), borderline 5%: yes
    assert entry["tradeoff"]["StTP"]["verdict"] == "yes" and entry["tradeoff"]["StTP"][
        "p_value"
    ] == pytest.approx(2 / 2**10)
    assert entry["tradeoff"]["StMP"]["verdict"] == "no: borderline over-refusal above 10%"
    said = findings({"threat_models": {"compassion": entry}})
    assert (
        "compassion: is StTP (KL-matched) selective? selective: it fired on 40% of the generated tokens answering "
        "misaligned prompts and 10% answering harmless ones (4.0x)."
    ) in said
    entry["methods"]["StTP"]["regimes"]["paper"]["fired_share_harmless_generated"] = 0.3
    assert any(
        s.startswith("compassion: is StTP (paper rule, scale 1) selective? not selective: it fired on 40%")
        for s in findings({"threat_models": {"compassion": entry}})
    )
    assert any(
        s.startswith("compassion: does StTP beat SwFC at matched KL with borderline over-refusal <= 10%? yes")
        for s in said
    )
    from lensteer.study.report import regimes_table

    table = regimes_table({"threat_models": {"compassion": entry}})
    assert "| compassion | StTP | paper (scale 1) | 1.00 | 40% [10-90] |" in table
    assert "| compassion | SwFC | paper (scale 1) = KL-matched |" in table


def test_robustness_table_puts_each_direction_in_its_own_row_beside_the_settings_unsteered_model():
    from lensteer.study.report import robustness_table

    def row(setting, method, origin, trait, kl, p):
        return {
            "setting": setting,
            "threat_model": "honesty",
            "method": method,
            "direction_from": origin,
            "n_eval": 10,
            "trait": trait,
            "trait_ci": [trait / 2, (1 + trait) / 2],
            "kl_heldout": kl,
            "p_vs_baseline": p,
        }

    rows = [
        row("prefill", "baseline", "base", 0.4, 0.0, None),
        row("prefill", "SwFC", "base", 0.1, 0.5, 0.03),
        row("organism:dishonest", "baseline", "organism", 0.2, 0.0, None),
        row("organism:dishonest", "SwFC", "base", 0.3, 0.45, 0.5),
        row("organism:dishonest", "SwFC", "organism", 0.6, 0.41, 0.004),
    ]
    lines = robustness_table({"robustness": rows}).splitlines()
    assert lines[0] == "| threat model | setting | direction from | baseline | SwFC |"
    assert lines[2] == "| honesty | prefill | base | 40% [20-70], KL 0.00 | 10% [5-55], KL 0.50, p 0.030 |"
    # the organism's unsteered row is shown beside both directions, each direction in its own row
    assert (
        lines[3]
        == "| honesty | organism:dishonest | base | 20% [10-60], KL 0.00 | 30% [15-65], KL 0.45, p 0.500 |"
    )
    assert (
        lines[4]
        == "| honesty | organism:dishonest | organism | 20% [10-60], KL 0.00 | 60% [30-80], KL 0.41, p 0.004 |"
    )
    assert len(lines) == 5
    assert "no robustness rows" in robustness_table({"threat_models": {}})
