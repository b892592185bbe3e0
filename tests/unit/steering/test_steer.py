"""The steering engine: position masks, the maths of every mode, hooks, errors, and steered generation."""

import pytest
import torch
from jaxtyping import TypeCheckError

import lensteer
from lensteer.steering.hooks import steer_resid
from lensteer.steering.positions import LastK, Window, position_mask
from lensteer.steering.spec import Steering

D = 32


def _unit(seed: int = 0, d: int = D) -> torch.Tensor:
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def _mask(positions, prompt_lens=(3, 5), width=5, offset=0, seq_len=None):
    lens = torch.tensor(prompt_lens)
    return (
        position_mask(
            positions,
            prompt_lens=lens,
            pads=width - lens,
            offset=offset,
            seq_len=seq_len if seq_len is not None else width,
        )
        .int()
        .tolist()
    )


# -- positions ----------------------------------------------------------------------------------------


def test_named_positions_respect_left_padding():
    assert _mask("all") == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert _mask("prompt") == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    # "generated" = the positions that choose generated tokens: the last prompt token picks the first one
    assert _mask("generated") == [[0, 0, 0, 0, 1], [0, 0, 0, 0, 1]]


def test_positions_are_tracked_across_kv_cache_steps():
    # Third generated token of a width-5 batch: one column at offset 7.
    assert _mask("generated", offset=7, seq_len=1) == [[1], [1]]
    assert _mask("prompt", offset=7, seq_len=1) == [[0], [0]]
    assert _mask(Window(-1, None), offset=5, seq_len=1) == [[1], [1]]
    # A full uncached recompute of prompt + 2 generated tokens.
    assert _mask("generated", seq_len=7) == [[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1]]
    assert _mask("generated", seq_len=7) == _mask(Window(-1, None), seq_len=7)


def test_last_k_window_and_explicit_indices():
    assert _mask(LastK(2)) == [[0, 0, 0, 1, 1], [0, 0, 0, 1, 1]]
    assert _mask(Window(1, 3)) == [[0, 0, 0, 1, 1], [0, 1, 1, 0, 0]]
    assert _mask(Window(-1, None), seq_len=6) == [[0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1]]
    assert _mask((0, -1)) == [[0, 0, 1, 0, 1], [1, 0, 0, 0, 1]]


def test_explicit_position_beyond_the_prompt_is_a_clear_error():
    with pytest.raises(lensteer.HookSiteError, match=r"position indices \[4\].*3 tokens"):
        _mask((4,))


@pytest.mark.parametrize("bad", ["everywhere", (), (1.5,), [True]])
def test_bad_position_specs_are_rejected(bad):
    with pytest.raises(lensteer.ConfigError, match="positions"):
        Steering(unit=_unit(), layers=(0,), positions=bad)


# -- maths -------------------------------------------------------------------------------------------


def _resid(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 4, D, generator=torch.Generator().manual_seed(seed)) * 3


def test_add_and_ablate_and_ace():
    v, h = _unit(), _resid()
    everywhere = torch.ones(2, 4, dtype=torch.bool)
    add = steer_resid(h, Steering(unit=v, layers=(0,), mode="add", scale=2.5), everywhere)
    torch.testing.assert_close(add.resid, h + 2.5 * v)
    torch.testing.assert_close(add.shift, torch.full((2, 4), 2.5))
    abl = steer_resid(h, Steering(unit=v, layers=(0,), mode="ablate"), everywhere)
    torch.testing.assert_close(abl.resid @ v, torch.zeros(2, 4), atol=1e-5, rtol=0)
    ace = steer_resid(h, Steering(unit=v, layers=(0,), mode="ace", scale=1.0, reference=-2.0), everywhere)
    torch.testing.assert_close(ace.resid @ v, torch.full((2, 4), -1.0), atol=1e-5, rtol=0)
    # ACE leaves the orthogonal complement alone.
    torch.testing.assert_close(
        ace.resid - (ace.resid @ v)[..., None] * v, h - (h @ v)[..., None] * v, atol=1e-5, rtol=0
    )


def test_relative_scale_uses_the_reference_norm():
    v, h = _unit(), _resid()
    s = Steering(unit=v, layers=(0,), mode="add", scale=0.5, relative=True, reference_norm=8.0)
    assert s.coefficient == 4.0
    out = steer_resid(h, s, torch.ones(2, 4, dtype=torch.bool))
    torch.testing.assert_close(out.resid, h + 4.0 * v)


