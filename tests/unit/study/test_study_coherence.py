"""Coherence priced where change is unwanted (issue 28, item 3) and the gate chosen by its cost (item 4)."""

from dataclasses import replace

import pytest
import torch

import lensteer
from lensteer import threats
from lensteer.core.activations import collect_activations
from lensteer.steering.calibration import calibrate, kl_probe, steering_kl
from lensteer.steering.gates import Gate
from lensteer.study import coherence
from lensteer.study.config import StudyConfig
from lensteer.study.costs import _gate_sets
from lensteer.study.gate import CurvePoint, choose_budget, gate_prompt_sets

CONFIG = StudyConfig(n_kl=3, kl_tokens=4, max_new_tokens=8, batch_size=8, n_fluency=4)


def test_held_apart_rows_are_fixed_by_id_and_kept_from_every_fit():
    for name in ("refusal", "borderline", "compassion"):
        ds = lensteer.load_dataset(name)
        apart, fit = ds.held_apart, ds.fit
        ids = {ex.id for ex in apart}
        assert ids and ids.isdisjoint(ex.id for ex in fit)
        assert ids | {ex.id for ex in fit} == {ex.id for ex in ds.train}  # a part of train, nothing else
        assert 0.15 <= len(apart) / len(ds.train) <= 0.25 and set(apart.categories) == set(ds.categories)
        assert [ex.id for ex in lensteer.load_dataset(name).held_apart] == [ex.id for ex in apart]
    prompts = coherence.calibration_prompts(CONFIG)  # held-apart harmless twins, then borderline prompts
    refusal, borderline = lensteer.load_dataset("refusal"), lensteer.load_dataset("borderline")
    assert prompts[:3] == refusal.held_apart.stratified(3).paired_prompts
    assert prompts[3:] == borderline.held_apart.stratified(3).prompts
    assert not set(prompts) & set(refusal.prompts)  # never a target (harmful) prompt


def _separating_gate(model, opens_on, closed_on, layer: int) -> Gate:
    """A gate at ``layer`` (last prompt token) that opens on every prompt of ``opens_on`` and on none of
    ``closed_on``: least squares with fewer prompts than dimensions interpolates the labels exactly."""
    acts = collect_activations(model, [*opens_on, *closed_on], layers=[layer])[:, 0].double()
    labels = torch.tensor([1.0] * len(opens_on) + [-1.0] * len(closed_on), dtype=torch.float64)
    design = torch.cat([acts, torch.ones(len(acts), 1, dtype=torch.float64)], 1)
    w = torch.linalg.lstsq(design, labels[:, None]).solution[:, 0]
    unit = w[:-1] / w[:-1].norm()
    gate = Gate(unit=unit.float(), layer=layer, threshold=float(-w[-1] / w[:-1].norm()))
    proj = acts.float() @ gate.unit
    assert gate.opens(proj).tolist() == [True] * len(opens_on) + [False] * len(closed_on)
    return gate


def test_a_direction_that_changes_only_target_answers_keeps_its_scale(tiny_llama_bridge):
    """The Done-when of issue 28: calibration reads no KL on target prompts. The planted steering acts only
    on target (harmful) prompts, through a gate that opens on them alone: on the study's calibration set its
    cost is 0 at every scale, so its scale stays where it started; under the old protocol (harmless and
    target prompts, gate off) the better it moved the target answers, the more it shrank."""
    model = tiny_llama_bridge
    prompts, probe = coherence.calibration_set(model, CONFIG)
    targets = threats.get("refusal").load().held_apart.stratified(6).prompts
    gate = _separating_gate(model, targets, prompts, layer=1)
    start = 2.0
    planted = lensteer.Steering(
        unit=torch.randn(32, generator=torch.Generator().manual_seed(5)),
        layers=(1,),
        mode="add",
        scale=start,
        positions="all",
        gate=gate,
    )
    plain = lensteer.generate(model, targets, max_new_tokens=6).texts
    steered = lensteer.generate(model, targets, steering=planted, max_new_tokens=6).texts
    assert steered != plain  # it changes the target answers ...
    calm = lensteer.generate(model, prompts, steering=planted, max_new_tokens=6).texts
    assert calm == lensteer.generate(model, prompts, max_new_tokens=6).texts  # ... and nothing else
    assert steering_kl(model, planted.with_scale(64.0), probe) == 0.0
    new = calibrate(model, planted, probe, 0.5)
    assert new.scale == start and not new.reached  # the study's calibration does not shrink it
    old_probe = kl_probe(model, [*prompts, *targets], continuation_tokens=4)  # the old calibration set
    budget = 0.5 * steering_kl(model, planted, old_probe, gated=False)
    old = calibrate(model, replace(planted, gate=None), old_probe, budget)
    assert old.reached and old.scale < 0.9 * start  # the old protocol shrank it
    # with the gate as deployed but target prompts in the set, it would shrink as well
    assert calibrate(model, planted, old_probe, 0.5 * steering_kl(model, planted, old_probe)).scale < start


