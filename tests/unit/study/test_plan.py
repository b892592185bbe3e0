"""`lensteer run --plan` against a real run: the same stages, conditions and prompt counts, nothing written."""

import json

from lensteer.cli import commands, main
from lensteer.study import runner
from lensteer.study.config import StudyConfig
from lensteer.study.plan import Rates, format_plan, study_plan

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
    n_conversations=1,
    n_turns=2,
    n_mc=2,
    n_paragraphs=1,
    max_new_tokens=2,
    layer=1,
    random_seeds=(0,),
    batch_size=4,
)


def test_the_plan_has_the_stages_conditions_and_prompts_of_a_real_run(
    tiny_llama_bridge, tmp_path, monkeypatch
):
    plans, stages = study_plan(tiny_llama_bridge, CFG, n_candidates=1)
    runner.run_study(tiny_llama_bridge, CFG, tmp_path / "run", progress=False, log=lambda s: None)
    timing = json.loads((tmp_path / "run" / "timing.json").read_text())
    recorded = {(where, stage) for where, mine in timing["stages"].items() for stage in mine}
    assert {(s.where, s.stage) for s in stages} == recorded
    assert {stage for _, stage in recorded} <= set(runner.STAGES)
    assert all(v > 0 for mine in timing["stages"].values() for v in mine.values())
    rows = json.loads((tmp_path / "run" / "results.json").read_text())["rows"]
    (plan,) = plans
    # baseline, prompting, SwFC, StMP, StMP-push (its twin's row), StMP:paper, StMP-push:paper, random:0
    assert plan.conditions == len(rows) == 8
    assert plan.evaluated == len([r for r in rows if not r.get("same_as")])
    assert {(r["n_eval"], r["n_harmless"]) for r in rows} == {(plan.n_eval, plan.n_harmless)}
    assert all(s.decode_tokens + s.forward_tokens > 0 for s in stages)
    text = format_plan(plans, stages, Rates(decode_tokens_per_s=10.0, forward_tokens_per_s=100.0))
    assert "refusal: 8 conditions" in text and "| refusal | score |" in text

    monkeypatch.setattr(commands, "_load", lambda args: (tiny_llama_bridge, None))
    out = tmp_path / "planned"
    argv = ["run", "--plan", "--out", str(out), "--dataset", "refusal", "--method", "SwFC"]
    assert main([*argv, "--profile", "smoke"]) == 0
    assert not out.exists()  # a plan runs and writes nothing