def test_angular_rotates_toward_v_and_keeps_the_norm():
    v, h = _unit(), _resid()
    out = steer_resid(
        h, Steering(unit=v, layers=(0,), mode="angular", scale=30.0), torch.ones(2, 4, dtype=torch.bool)
    )
    torch.testing.assert_close(out.resid.norm(dim=-1), h.norm(dim=-1))
    before = torch.rad2deg(torch.arccos((h @ v) / h.norm(dim=-1)))
    after = torch.rad2deg(torch.arccos(((out.resid @ v) / out.resid.norm(dim=-1)).clamp(-1, 1)))
    torch.testing.assert_close(after, (before - 30).clamp(min=0), atol=1e-3, rtol=0)


def test_sttp_and_stmp_touch_only_tokens_below_the_threshold():
    v, h = _unit(), _resid()
    s = h @ v
    tau = float(s.median())
    everywhere = torch.ones(2, 4, dtype=torch.bool)
    sttp = steer_resid(h, Steering(unit=v, layers=(0,), mode="sttp", threshold=tau, target=5.0), everywhere)
    below = s < tau
    assert torch.equal(sttp.fired, below) and 0 < int(below.sum()) < 8
    torch.testing.assert_close(
        (sttp.resid @ v)[below], torch.full((int(below.sum()),), 5.0), atol=1e-5, rtol=0
    )
    assert torch.equal(sttp.resid[~below], h[~below])  # bit-identical, not just close
    stmp = steer_resid(h, Steering(unit=v, layers=(0,), mode="stmp", threshold=tau), everywhere)
    torch.testing.assert_close((stmp.resid @ v)[below], 2 * tau - s[below], atol=1e-5, rtol=0)
    assert torch.equal(stmp.resid[~below], h[~below])


def test_preserve_norm_and_mask():
    v, h = _unit(), _resid()
    mask = torch.tensor([[True, False, True, False], [False, False, False, True]])
    out = steer_resid(h, Steering(unit=v, layers=(0,), scale=10.0, preserve_norm=True), mask)
    torch.testing.assert_close(out.resid.norm(dim=-1), h.norm(dim=-1))
    assert torch.equal(out.resid[~mask], h[~mask]) and torch.equal(out.fired, mask)


def test_from_probe_thresholds_come_from_the_probe():
    gen = torch.Generator().manual_seed(0)
    v = _unit()
    pos = torch.randn(40, D, generator=gen) + 3 * v
    neg = torch.randn(40, D, generator=gen) - 3 * v
    probe = lensteer.fit_probe(pos, neg, layer=2)
    s = Steering.from_probe(probe, pos, mode="sttp")
    assert s.threshold == pytest.approx(probe.boundary)
    assert s.target == pytest.approx(float((pos @ probe.unit).mean()), rel=1e-5)
    q = Steering.from_probe(probe, pos, mode="stmp", threshold=0.1)
    assert q.threshold == pytest.approx(float(torch.quantile(pos @ probe.unit, 0.1)), rel=1e-5)
    assert q.layers == (2,) and q.info["threshold_rule"] == "aligned_quantile_0.1"
    with pytest.raises(lensteer.ConfigError, match="threshold"):
        Steering.from_probe(probe, pos, threshold=1.5)


# -- validation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scale": float("nan")}, "finite"),
        ({"mode": "sttp", "threshold": 0.0, "target": 1.0, "scale": -1.0}, "negative"),
        ({"mode": "sttp"}, "needs a probe threshold"),
        ({"mode": "stmp", "threshold": float("nan")}, "needs a probe threshold"),
        ({"mode": "ace"}, "reference"),
        ({"mode": "angular", "scale": 200.0}, "degrees"),
        ({"mode": "flip"}, "mode 'flip'"),
        ({"relative": True}, "reference_norm"),
        ({"site": "resid_middle"}, "resid_middle"),
    ],
)
def test_bad_specs_are_clear_errors(kwargs, match):
    with pytest.raises(lensteer.LensteerError, match=match):
        Steering(unit=_unit(), layers=(0,), **kwargs)


def test_zero_vector_is_rejected():
    with pytest.raises(lensteer.ConfigError, match="non-zero"):
        Steering(unit=torch.zeros(D), layers=(0,))


# -- hooks on a model ---------------------------------------------------------------------------------

TOKENS = torch.tensor([[1, 5, 9, 13, 2, 7], [1, 3, 3, 8, 11, 4]])


