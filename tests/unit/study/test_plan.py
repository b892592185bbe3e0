"""`lensteer run --plan` against a real run: the same stages, conditions and prompt counts, nothing written."""

import json
from dataclasses import replace

from lensteer.cli import commands, main
from lensteer.study import runner
from lensteer.study.config import StudyConfig
from lensteer.study.costs import Rates
from lensteer.study.plan import format_plan, study_plan

CFG = StudyConfig(
    threat_models=("refusal",),
    methods=("SwFC", "StMP", "StMP-push"),  # StMP-push is StMP's twin: a row, not a run
    regimes=True,
    n_train=6,
    n_eval=2,
    n_harmless=2,
    n_borderline=1,
    n_kl=2,
    kl_tokens=2,
    n_fluency=2,
    n_conversations=1,
    n_turns=2,
    n_mc=2,
    n_paragraphs=1,
    max_new_tokens=2,
    n_select=2,
    select_new_tokens=2,
    patching_layers=1,  # the site is chosen (no layer set): the plan counts the site choice in locate
    random_seeds=(0,),
    batch_size=4,
)
RATES = Rates(step_seconds=0.01, row_seconds=0.001, forward_tokens_per_s=1000.0, batch=4, context=20)


def _label(row: dict, chosen: int) -> str:
    budget = "" if row["kl_budget"] is None else f" @ {row['kl_budget']:g}"
    return f"{row['method']}{budget}{'' if row['layer'] == chosen else ' L' + str(row['layer'])}"


def test_the_plan_has_the_stages_and_conditions_of_a_real_run_with_a_bar_per_stage(
    tiny_llama_bridge, tmp_path, capsys
):
    plans, stages = study_plan(tiny_llama_bridge, CFG)
    runner.run_study(tiny_llama_bridge, CFG, tmp_path / "run", progress=True, log=lambda s: None)
    bars = capsys.readouterr().err
    timing = json.loads((tmp_path / "run" / "timing.json").read_text())
    recorded = [(where, stage) for where, mine in timing["stages"].items() for stage in mine]
    assert sorted((s.where, s.stage) for s in stages) == sorted(recorded)
    assert {stage for _, stage in recorded} <= set(runner.STAGES)
    assert all(v > 0 for mine in timing["stages"].values() for v in mine.values())

    (plan,) = plans
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    located = report["threat_models"]["refusal"]  # what was located is in the threat model's entry
    rows = json.loads((tmp_path / "run" / "results.json").read_text())["rows"]
    # baseline, prompting, SwFC, StMP, StMP-push (its twin's row), StMP:paper, StMP-push:paper, random:0
    assert sorted(plan.labels) == sorted(_label(r, located["layer"]) for r in rows)
    assert plan.conditions == len(rows) == 8
    assert plan.evaluated == len([r for r in rows if not r.get("same_as")])
    assert {(r["n_eval"], r["n_harmless"]) for r in rows} == {(plan.n_eval, plan.n_harmless)}

    # the site choice ran, and the plan's locate counts it: an upper bound on its candidates
    locate = next(s for s in stages if s.stage == "locate")
    n_planned = int(locate.work.split(" candidates")[0].rsplit(" ", 1)[1])
    assert 0 < len(located["candidates"]) <= n_planned
    fixed = next(s for s in study_plan(tiny_llama_bridge, replace(CFG, layer=1))[1] if s.stage == "locate")
    assert locate.decode_steps > fixed.decode_steps and locate.forward_tokens > fixed.forward_tokens
    assert all(s.decode_tokens + s.forward_tokens > 0 for s in stages if s.stage != "robustness")

    # a bar per stage with the plan's totals (tqdm's rate gives the ETA)
    assert "refusal calibrate: 100%|" in bars and f"| {plan.conditions}/{plan.conditions} [" in bars
    assert f"| {plan.evaluated}/{plan.evaluated} [" in bars and "refusal evaluate: 100%|" in bars
    assert f"candidates: 100%|{'█' * 10}| {len(located['candidates'])}/{len(located['candidates'])} [" in bars

    text = format_plan(plans, stages, RATES)
    assert "refusal: 8 conditions" in text and "| refusal | score |" in text and "StMP-push:paper" in text


def test_the_plan_runs_from_the_cli_and_writes_nothing(tiny_llama_bridge, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(commands, "_load", lambda args: (tiny_llama_bridge, None))
    out = tmp_path / "planned"
    argv = ["run", "--plan", "--out", str(out), "--dataset", "refusal", "--method", "SwFC"]
    assert main([*argv, "--profile", "smoke"]) == 0
    assert not out.exists()  # a plan runs and writes nothing
    text = capsys.readouterr().out
    for stage in ("locate", "calibrate", "decode", "score", "conversations"):
        assert f"| refusal | {stage} |" in text
    assert "tokens/s at 16 rows a batch" in text  # the smoke profile's batch, probed


def test_a_quiet_run_shows_no_bar(tiny_llama_bridge, tmp_path, capsys):
    cfg = replace(
        CFG,
        threat_models=("compassion",),  # no prompt gate to fit
        layer=1,
        methods=("SwFC",),
        regimes=False,
        random_seeds=(),
        n_fluency=0,
        n_conversations=0,
        n_mc=0,
        n_paragraphs=0,
    )
    runner.run_study(tiny_llama_bridge, cfg, tmp_path / "run", progress=False, log=lambda s: None)
    assert capsys.readouterr().err == ""


def test_teacher_forced_counts_run_a_shared_prefix_once_per_batch():
    from lensteer.study.costs import forced_per_row

    # 8 rows of 100 tokens sharing 40, in batches of 4: each batch runs the 40 once, then 60 per row
    assert forced_per_row(100.0, 40, rows=8, batch=4) * 8 == 2 * 40 + 8 * 60
    assert forced_per_row(100.0, 40, rows=1, batch=4) == 100  # one row: nothing is shared
    assert forced_per_row(100.0, 0, rows=8, batch=4) == 100


def test_only_a_prefix_worth_computing_once_is_counted_as_shared(tiny_llama_bridge):
    from lensteer.core.chat import ChatPrompt
    from lensteer.steering.prefix import MIN_SHARED_PREFIX
    from lensteer.study.costs import shared_tokens

    context = " ".join(["a few-shot turn"] * 20)
    long = [ChatPrompt(user=f"{context} question {k}?") for k in "xyz"]
    assert shared_tokens(tiny_llama_bridge, long) >= MIN_SHARED_PREFIX
    assert shared_tokens(tiny_llama_bridge, ["cats?", "dogs?"]) == 0  # the template alone: too short
    assert shared_tokens(tiny_llama_bridge, long[:1]) == 0
