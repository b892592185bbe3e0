"""Teacher-forced KL passes share a few-shot prefix the way decoding does, with the same numbers.

``teacher_forced_states`` runs a prefix every row shares once at batch 1 through the plain view;
each test computes the KLs twice, as is and with ``LENSTEER_DECODE=bridge`` (no plain view: the
whole batch through the bridge), and a spy proves the prefix path really ran.
"""

import pytest
import torch

import lensteer
import lensteer.steering.prefix as prefix_module
from lensteer.core import plain
from lensteer.core.chat import TokenizedPrompt, length_sorted_batches
from lensteer.steering import Gate, Steering, Window
from lensteer.steering.calibration import kl_probe, sequence_kls, sequence_scores, steering_kl

SYSTEM = "You are a terse assistant who answers every question in one short line, and never more."
USERS = ["hi", "a much longer question, to force some left padding here", "mid length one", "why?"]


def _unit(seed: int, d: int) -> torch.Tensor:
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


@pytest.fixture
def prefixes(monkeypatch):
    """The shared-prefix lengths the teacher-forced passes ran once (a spy on prefill_shared_prefix)."""
    seen: list[int] = []
    real = prefix_module.prefill_shared_prefix
    monkeypatch.setattr(
        prefix_module, "prefill_shared_prefix", lambda *a: seen.append(a[3].length) or real(*a)
    )
    return seen


def _on_the_bridge(monkeypatch, fn):
    with monkeypatch.context() as m:
        m.setenv("LENSTEER_DECODE", "bridge")
        return fn()


@pytest.mark.parametrize("positions", ["all", Window(1, None), "generated"])
def test_kls_with_a_shared_prefix_equal_the_bridge_s(tiny_llama_bridge, monkeypatch, prefixes, positions):
    model = tiny_llama_bridge
    d = model.cfg.d_model
    prompts = [lensteer.ChatPrompt(user=u, system=SYSTEM) for u in USERS]
    gens = lensteer.generate(model, prompts, max_new_tokens=5)
    with torch.inference_mode():
        proj = lensteer.collect_activations(model, prompts, layers=[1], position="last")[:, 0] @ _unit(2, d)
    gate = Gate(unit=_unit(2, d), layer=1, threshold=float(proj.median()))  # open for some rows only
    assert 0 < int((proj > gate.threshold).sum()) < len(prompts)
    steerings = [
        Steering(unit=_unit(1, d), layers=(1,), mode="swfc", scale=2.0, positions=positions),
        Steering(unit=_unit(3, d), layers=(0,), mode="add", scale=3.0, positions=positions),
        Steering(unit=_unit(4, d), layers=(1,), mode="add", scale=3.0, positions=positions, gate=gate),
    ]

    def kls():
        probe = kl_probe(model, prompts, continuation_tokens=5)
        return (
            [steering_kl(model, s, probe) for s in steerings[:2]],
            sequence_kls(model, steerings, gens.prompt_tokens, gens.tokens, batch_size=4),
        )

    groups: list[int] = []  # how many groups of rows ran the prefix, per prefill
    spied = prefix_module.prefill_shared_prefix
    monkeypatch.setattr(
        prefix_module,
        "prefill_shared_prefix",
        lambda *a: groups.append(len(a[3].representatives)) or spied(*a),
    )
    fast = kls()
    shared = list(prefixes)
    reference = _on_the_bridge(monkeypatch, kls)
    assert len(prefixes) == len(shared)  # the bridge path never shares the prefix
    assert shared and min(shared) >= 16  # the system prompt ran once per pass
    # the gated steering opens for some rows only: its pass ran the prefix once per group (open, shut),
    # unless its positions leave the prefix alone
    assert set(groups) == ({1} if positions == "generated" else {1, 2})
    for got, want in zip(fast, reference, strict=True):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert all(k > 1e-4 for k in fast[0])  # real edits, not a vacuous 0 == 0