def test_steer_equals_a_hand_written_transformerlens_hook(tiny_bridge):
    v = _unit(3)
    with torch.inference_mode():
        want = tiny_bridge.run_with_hooks(
            TOKENS, fwd_hooks=[("blocks.1.hook_resid_post", lambda x, hook: x + 4.0 * v)]
        )
        with lensteer.steer(tiny_bridge, Steering(unit=v, layers=(1,), scale=4.0)) as ctx:
            got = tiny_bridge(TOKENS)
        clean = tiny_bridge(TOKENS)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, clean)
    assert ctx.fired_share() == 1.0


def test_steerings_compose_and_strength_zero_is_exactly_unsteered(tiny_bridge):
    v, w = _unit(3), _unit(4)
    with torch.inference_mode():
        clean = tiny_bridge(TOKENS)
        with lensteer.steer(tiny_bridge, Steering(unit=v, layers=(0, 2), scale=0.0)):
            zero = tiny_bridge(TOKENS)
        want = tiny_bridge.run_with_hooks(
            TOKENS,
            fwd_hooks=[
                ("blocks.1.hook_resid_post", lambda x, hook: x + 2.0 * v),
                ("blocks.1.hook_resid_post", lambda x, hook: x - (x @ w)[..., None] * w),
            ],
        )
        with lensteer.steer(
            tiny_bridge,
            Steering(unit=v, layers=(1,), scale=2.0),
            Steering(unit=w, layers=(1,), mode="ablate"),
        ):
            got = tiny_bridge(TOKENS)
    assert torch.equal(zero, clean)
    torch.testing.assert_close(got, want)


def test_hooks_come_off_after_an_error_in_the_body(tiny_bridge):
    with (
        pytest.raises(RuntimeError, match="boom"),
        lensteer.steer(tiny_bridge, Steering(unit=_unit(), layers=(1,))),
    ):
        raise RuntimeError("boom")
    # the autouse fixture also checks that no hook is left


@pytest.mark.parametrize(
    ("steering", "error", "match"),
    [
        (Steering(unit=_unit(d=D + 1), layers=(0,)), lensteer.ArtifactMismatchError, "width 33"),
        (Steering(unit=_unit(), layers=(7,)), lensteer.HookSiteError, "layer 7 is out of range"),
    ],
)
def test_steerings_that_do_not_fit_the_model_fail_before_hooking(tiny_bridge, steering, error, match):
    good = Steering(unit=_unit(), layers=(0,))
    with pytest.raises(error, match=match), lensteer.steer(tiny_bridge, good, steering):
        pass


# -- steered generation (tiny Llama through the bridge's HF path, so the KV cache is the real one) ----

GEN_PROMPTS = ["hello there", "a much longer prompt, to force padding", "hi"]


def _gen(model, **kwargs):
    kwargs.setdefault("max_new_tokens", 8)
    return lensteer.generate(model, GEN_PROMPTS, **kwargs)


def test_steered_generation_parity_batched_single_cached_uncached(tiny_llama_bridge):
    s = Steering(unit=_unit(5), layers=(0,), mode="swfc", scale=3.0, positions=Window(-1, None))
    batched = _gen(tiny_llama_bridge, steering=s, batch_size=3)
    uncached = _gen(tiny_llama_bridge, steering=s, batch_size=3, use_kv_cache=False)
    single = [lensteer.generate(tiny_llama_bridge, [p], steering=s, max_new_tokens=8) for p in GEN_PROMPTS]
    plain = _gen(tiny_llama_bridge)
    assert any(not torch.equal(a, b) for a, b in zip(batched.tokens, plain.tokens, strict=True))  # it steers
    for i in range(len(GEN_PROMPTS)):
        assert torch.equal(batched.tokens[i], single[i].tokens[0])
        assert torch.equal(batched.tokens[i], uncached.tokens[i])
        assert torch.equal(batched.fired[i], uncached.fired[i])
        torch.testing.assert_close(batched.shift[i], single[i].shift[0])
    assert batched.steered_share() == 1.0
    assert batched.prompt_fired_share[0] == pytest.approx(1 / len(batched.prompt_tokens[0]))


