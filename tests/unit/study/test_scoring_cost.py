"""The study's scoring does each expensive pass once: same numbers as the one-pass-per-condition way."""

from contextlib import nullcontext
from dataclasses import replace

import pytest
import torch

import lensteer
from lensteer.evaluate.capability import mc_accuracy, text_cross_entropy
from lensteer.study import capability, evaluation
from lensteer.study.config import StudyConfig


def test_capability_is_scored_once_per_distinct_edit_with_the_numbers_of_one_pass_per_option(
    tiny_llama_bridge, monkeypatch
):
    model = tiny_llama_bridge
    cfg = StudyConfig(
        threat_models=("refusal",),
        n_eval=2,
        n_harmless=2,
        n_borderline=0,
        n_kl=2,
        kl_tokens=2,
        n_conversations=0,
        n_mc=3,
        n_paragraphs=2,
        max_new_tokens=2,
        batch_size=4,
        random_seeds=(),
    )
    sets = evaluation.eval_sets(model, cfg)
    unit = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(5))
    steering = lensteer.Steering(unit=unit / unit.norm(), layers=(1,), mode="add", scale=6.0)
    twin = replace(steering, info={"calibration": {"derived_from": "add"}})  # the same edit, other provenance
    conditions = [
        *evaluation.baseline_conditions("refusal", cfg),
        evaluation.Condition(method="add", steering=steering, kl_budget=0.5),
        evaluation.Condition(method="add-twin", steering=twin, kl_budget=0.5),
    ]
    assert [c.method for c in conditions] == ["baseline", "prompting", "add", "add-twin"]
    mc_calls, ce_calls = [], []
    monkeypatch.setattr(
        capability, "mc_accuracy", lambda *a, **k: mc_calls.append(k.get("system")) or mc_accuracy(*a, **k)
    )
    monkeypatch.setattr(
        capability, "text_cross_entropy", lambda *a, **k: ce_calls.append(1) or text_cross_entropy(*a, **k)
    )
    rows, _ = evaluation.evaluate_conditions(model, "refusal", conditions, cfg, sets)
    # baseline, prompting (its system prompt) and the edit; the twin reuses the edit's, and the paragraphs'
    # cross-entropy runs once unsteered (baseline, prompting and the deltas) and once steered
    assert len(mc_calls) == 3 and mc_calls[1] == conditions[1].system and len(ce_calls) == 2
    monkeypatch.undo()
    for cond, row in zip(
        conditions, rows, strict=True
    ):  # the reference: the bridge under steer(), per condition
        s = None if cond.steering is None else capability.teacher_forced(cond.steering)
        with lensteer.steer(model, s) if s is not None else nullcontext():
            mc = mc_accuracy(model, sets.mc, batch_size=4, system=cond.system)
            ce = text_cross_entropy(model, sets.paragraphs, batch_size=4)
        assert row["capability_flags"] == list(mc.correct) and row["capability"] == mc.accuracy
        assert row["cross_entropy"] == pytest.approx(ce, rel=1e-5)
    assert rows[2]["cross_entropy"] == rows[3]["cross_entropy"]
    assert abs(rows[2]["ce_delta_nats"]) > 1e-3  # the steering changes what is compared
    assert rows[0]["ce_delta_nats"] == rows[1]["ce_delta_nats"] == 0.0