def test_the_fluency_bound_caps_a_looping_direction(tiny_llama_bridge):
    """A direction along the unembedding of one token makes every answer repeat it ("a a a a"): rep-4
    near 1. Its KL budget allows a scale where the answers loop; the fluency bound lowers the scale until
    the answers to the held-apart target prompts are within the bound, and says it set the scale."""
    model = tiny_llama_bridge
    config = replace(CONFIG, max_perplexity_ratio=1e9, max_rep4=0.5)  # the loop alone is the bound here
    _, probe = coherence.calibration_set(model, config)
    token = model.tokenizer.convert_tokens_to_ids("a")
    unit = model.W_U[:, token].detach() / model.W_U[:, token].detach().norm()
    looping = lensteer.Steering(unit=unit, layers=(1,), mode="add", scale=1.0, positions="all")
    budget = steering_kl(model, looping.with_scale(1.0), probe)
    fluency = coherence.fluency_probe(model, "refusal", config)
    assert fluency is not None and fluency.baseline_rep4 < 0.5
    at_budget = fluency.measure(model, looping.with_scale(1.0))
    assert at_budget.rep4 >= 0.8  # the KL-calibrated scale loops (8 tokens: 5 four-grams, all one)
    coh = coherence.Coherence(kl=probe, fluency=fluency, bound=fluency.bound(config))
    capped = coherence.calibrate_coherent(model, looping, coh, budget)
    cal = capped.info["calibration"]
    assert cal["binding"] == "fluency" and cal["kl_scale"] == pytest.approx(1.0, rel=0.1)
    assert 0 < capped.scale < 0.5 * cal["kl_scale"] and cal["kl"] < budget
    assert cal["fluency"]["rep4"] <= 0.5 and cal["fluency_admitted"]
    again = fluency.measure(model, capped)
    assert again.rep4 == cal["fluency"]["rep4"] <= 0.5  # the recorded fluency is the steering's


def test_largest_admitted_scale_grows_shrinks_and_bisects():
    search = coherence.largest_admitted_scale
    grown = search(1.0, lambda s: s <= 10.0, grow=True)
    assert 10.0 / 1.1 < grown.scale <= 10.0 and grown.admitted
    assert search(1.0, lambda s: s <= 10.0, grow=False).scale == 1.0  # the KL scale binds
    shrunk = search(8.0, lambda s: s <= 0.3, grow=False)
    assert 0.3 / 1.1 < shrunk.scale <= 0.3 and shrunk.admitted
    never = search(1.0, lambda s: False, grow=True)
    assert not never.admitted and never.scale == 2.0**-coherence.SHRINK_STEPS
    capped = search(1.0, lambda s: True, grow=True)  # nothing refuses: stops after GROW_STEPS doublings
    assert capped.scale == 2.0**coherence.GROW_STEPS


def test_the_gate_budget_is_the_largest_within_the_borderline_ceiling():
    curve = [
        CurvePoint(target_fpr=0.02, val_tpr=0.40, val_borderline_over_refusal=0.04),
        CurvePoint(target_fpr=0.05, val_tpr=0.55, val_borderline_over_refusal=0.07),
        CurvePoint(target_fpr=0.10, val_tpr=0.70, val_borderline_over_refusal=0.10),
        CurvePoint(target_fpr=0.15, val_tpr=0.80, val_borderline_over_refusal=0.16),
        CurvePoint(target_fpr=0.20, val_tpr=0.85, val_borderline_over_refusal=0.09),  # not monotone: taken
    ]
    assert choose_budget(curve, 0.10)[0] == 0.20
    assert choose_budget(curve[:4], 0.10)[0] == 0.10  # at the ceiling counts as within
    assert choose_budget(curve[:4], 0.05)[0] == 0.02
    budget, why = choose_budget(curve[1:4], 0.01)
    assert budget == 0.05 and "no budget" in why  # none within: the least over-refusal there is


def test_config_checks_the_gate_budgets_and_fluency_bounds():
    assert StudyConfig().gate_fpr is None and StudyConfig().gate_fprs == (0.02, 0.05, 0.10, 0.15, 0.20)
    assert StudyConfig.from_dict({"gate_fprs": [0.2, 0.05]}).gate_fprs == (0.05, 0.2)
    for bad in (
        {"gate_fprs": ()},
        {"gate_fprs": (0.05, 1.5)},
        {"max_perplexity_ratio": 1.0},
        {"max_rep4": 0.0},
        {"n_fluency": -1},
        {"gate_fpr": 0.0},
        {"n_gate": 0},
    ):
        with pytest.raises(lensteer.ConfigError, match=next(iter(bad))):
            StudyConfig.from_dict(bad)


def test_the_gate_reads_whole_splits_unless_n_gate_caps_them_and_the_plan_counts_what_it_reads():
    refusal, borderline = threats.get("refusal"), lensteer.load_dataset("borderline")
    whole = gate_prompt_sets(refusal, StudyConfig())
    data = refusal.load()
    assert whole["positives_val"] == data.val.prompts and whole["positives_test"] == data.test.prompts
    assert whole["negatives_test"] == data.test.paired_prompts + borderline.test.prompts
    assert len(whole["positives_train"]) == max(96, StudyConfig().n_train)
    capped = gate_prompt_sets(refusal, StudyConfig(n_gate=5))
    for name, prompts in capped.items():
        kinds = 1 if name.startswith(("positives", "borderline")) else 2  # negatives: twins + borderline
        assert len(prompts) == 5 * kinds, name
        assert set(prompts) <= set(whole[name]), name
    assert capped["borderline_val"] == capped["negatives_val"][-5:]  # the curve reads the borderline tail
    assert StudyConfig().n_gate is None and StudyConfig.paper().n_gate is None
    read = sum(len(v) for k, v in capped.items() if not k.startswith("borderline_"))
    assert _gate_sets(refusal, StudyConfig(n_gate=5)) == (read, 5) == (45, 5)