def test_steering_that_never_fires_is_exactly_unsteered(tiny_llama_bridge):
    plain = _gen(tiny_llama_bridge)
    zero = _gen(tiny_llama_bridge, steering=Steering(unit=_unit(5), layers=(0, 1), mode="swfc", scale=0.0))
    never = _gen(
        tiny_llama_bridge,
        steering=Steering(
            unit=_unit(5), layers=(1,), mode="sttp", threshold=-1e9, target=0.0, positions="all"
        ),
    )
    for got in (zero, never):
        assert all(torch.equal(a, b) for a, b in zip(got.tokens, plain.tokens, strict=True))
        assert got.steered_share() == 0.0


def test_selective_steering_reports_the_share_of_tokens_it_steered(tiny_llama_bridge):
    v = _unit(6)
    with torch.inference_mode():
        acts = lensteer.collect_activations(tiny_llama_bridge, GEN_PROMPTS, layers=[1], position="last")[:, 0]
    tau = float((acts @ v).median())
    out = _gen(
        tiny_llama_bridge, steering=Steering(unit=v, layers=(1,), mode="stmp", threshold=tau, positions="all")
    )
    shares = out.per_prompt_share()
    # the threshold splits the generated tokens: StMP steers some of a prompt's tokens and leaves the rest
    assert any(0.0 < x < 1.0 for x in shares) and all(x > 0.0 for x in shares)
    for fired, shift in zip(out.fired, out.shift, strict=True):
        assert torch.equal(fired, shift > 0)


def test_seeded_sampling_is_reproducible_and_batch_invariant(tiny_llama_bridge):
    a = _gen(tiny_llama_bridge, do_sample=True, seed=3, batch_size=3, temperature=1.5)
    b = _gen(tiny_llama_bridge, do_sample=True, seed=3, batch_size=1, temperature=1.5)
    c = _gen(tiny_llama_bridge, do_sample=True, seed=4, batch_size=3, temperature=1.5)
    assert all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens, strict=True))
    assert any(not torch.equal(x, y) for x, y in zip(a.tokens, c.tokens, strict=True))
    with pytest.raises(lensteer.ConfigError, match="temperature"):
        _gen(tiny_llama_bridge, do_sample=True, temperature=0.0)


def test_gate_steers_only_the_prompts_in_scope(tiny_llama_bridge):
    v = _unit(7)
    with torch.inference_mode():
        acts = lensteer.collect_activations(tiny_llama_bridge, GEN_PROMPTS, layers=[1], position="last")[:, 0]
    proj = acts @ v
    cut = float(proj.sort().values[1:].mean()) if proj.unique().numel() > 1 else float(proj[0])
    gate = lensteer.Gate(unit=v, layer=1, threshold=cut)
    s = Steering(unit=v, layers=(0,), scale=3.0, gate=gate)
    out = _gen(tiny_llama_bridge, steering=s)
    assert list(out.gated) == (proj > cut).tolist()
    for gated, fired in zip(out.gated, out.fired, strict=True):
        assert bool(fired.all()) if gated else not bool(fired.any())


def test_multi_turn_conversations_carry_the_history(tiny_llama_bridge):
    convs = [["hi", "and then?", "ok"], ["tell me", "more", "bye"]]
    turns = lensteer.steering.generate_conversations(tiny_llama_bridge, convs, max_new_tokens=4)
    assert len(turns) == 3 and all(len(t) == 2 for t in turns)
    # turn 3's prompt contains both earlier user turns and the model's answers
    assert len(turns[2].prompt_tokens[0]) > len(turns[1].prompt_tokens[0]) > len(turns[0].prompt_tokens[0])
    with pytest.raises(lensteer.DataError, match="different numbers of turns"):
        lensteer.steering.generate_conversations(tiny_llama_bridge, [["a"], ["b", "c"]])


def test_from_contrast_puts_the_boundary_between_the_classes():
    gen = torch.Generator().manual_seed(1)
    v = _unit(8)
    aligned = torch.randn(50, D, generator=gen) + 4 * v
    misaligned = torch.randn(50, D, generator=gen) - 2 * v
    d = lensteer.diff_of_means(aligned, misaligned, layer=3)
    s = Steering.from_contrast(d, aligned, misaligned, mode="stmp")
    pa, pm = aligned @ d.unit, misaligned @ d.unit
    assert float(pm.mean()) < s.threshold < float(pa.mean())
    assert s.target == pytest.approx(float(pa.mean()), rel=1e-5)
    assert s.layers == (3,) and s.info["threshold_rule"] == "boundary_1d"
    # roughly balanced errors either side of the boundary (equal-variance classes)
    assert abs(float((pa < s.threshold).float().mean()) - float((pm > s.threshold).float().mean())) < 0.1
    with pytest.raises(lensteer.ConfigError, match="project higher"):
        Steering.from_contrast(d, misaligned, aligned)


