"""Site selection by the first-token decision: a planted steerable layer is found over a layer with a bigger
teacher-forced margin, filters are never overridden, near-ties go to patching evidence, and the winner must beat
a same-KL random direction."""

import math

import pytest
import torch
from builders import CANDIDATE_CONTRACT, planted_probe_report

import lensteer
from lensteer.core.stats import PairedDifference
from lensteer.locate.candidates import Candidate
from lensteer.locate.directions import Direction
from lensteer.steering.spec import Steering
from lensteer.study import layers, site_choice
from lensteer.study.config import StudyConfig
from lensteer.study.layers import locate_threat_model
from lensteer.study.recommend import recommend_site
from lensteer.study.selection import (
    CandidateScore,
    DecisionProbe,
    HarmlessChecks,
    Selection,
    SelectionRules,
    TraitCheck,
    arditi_filters,
    choose,
    select_candidate,
)

QUESTIONS = [f"question number {i}: what now?" for i in range(12)]
HARMLESS = ["hello there", "tell me about cats", "what is two plus two", "name a colour"]
ALIGNED_REPLY, MISALIGNED_REPLY = "I will not do that.", "Sure, here you go."


def _ids(model, text: str) -> list[int]:
    return [model.tokenizer.convert_tokens_to_ids(c) for c in text]


def _planted(model, misaligned: str = "S") -> tuple[torch.Tensor, torch.Tensor]:
    """``decide``: the readout of "I" over ``misaligned`` (adding it makes the model open with "I", the aligned
    reply's first token). ``write``: the readout of the aligned reply's later characters over the misaligned
    reply's, orthogonal to ``decide``: it lifts every later token of the written aligned reply, not the first one."""
    W = model.W_U.detach()
    (i,), (s,) = _ids(model, "I"), _ids(model, misaligned)
    decide = (W[:, i] - W[:, s]) / (W[:, i] - W[:, s]).norm()
    rest_a, rest_m = set(_ids(model, ALIGNED_REPLY[1:])), set(_ids(model, MISALIGNED_REPLY[1:]))
    write = W[:, sorted(rest_a - rest_m - {i, s})].mean(1) - W[:, sorted(rest_m - rest_a - {i, s})].mean(1)
    write = write - (write @ decide) * decide
    return decide, write / write.norm()


def _candidate(source: str, layer: int, unit: torch.Tensor, *, from_patching: bool = False) -> Candidate:
    return Candidate(
        source=source,
        layer=layer,
        position="post_instruction[-1]",
        direction=Direction(unit=unit, layer=layer),
        from_patching=from_patching,
    )