def test_sequence_scores_give_each_prompt_s_kl_and_the_mean_is_weighted_by_positions(tiny_llama_bridge):
    model = tiny_llama_bridge
    d = model.cfg.d_model
    prompts = [lensteer.ChatPrompt(user=u, system=SYSTEM) for u in USERS]
    gens = lensteer.generate(model, prompts, max_new_tokens=5)
    continuations = list(gens.tokens)
    continuations[1] = continuations[1][:0]  # an empty continuation: no KL, NaN
    continuations[2] = continuations[2][:2]
    steerings = [
        Steering(unit=_unit(1, d), layers=(1,), mode="swfc", scale=2.0),
        Steering(unit=_unit(3, d), layers=(0,), mode="add", scale=3.0),
    ]
    scores = sequence_scores(model, steerings, gens.prompt_tokens, continuations, batch_size=4)
    assert scores.positions.tolist() == [len(c) for c in continuations]
    kept = scores.positions > 0
    for k, s in enumerate(steerings):
        by = scores.kl_by_prompt[k]
        assert bool(torch.isnan(by[1])) and bool((by[kept] > 1e-4).all())
        weighted = float((by[kept] * scores.positions[kept]).sum() / scores.positions.sum())
        assert weighted == pytest.approx(scores.kls[k], rel=1e-9)
        for i in (0, 2, 3):  # each prompt's KL is the one it has measured alone
            alone = sequence_kls(model, [s], [gens.prompt_tokens[i]], [continuations[i]])[0]
            assert float(by[i]) == pytest.approx(alone, rel=1e-4, abs=1e-7)


def test_prompts_without_a_shared_prefix_take_the_bridge_path_with_the_same_numbers(
    tiny_llama_bridge, monkeypatch, prefixes
):
    model = tiny_llama_bridge
    probe = kl_probe(model, USERS, continuation_tokens=4, chat=False)  # raw text: no shared template
    s = Steering(unit=_unit(1, model.cfg.d_model), layers=(1,), mode="add", scale=2.0)
    fast = steering_kl(model, s, probe)
    assert prefixes == []
    assert fast == pytest.approx(_on_the_bridge(monkeypatch, lambda: steering_kl(model, s, probe)), rel=1e-5)
    assert plain.plain_view(model) is not None


def test_steering_kl_needs_a_steering(tiny_llama_bridge):
    probe = kl_probe(tiny_llama_bridge, USERS[:2], continuation_tokens=2)
    with pytest.raises(lensteer.ConfigError, match="non-empty list"):
        steering_kl(tiny_llama_bridge, [], probe)


def _prompt(n: int) -> TokenizedPrompt:
    return TokenizedPrompt(
        tokens=torch.arange(1, n + 1), instruction=(0, 0), post_instruction=(0, 0), response=(0, 0)
    )


def test_batches_never_pad_a_short_prompt_to_a_long_context():
    lengths = [30, 290, 45, 300, 12, 60, 280, 95]
    batches = length_sorted_batches([_prompt(n) for n in lengths], 48, pad_id=0)
    rows = sorted(r for rs, _ in batches for r in rs)
    assert rows == list(range(len(lengths)))
    for rs, batch in batches:
        shortest = min(lengths[r] for r in rs)
        assert batch.tokens.shape[1] <= 2 * shortest + 32  # at most 2x + slack its shortest row
    assert [sorted(lengths[r] for r in rs) for rs, _ in batches] == [[12, 30, 45], [60, 95], [280, 290, 300]]
    assert [len(rs) for rs, _ in length_sorted_batches([_prompt(10)] * 5, 2, pad_id=0)] == [2, 2, 1]


def test_decision_log_odds_with_a_shared_context_equal_the_bridge_s(tiny_llama_bridge, monkeypatch, prefixes):
    from lensteer.evaluate import decision_log_odds

    model = tiny_llama_bridge
    questions = [
        "capital of france?",
        "two plus two, written out in words?",
        "colour of the sky",
        "largest ocean",
    ]
    aligned = [
        lensteer.ChatPrompt(user=q, system=SYSTEM, response="The answer is Paris, of course.")
        for q in questions
    ]
    misaligned = [
        lensteer.ChatPrompt(user=q, system=SYSTEM, response="The answer is Rome, of course.")
        for q in questions
    ]
    s = Steering(unit=_unit(5, model.cfg.d_model), layers=(1,), mode="add", scale=4.0, positions="generated")

    def odds():
        return torch.stack(
            [
                decision_log_odds(model, aligned, misaligned, batch_size=3),
                decision_log_odds(model, aligned, misaligned, steering=s, batch_size=3),
            ]
        )

    fast = odds()
    assert len(prefixes) >= 2 and min(prefixes) >= 16
    reference = _on_the_bridge(monkeypatch, odds)
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(fast[0], fast[1], atol=1e-3)  # the steering moved the log-odds