def test_side_by_side_pairs_unsteered_and_steered_answers(tiny_llama_bridge):
    zero = Steering(unit=_unit(5), layers=(0,), scale=0.0)
    sbs = lensteer.side_by_side(tiny_llama_bridge, ["hello", "bye now"], zero, max_new_tokens=4)
    assert sbs.unsteered == sbs.steered and sbs.steered_share == (0.0, 0.0)
    assert "| prompt | unsteered | steered |" in sbs.to_markdown() and "PROMPT: hello" in str(sbs)
    strong = Steering(unit=_unit(5), layers=(0,), scale=50.0)
    moved = lensteer.side_by_side(tiny_llama_bridge, ["hello", "bye now"], strong, max_new_tokens=4)
    assert moved.steered != moved.unsteered and moved.steered_share == (1.0, 1.0)


SYSTEM = "You are a terse assistant who answers in one short line."


def _assert_rows_decode_as_alone(model, prompts, steerings, batched, uncached, max_new_tokens):
    """Each row of a batched decoding (``batched``, and ``uncached`` without the KV cache) is what its
    prompt gives decoded alone under its steering: tokens, where steering fired, shift, prompt share."""
    for i, (p, s) in enumerate(zip(prompts, steerings, strict=True)):
        alone = lensteer.generate(model, [p], steering=s, max_new_tokens=max_new_tokens)
        assert torch.equal(batched.tokens[i], alone.tokens[0]) and torch.equal(
            batched.tokens[i], uncached.tokens[i]
        )
        assert torch.equal(batched.fired[i], alone.fired[0])
        torch.testing.assert_close(batched.shift[i], alone.shift[0])
        assert batched.prompt_fired_share[i] == pytest.approx(alone.prompt_fired_share[0])


@pytest.mark.parametrize(
    "positions", ["all", "prompt", "generated", Window(-1, None), LastK(3), (2, -1), Window(5, 30)]
)
def test_a_shared_prefix_is_computed_once_and_changes_nothing(tiny_llama_bridge, monkeypatch, positions):
    import lensteer.steering.generation as generation
    import lensteer.steering.prefix as prefix

    calls = []
    real = generation.prefill_shared_prefix
    monkeypatch.setattr(generation, "prefill_shared_prefix", lambda *a: calls.append(a[3].length) or real(*a))
    prompts = [
        lensteer.ChatPrompt(user=u, system=SYSTEM) for u in ("hi", "what now, friend?", "tell me more")
    ]
    s = Steering(unit=_unit(8), layers=(0, 1), mode="swfc", scale=3.0, positions=positions)
    shared = lensteer.generate(tiny_llama_bridge, prompts, steering=s, max_new_tokens=6, batch_size=3)
    assert calls and calls[0] >= prefix.MIN_SHARED_PREFIX  # the system prompt was run once for the batch
    uncached = lensteer.generate(tiny_llama_bridge, prompts, steering=s, max_new_tokens=6, use_kv_cache=False)
    _assert_rows_decode_as_alone(tiny_llama_bridge, prompts, [s] * len(prompts), shared, uncached, 6)


