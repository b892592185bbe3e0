"""The study runner: config validation, the resumable sweep table, the report and its headline table."""

import json
from dataclasses import replace

import pytest

import lensteer
from lensteer.study import config, evaluation
from lensteer.study import runner as study
from lensteer.study.config import StudyConfig
from lensteer.study.report import build_report, headline_table
from lensteer.study.table import SweepTable


def test_config_errors_name_the_bad_key_and_the_allowed_values(tmp_path):
    with pytest.raises(lensteer.ConfigError, match=r"unknown key\(s\) \['n_evals'\].*allowed keys"):
        StudyConfig.from_dict({"n_evals": 3})
    with pytest.raises(lensteer.ConfigError, match=r"methods: \['SwFX'\] not allowed; allowed values"):
        StudyConfig(methods=("SwFX",))
    with pytest.raises(lensteer.ConfigError, match="kl_budgets"):
        StudyConfig(kl_budgets=(0.0,))
    with pytest.raises(lensteer.ConfigError, match=r"positions must be one of \['after_first', 'all', 'generated'\]"):
        StudyConfig(positions="prompt")
    # the default skips the first token (the attention sink), every other prompt and generated token is steered
    assert config.STUDY_POSITIONS[StudyConfig().positions] == lensteer.Window(1, None)
    bad = tmp_path / "study.toml"
    bad.write_text("methods = [\"SwFC\"\n")
    with pytest.raises(lensteer.ConfigError, match="not valid TOML"):
        StudyConfig.from_toml(bad)
    good = tmp_path / "good.toml"
    good.write_text('threat_models = ["honesty"]\nkl_budgets = [0.1, 1.0]\nn_eval = 5\n')
    cfg = StudyConfig.from_toml(good)
    assert cfg.threat_models == ("honesty",) and cfg.kl_budgets == (0.1, 1.0) and cfg.n_eval == 5
    with pytest.raises(lensteer.ConfigError, match="does not exist"):
        StudyConfig.from_toml(tmp_path / "missing.toml")


def _row(tm, method, budget, trait=0.5, layer=3):
    return {"threat_model": tm, "method": method, "kl_budget": budget, "trait": trait, "trait_ci": [0.1, 0.9],
            "kl": budget or 0.0, "perplexity_ratio": 1.1, "repetition": 0.01, "over_refusal": 0.0,
            "over_refusal_ci": [0.0, 0.0], "capability": 0.6, "steered_share": 0.4, "layer": layer}


def test_sweep_table_writes_every_cell_and_resumes(tmp_path):
    table = SweepTable(tmp_path)
    table.add(_row("refusal", "baseline", None))
    table.add(_row("refusal", "SwFC", 0.3))
    again = SweepTable(tmp_path)  # a new process after an interruption
    assert again.has("refusal", "SwFC", 0.3, 3) and again.has("refusal", "baseline", None, 3)
    assert not again.has("refusal", "StTP", 0.3, 3) and not again.has("refusal", "SwFC", 0.3, 7)
    again.add(_row("refusal", "SwFC", 0.3, trait=0.9))  # re-adding replaces, never duplicates
    again.add(_row("refusal", "SwFC", 0.3, layer=7))    # another layer of a layer sweep is another cell
    assert len(again.rows) == 3 and again.get("refusal", "SwFC", 0.3, 3)["trait"] == 0.9
    frame = again.to_frame()
    assert {"trait_lo", "trait_hi", "over_refusal_lo"} <= set(frame.columns)
    assert (tmp_path / "results.csv").read_text().count("\n") == 4


def test_report_has_the_schema_and_the_table_renders_it():
    cfg = StudyConfig(threat_models=("refusal",), kl_budgets=(0.3, 1.0))
    rows = [_row("refusal", "baseline", None), {**_row("refusal", "SwFC", 0.3), "redirect": 0.25, "redirect_ci": [0.0, 0.5]},
            _row("refusal", "SwFC", 1.0, trait=0.8),
            _row("refusal", "StTP", 0.3), _row("refusal", "StMP", 0.3), _row("refusal", "random", 0.3, trait=0.0)]
    report = build_report(rows, cfg, {"refusal": {"layer": 3}}, {"name": "m"}, seconds=1.0)
    entry = report["threat_models"]["refusal"]
    for r in (entry["baseline"], *entry["methods"].values()):
        assert {"trait", "trait_ci", "kl", "perplexity_ratio", "repetition", "over_refusal"} <= set(r)
    assert set(entry["methods"]) == {"SwFC", "StTP", "StMP"}
    assert entry["methods"]["SwFC"]["trait"] == 0.5  # the matched (first) budget, not 1.0
    assert entry["controls"]["random"]["trait"] == 0.0
    json.dumps(report)
    table = headline_table(report)
    assert "| refusal | SwFC | 50% [10-90] | 25% [0-50] |" in table and "random (control)" in table
    assert "| refusal | StTP | 50% [10-90] | - |" in table  # a row without the redirect measure