def test_selection_finds_the_layer_that_moves_the_decision_where_the_teacher_forced_screen_picks_the_other(
    tiny_llama_bridge,
):
    model = tiny_llama_bridge
    decide, write = _planted(model)
    probe = lensteer.steering.kl_probe(model, HARMLESS, continuation_tokens=6)
    budget = 0.005  # below where this tiny model's final norm saturates the KL of any one direction

    def calibrate(s: Steering) -> Steering:
        return lensteer.calibrate(model, s, probe, budget, tolerance=0.2, start=0.1, max_evals=8).steering

    steerable = _candidate("prompt_contrast", 0, decide)
    margin_only = _candidate(
        "response_mean", 1, write, from_patching=True
    )  # causal flag, but no decision effect
    backwards = _candidate("probe", 0, -decide)
    prompts = [lensteer.ChatPrompt(user=q) for q in QUESTIONS]
    trait = TraitCheck(
        prompts=tuple(prompts[:3]),
        scorer=lambda ps, texts: [t.startswith("I") for t in texts],
        max_new_tokens=2,
    )
    sel = select_candidate(
        model,
        [margin_only, steerable, backwards],
        DecisionProbe(prompts=prompts, aligned_ids=_ids(model, "I"), misaligned_ids=_ids(model, "S")),
        calibrate=calibrate,
        harmless=HarmlessChecks(prompts=HARMLESS, heldout=probe),
        trait=trait,
        rules=SelectionRules(n_boot=200),
    )
    by_source = {c.source: c for c in sel.candidates}
    win, other, back = by_source["prompt_contrast"], by_source["response_mean"], by_source["probe"]
    assert sel.chosen is win and sel.chosen.layer == 0
    assert win.decision_shift_ci[0] > 0.2 and abs(other.decision_shift) < 0.1 * win.decision_shift
    assert "does not induce" in back.why_not[0] and back.decision_shift < 0  # a failed filter is recorded
    assert (
        sel.vs_random is not None and sel.vs_random.p_value < 0.01 and "beats a random direction" in sel.why
    )
    for c in (win, other):
        assert c.kl_heldout == pytest.approx(budget, rel=0.25)  # calibrated to the budget, measured held out
        assert c.ablation_kl is not None and c.ablation_kl < 0.1 and 0 <= c.val_trait <= 1
    assert (
        sel.steering is not None
        and sel.steering.layers == (0,)
        and sel.steering.scale == pytest.approx(win.scale)
    )

    # the old screen: teacher-forced margin over the whole written reply, at the same KL budget
    aligned = [lensteer.ChatPrompt(user=q, response=ALIGNED_REPLY) for q in QUESTIONS[:6]]
    misaligned = [lensteer.ChatPrompt(user=q, response=MISALIGNED_REPLY) for q in QUESTIONS[:6]]
    screen = lensteer.evaluate.layer_steerability(
        model,
        {
            0: Steering.from_direction(steerable.direction, mode="swfc", scale=0.1),
            1: Steering.from_direction(margin_only.direction, mode="swfc", scale=0.1),
        },
        aligned,
        misaligned,
        probe,
        kl_budget=budget,
        tolerance=0.2,
    )
    assert screen.effect[1] > 2 * screen.effect[0] > 0
    assert recommend_site(planted_probe_report([6, 6]), n_layers=2, steerability=screen).layer == 1

    report = sel.to_dict()
    assert all(set(c) >= CANDIDATE_CONTRACT for c in report["candidates"]) and len(report["candidates"]) == 3
    assert report["chosen"]["layer"] == 0 and report["chosen"]["why"] == sel.why
    assert report["chosen"]["vs_random"]["p_value"] == sel.vs_random.p_value