def test_rows_that_steer_a_shared_prefix_differently_share_it_by_group(tiny_llama_bridge, monkeypatch):
    """A gate that opens for some rows, or several conditions in one batch, steer the shared prefix
    differently in different rows: the prefix runs once per group of rows that steer it alike, and every
    row decodes as it would alone and without the cache."""
    import lensteer.steering.generation as generation

    calls = []
    real = generation.prefill_shared_prefix
    monkeypatch.setattr(generation, "prefill_shared_prefix", lambda *a: calls.append(a[3]) or real(*a))
    users = ("hi", "what now, friend?", "tell me more", "and then?", "why so?", "ok")
    prompts = [lensteer.ChatPrompt(user=u, system=SYSTEM) for u in users]
    v = _unit(9)
    with torch.inference_mode():
        proj = lensteer.collect_activations(tiny_llama_bridge, prompts, layers=[1], position="last")[:, 0] @ v
    middle = proj.sort().values[2:4].mean()  # between two rows' projections: no row sits on the threshold
    gate = lensteer.Gate(unit=v, layer=1, threshold=float(middle))  # opens for half the rows
    gated = Steering(unit=v, layers=(0,), scale=3.0, gate=gate)
    out = lensteer.generate(tiny_llama_bridge, prompts, steering=gated, max_new_tokens=5, batch_size=6)
    assert 0 < sum(out.gated) < len(prompts)
    assert len(calls) == 1 and calls[0].length >= 16 and len(calls[0].representatives) == 2  # open, shut
    for i, p in enumerate(prompts):
        alone = lensteer.generate(tiny_llama_bridge, [p], steering=gated, max_new_tokens=5)
        assert torch.equal(out.tokens[i], alone.tokens[0]) and torch.equal(out.fired[i], alone.fired[0])

    calls.clear()
    swfc = Steering(unit=_unit(8), layers=(0, 1), mode="swfc", scale=3.0)
    conditions = [None, swfc, gated] * 2  # three conditions, each on two prompts, in one batch
    mixed = lensteer.generate(
        tiny_llama_bridge, prompts, prompt_steerings=conditions, max_new_tokens=5, batch_size=6
    )
    # one group unsteered (with the gated rows whose gate stays shut), one SwFC, one gated and open
    assert len(calls) == 1 and len(calls[0].representatives) == 2 + any(out.gated[i] for i in (2, 5))
    uncached = lensteer.generate(
        tiny_llama_bridge, prompts, prompt_steerings=conditions, max_new_tokens=5, use_kv_cache=False
    )
    _assert_rows_decode_as_alone(tiny_llama_bridge, prompts, conditions, mixed, uncached, 5)


@pytest.mark.parametrize(
    "system", [None, SYSTEM]
)  # SYSTEM: the rows share a prefix their steerings leave alone
def test_per_prompt_steerings_decode_together_as_if_run_apart(tiny_llama_bridge, system):
    users = [
        "hi",
        "what now, friend?",
        "tell me more",
        "a much longer prompt, to force padding",
        "ok",
        "why?",
    ]
    prompts = [lensteer.ChatPrompt(user=u, system=system) for u in users]
    v = _unit(10)
    with torch.inference_mode():
        proj = lensteer.collect_activations(tiny_llama_bridge, prompts, layers=[1], position="last")[:, 0] @ v
    gated = Steering(
        unit=v,
        layers=(0,),
        scale=3.0,
        positions=Window(-1, None),
        gate=lensteer.Gate(unit=v, layer=1, threshold=float(proj[[2, 3]].mean())),
    )
    swfc = Steering(unit=_unit(11), layers=(1,), mode="swfc", scale=4.0, positions=Window(-1, None))
    stmp = Steering(unit=v, layers=(1,), mode="stmp", threshold=float(proj.median()), positions="generated")
    conditions = [None, swfc, gated, gated, stmp, swfc]
    together = lensteer.generate(tiny_llama_bridge, prompts, prompt_steerings=conditions, max_new_tokens=6)
    for i, (p, s) in enumerate(zip(prompts, conditions, strict=True)):
        apart = lensteer.generate(tiny_llama_bridge, [p], steering=s, max_new_tokens=6)
        assert torch.equal(together.tokens[i], apart.tokens[0]), i
        assert (
            torch.equal(together.fired[i], apart.fired[0])
            if s is not None
            else not bool(together.fired[i].any())
        )
        assert together.gated[i] == apart.gated[0]
    assert together.gated[2] != together.gated[3]  # the gate decided per row, for its own rows only
    assert any(
        not torch.equal(together.tokens[1], t)
        for t in lensteer.generate(tiny_llama_bridge, [prompts[1]], max_new_tokens=6).tokens
    )  # and the steerings do steer


def test_per_prompt_steerings_are_checked(tiny_llama_bridge):
    s = Steering(unit=_unit(5), layers=(0,), scale=1.0)
    with pytest.raises(lensteer.ConfigError, match=r"one Steering or None per prompt \(3\), got 2 entries"):
        _gen(tiny_llama_bridge, prompt_steerings=[s, None])
    with pytest.raises(lensteer.ConfigError, match="not both"):
        _gen(tiny_llama_bridge, steering=s, prompt_steerings=[s, None, None])
    # Under pytest the jaxtyping/beartype hook may reject the list first (it samples one element), so
    # either error may come; both name the parameter. Outside tests the ConfigError below does.
    with pytest.raises((lensteer.ConfigError, TypeCheckError), match=r"prompt_steerings"):
        _gen(tiny_llama_bridge, prompt_steerings=[s, "swfc", None])
    # (the autouse fixture checks that no hook is left)