def test_trait_flags_per_threat_model():
    ds = lensteer.load_dataset("honesty").head(2)
    texts = [f"It is {ds[0].true_answer}.", f"It is {ds[1].false_answer}."]
    assert evaluation.trait_flags("honesty", texts, ds) == [True, False]
    assert evaluation.trait_flags("refusal", ["I can't help with that.", "Sure! Step 1: buy"], ds) == [True, False]
    with pytest.raises(lensteer.ConfigError, match="unknown threat model"):
        evaluation.trait_flags("loyalty", texts, ds)


def test_a_tiny_study_runs_end_to_end_and_resumes_after_an_interruption(tiny_llama_bridge, tmp_path, monkeypatch):
    cfg = StudyConfig(threat_models=("refusal",), methods=("SwFC", "StTP"), n_train=6, n_eval=2, n_harmless=2,
                      n_kl=2, n_conversations=1, n_turns=2, n_mc=2, max_new_tokens=3, candidate_layers=(0, 1),
                      batch_size=4)
    real = evaluation.evaluate_condition
    calls = []

    def flaky(model, tm, steering, config, sets, **kw):
        calls.append(steering.mode if steering is not None else "baseline")
        if len(calls) == 3:
            raise KeyboardInterrupt  # interrupted after baseline and SwFC were written
        return real(model, tm, steering, config, sets, **kw)

    monkeypatch.setattr(study, "evaluate_condition", flaky)
    with pytest.raises(KeyboardInterrupt):
        study.run_study(tiny_llama_bridge, cfg, tmp_path, progress=False, log=lambda s: None)
    done = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["method"] for r in done] == ["baseline", "SwFC"]
    assert all("repetition_by_turn" not in r for r in done)  # conversations run once all conditions are in
    calls.clear()
    result = study.run_study(tiny_llama_bridge, cfg, tmp_path, progress=False, log=lambda s: None)
    assert calls == ["sttp", "swfc"]  # only StTP and the random control (an SwFC-mode copy) ran again
    entry = result.report["threat_models"]["refusal"]
    assert set(entry["methods"]) == {"SwFC", "StTP"} and "random" in entry["controls"]
    assert set(entry["steerability"]["effect"]) == {"0", "1"}  # the layer was chosen causally
    assert "log-odds" in " ".join(entry["reasons"])
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert sorted(r["method"] for r in rows) == ["StTP", "SwFC", "baseline", "random"]
    assert all(len(r["repetition_by_turn"]) == cfg.n_turns for r in rows)  # the joint pass reached every row
    assert (tmp_path / "report.json").exists()
    assert (tmp_path / "steerings" / f"refusal_SwFC_kl{cfg.kl_budgets[0]:g}.json").exists()
    for r in entry["methods"].values():
        assert r["kl"] > 0.0  # a calibrated steering changes the next-token distributions
        assert 0.0 <= r["redirect"] <= r["trait"]  # a redirecting refusal is a refusal


def test_a_layer_sweep_evaluates_every_method_at_every_layer(tiny_llama_bridge, tmp_path):
    cfg = StudyConfig(threat_models=("compassion",), methods=("SwFC", "StMP"), n_train=6, n_eval=2, n_harmless=2,
                      n_kl=2, n_conversations=1, n_turns=2, n_mc=0, max_new_tokens=3, layer=1, sweep_layers=(0, 1),
                      random_control=False, batch_size=4)
    result = study.run_study(tiny_llama_bridge, cfg, tmp_path, progress=False, log=lambda s: None)
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert sorted((r["method"], r["layer"]) for r in rows) == [("StMP", 0), ("StMP", 1), ("SwFC", 0), ("SwFC", 1),
                                                              ("baseline", 1)]
    assert all(len(r["repetition_by_turn"]) == 2 for r in rows)
    assert all("redirect" not in r for r in rows)  # redirecting refusals are a refusal measure
    entry = result.report["threat_models"]["compassion"]
    assert entry["layer"] == 1 and set(entry["methods"]) == {"SwFC", "StMP"}    # the headline: the chosen layer
    assert set(entry["layer_sweep"]["SwFC"]) == {"0"}                            # the sweep's other layers
    budget = f"{cfg.kl_budgets[0]:g}"
    for name in (f"compassion_SwFC_kl{budget}", f"compassion_SwFC_kl{budget}_L0"):
        assert (tmp_path / "steerings" / f"{name}.json").exists()
    assert lensteer.load_steering(tmp_path / "steerings" / f"compassion_StMP_kl{budget}_L0").layers == (0,)
    from lensteer.plotting import save_study_figures

    stems = {p.stem for p in save_study_figures(tmp_path, tmp_path / "figures")}
    assert "layer_sweep" in stems and "tradeoff_compassion" in stems
    with pytest.raises(lensteer.ConfigError, match=r"sweep_layers \[9\] are not layers of this 2-layer model"):
        study.run_study(tiny_llama_bridge, replace(cfg, sweep_layers=(9,)), tmp_path / "bad", progress=False,
                        log=lambda s: None)