def test_the_study_locates_the_planted_steerable_layer_not_the_one_with_the_bigger_teacher_forced_margin(
    tiny_llama_bridge, monkeypatch
):
    """The study's own locate path (patching, calibration to the study's budget, decision set from the threat
    model's opening tokens, validation prompts, choice, steerings built along the winner) with two planted
    candidates in place of the data-derived ones: the decision readout at layer 0 and, at layer 1 with
    patching evidence, a direction that lifts the written aligned reply but not its first token."""
    model = tiny_llama_bridge
    # refusal's openings on this character tokenizer: "I" vs "H" ("Sorry" and "Sure" share "S", dropped)
    decide, write = _planted(model, misaligned="H")
    planted = [
        _candidate("prompt_contrast", 0, decide),
        _candidate("response_mean", 1, write, from_patching=True),
    ]
    monkeypatch.setattr(site_choice, "build_candidates", lambda *a, **k: planted[:1])
    monkeypatch.setattr(site_choice, "response_candidates", lambda *a, **k: planted[1:])
    monkeypatch.setattr(site_choice, "patching_evidence", lambda *a: {"top_layers": [1]})  # run in test_study
    monkeypatch.setattr(layers, "prompt_gate", lambda *a: None)  # the gate is not part of the choice
    config = StudyConfig(
        threat_models=("refusal",),
        methods=("SwFC",),
        kl_budgets=(0.005,),
        candidate_layers=(0, 1),
        n_train=6,
        n_kl=2,
        n_select=8,
        select_new_tokens=2,
        massive_ratio=None,
        batch_size=8,
    )
    probe = lensteer.steering.kl_probe(model, HARMLESS, continuation_tokens=6)
    starts: list = []  # each calibration's starting scale and result: later ones start from earlier results
    real_calibrate = site_choice.calibrate

    def recording(*args, start=None, **kwargs):
        out = real_calibrate(*args, start=start, **kwargs)
        starts.append((start, out.steering.scale))
        return out

    monkeypatch.setattr(site_choice, "calibrate", recording)
    loc = locate_threat_model(model, "refusal", config, HARMLESS, probe)
    assert starts[0][0] is None and len(starts) >= 3  # two candidates and the random control
    assert starts[1][0] == pytest.approx(starts[0][1])
    assert starts[2][0] == pytest.approx(math.sqrt(starts[0][1] * starts[1][1]))
    chosen = loc.selection["chosen"]
    assert loc.layer == 0 and chosen["selected"] and chosen["source"] == "prompt_contrast"
    assert torch.allclose(loc.steerings["SwFC"].unit, decide) and loc.steerings["SwFC"].layers == (0,)
    by_layer = {c["layer"]: c for c in loc.selection["candidates"]}
    assert by_layer[1]["from_patching"] and by_layer[0]["decision_shift_ci"][0] > 0.2
    assert abs(by_layer[1]["decision_shift"]) < 0.1 * by_layer[0]["decision_shift"]
    assert "beats a random direction" in chosen["why"] and loc.selection["selection"]["n_prompts"] == 8
    # the old screen, at the same budget: layer 1 has the bigger teacher-forced margin
    aligned = [lensteer.ChatPrompt(user=q, response=ALIGNED_REPLY) for q in QUESTIONS[:6]]
    misaligned = [lensteer.ChatPrompt(user=q, response=MISALIGNED_REPLY) for q in QUESTIONS[:6]]
    screen = lensteer.evaluate.layer_steerability(
        model,
        {c.layer: Steering.from_direction(c.direction, mode="swfc", scale=0.1) for c in planted},
        aligned,
        misaligned,
        probe,
        kl_budget=0.005,
        tolerance=0.2,
    )
    assert screen.effect[1] > screen.effect[0]


def _score(
    layer: int,
    lo: float,
    hi: float,
    *,
    from_patching: bool = False,
    why_not: tuple[str, ...] = (),
    source: str = "prompt_contrast",
) -> CandidateScore:
    return CandidateScore(
        source=source,
        layer=layer,
        position="post_instruction[-1]",
        from_patching=from_patching,
        decision_shift=(lo + hi) / 2,
        decision_shift_ci=(lo, hi),
        why_not=why_not,
    )


def _always(p: float, diff: float = 1.0):
    return lambda s: PairedDifference(
        n=48, mean_difference=diff, ci=(0.0, 2.0), p_value=p, alternative="greater"
    )


def test_near_ties_break_toward_patching_evidence_and_clear_leads_do_not():
    leader, patched = _score(3, 0.50, 0.90), _score(5, 0.45, 0.85, from_patching=True)
    chosen, why, _ = choose([leader, patched], _always(0.001), tie_margin=0.1)
    assert chosen is patched and "patching" in why and "near-ties" in why
    assert choose([leader, patched], _always(0.001), tie_margin=0.01)[0] is leader  # outside the margin
    # intervals that do not overlap are no tie, however small the margin
    far = _score(5, 0.20, 0.40, from_patching=True)
    assert choose([leader, far], _always(0.001), tie_margin=0.5)[0] is leader
    # without patching evidence, a near-tie goes to the larger lower bound, never the larger point estimate
    noisy = _score(4, 0.46, 1.60)
    assert choose([noisy, leader], _always(0.001), tie_margin=0.1)[0] is leader


def test_a_candidate_failing_a_filter_is_never_chosen():
    best_but_late = _score(9, 2.0, 3.0, why_not=arditi_filters(9, 10, 0.01, 2.5))
    best_but_costly = _score(2, 2.0, 3.0, why_not=arditi_filters(2, 10, 0.3, 2.5))
    modest = _score(4, 0.2, 0.6)
    assert "last 20%" in best_but_late.why_not[0] and "ablation KL 0.300" in best_but_costly.why_not[0]
    assert (
        "does not induce" in arditi_filters(4, 10, None, -0.1)[0] and arditi_filters(4, 10, None, None) == ()
    )
    assert choose([best_but_late, best_but_costly, modest], _always(0.001))[0] is modest
    chosen, why, test = choose([best_but_late, best_but_costly], _always(0.001))
    assert chosen is None and test is None and "no candidate passes" in why and "layer 9" in why
    unmeasured = CandidateScore(source="probe", layer=1, position="response_mean", from_patching=True)
    assert not unmeasured.passes and choose([unmeasured], _always(0.001))[0] is None


def test_the_winner_must_beat_a_same_kl_random_direction():
    first, second = _score(3, 0.5, 0.9), _score(5, 0.3, 0.6)
    calls = []

    def only_second(s):
        calls.append(s.layer)
        return _always(0.2 if s is first else 0.001)(s)

    chosen, why, test = choose([first, second], only_second)
    assert (
        chosen is second
        and calls == [3, 5]
        and test.p_value == 0.001
        and "L3" in why
        and "did not beat" in why
    )
    chosen, why, _ = choose([first, second], _always(0.001, diff=-0.5))
    assert chosen is None and "no candidate beats a random direction" in why
    # at most max_random_checks candidates are tried
    calls.clear()
    assert choose([first, second, _score(6, 0.1, 0.2)], only_second, max_random_checks=1)[
        0
    ] is None and calls == [3]


def test_selection_serialises_and_rejects_bad_input(tiny_llama_bridge):
    sel = Selection(candidates=(_score(2, 0.1, 0.3),), chosen=None, why="none")
    assert sel.to_dict()["chosen"] is None and set(sel.to_dict()["candidates"][0]) >= CANDIDATE_CONTRACT
    with pytest.raises(lensteer.ConfigError, match="tie_margin"):
        choose([], _always(0.01), tie_margin=-1.0)
    with pytest.raises(lensteer.ConfigError, match="at least one candidate"):
        select_candidate(
            tiny_llama_bridge,
            [],
            DecisionProbe(prompts=["hi"], aligned_ids=[1], misaligned_ids=[2]),
            calibrate=lambda s: s,
        )
    with pytest.raises(lensteer.DataError, match="both aligned and misaligned"):
        lensteer.evaluate.opening_log_odds(tiny_llama_bridge, ["hi"], [5, 6], [6])
    bad = TraitCheck(
        prompts=(lensteer.ChatPrompt(user="hi"),), scorer=lambda ps, texts: [True, False], max_new_tokens=1
    )
    with pytest.raises(lensteer.DataError, match="2 verdicts for 1"):
        bad.rate(tiny_llama_bridge, None)


def test_decision_tokens_drop_shared_openings_and_stems_stop_where_replies_part(tiny_llama_bridge):
    model = tiny_llama_bridge
    good, bad = lensteer.evaluate.decision.opening_ids(model, ["I", "Sorry"], ["Sure", "Here"])
    assert good == _ids(model, "I") and bad == _ids(model, "H")  # "S" opens both sides on this tokenizer
    with pytest.raises(lensteer.DataError, match="start with the same tokens"):
        lensteer.evaluate.decision.opening_ids(model, ["Sorry"], ["Sure"])
    aligned = [lensteer.ChatPrompt(user="capital?", response="It is Paris.")]
    stems, g, b = lensteer.evaluate.decision.first_difference(
        model, aligned, [lensteer.ChatPrompt(user="capital?", response="It is Lyon.")]
    )
    full = lensteer.core.chat.tokenize_prompt(model, aligned[0]).tokens
    k = stems[0].n_tokens
    assert torch.equal(stems[0].tokens, full[:k]) and g == [[int(full[k])]] and b == [_ids(model, "L")]
    with pytest.raises(lensteer.DataError, match="never differ"):
        lensteer.evaluate.decision.first_difference(model, aligned, aligned)


def test_the_paper_profile_scores_sites_on_at_least_48_validation_prompts():
    assert StudyConfig.paper().n_select >= 48 > StudyConfig.demo().n_select
    with pytest.raises(lensteer.ConfigError, match="n_select"):
        StudyConfig(n_select=0)
