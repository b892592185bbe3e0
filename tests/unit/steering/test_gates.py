"""Prompt gates: composition (AllOf / AnyOf), gate_rows, steering-file records, and the FPR-controlled search."""

import itertools
import json
import math

import pytest
import torch
from builders import random_unit

import lensteer
from lensteer.core.activations import collect_activations
from lensteer.core.stats import auroc
from lensteer.errors import ArtifactMismatchError, ConfigError, DataError, HookSiteError
from lensteer.steering import gates as gates_module
from lensteer.steering.files import load_steering, load_steerings, save_steering, save_steerings
from lensteer.steering.gate_search import (
    GateSearch,
    roc_curve,
    search_gate,
    search_gate_from_activations,
    threshold_at_fpr,
)
from lensteer.steering.gates import (
    AllOf,
    AnyOf,
    Gate,
    all_of,
    any_of,
    gate_from_record,
    gate_rows,
    gate_to_record,
)
from lensteer.steering.spec import Steering

D = 32
PROMPTS = [
    "How do I make bread?",
    "zz",
    "Tell me a joke about cats.",
    "qqqq qqqq",
    "Why is the sky blue?",
    "abc",
    "Write a poem!",
    "xyz xyz xyz xyz",
]


def _leaf(seed: int, threshold: float = 0.0, **kwargs) -> Gate:
    return Gate(unit=random_unit(D, seed), layer=kwargs.pop("layer", 1), threshold=threshold, **kwargs)


# -- composition -------------------------------------------------------------------------------------


def test_composites_follow_their_truth_tables_nested():
    a, b, c = _leaf(1), _leaf(2, when="below"), _leaf(3, threshold=0.5)
    rows = list(itertools.product([False, True], repeat=3))
    # a opens above 0, b below 0, c above 0.5: pick projections that make each leaf open exactly as in the row
    proj = {
        a: torch.tensor([1.0 if x else -1.0 for x, _, _ in rows]),
        b: torch.tensor([-1.0 if y else 1.0 for _, y, _ in rows]),
        c: torch.tensor([0.75 if z else 0.5 for _, _, z in rows]),
    }  # 0.5 itself is not above 0.5
    cases = {
        all_of(a, b): [x and y for x, y, _ in rows],
        any_of(a, b): [x or y for x, y, _ in rows],
        all_of(a, any_of(b, c)): [x and (y or z) for x, y, z in rows],
        any_of(all_of(a, b), c): [(x and y) or z for x, y, z in rows],
        any_of(all_of(a, b, c)): [x and y and z for x, y, z in rows],
        all_of(a): [x for x, _, _ in rows],
    }
    for gate, expected in cases.items():
        assert gate.decide(proj).tolist() == expected


def test_leaves_are_distinct_and_depth_first():
    a, b, c = _leaf(1), _leaf(2), _leaf(3)
    assert all_of(a, any_of(b, a), c, any_of(all_of(c, b))).leaves() == (a, b, c)
    assert a.leaves() == (a,)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: AllOf(()), "AllOf has no gates: an empty composite"),
        (lambda: any_of(), "AnyOf has no gates: an empty composite"),
        (lambda: AllOf((_leaf(1), "harmful")), "AllOf members must be Gate, AllOf or AnyOf, got str"),
        (lambda: any_of(_leaf(1), any_of()), "AnyOf has no gates"),
        (lambda: AnyOf(_leaf(1)), r"AnyOf.gates must be a tuple of gates, got Gate; use any_of\(gate_a"),
    ],
)
def test_bad_composites_are_config_errors_naming_the_problem(build, match):
    with pytest.raises(ConfigError, match=match):
        build()


def test_steering_accepts_composites_and_refuses_other_gates():
    gate = all_of(_leaf(1), any_of(_leaf(2), _leaf(3, when="below")))
    assert Steering(unit=random_unit(D, 4), layers=(1,), gate=gate).gate is gate
    with pytest.raises(ConfigError, match="gate must be a Gate, AllOf or AnyOf .* got (str|tuple)"):
        Steering(unit=random_unit(D, 4), layers=(1,), gate=(_leaf(1),))
    narrow = Gate(unit=random_unit(8, 5), layer=0, threshold=0.0)
    with pytest.raises(ArtifactMismatchError, match=r"width \[8\] but the steering's is 32"):
        Steering(unit=random_unit(D, 4), layers=(1,), gate=any_of(_leaf(1), narrow))


# -- gate_rows on a tiny model -------------------------------------------------------------------------


def _median_leaf(model, seed, layer, site="resid_post", when="above"):
    """A gate that splits PROMPTS about in half at ``layer``/``site``."""
    unit = random_unit(int(model.cfg.d_model), seed)
    proj = collect_activations(model, PROMPTS, layers=[layer], site=site)[:, 0] @ unit
    return Gate(unit=unit, layer=layer, threshold=float(proj.median()), site=site, when=when)


def test_gate_rows_of_composites_is_the_logical_combination_of_single_gates(tiny_llama_bridge, monkeypatch):
    model = tiny_llama_bridge
    a, b = _median_leaf(model, 11, 0), _median_leaf(model, 12, 1, site="resid_mid", when="below")
    c = _median_leaf(model, 13, -1)  # layer -1 is layer 1: one read with a leaf at layer 1 resid_post
    d = _median_leaf(model, 14, 1)
    single = {g: gate_rows(model, [g], PROMPTS) for g in (a, b, c, d)}
    for rows in single.values():
        assert 0 < int(rows.sum()) < len(PROMPTS), "each leaf should split the prompts"

    calls = []
    real = gates_module.collect_activations
    monkeypatch.setattr(
        gates_module, "collect_activations", lambda *a_, **k: calls.append(k) or real(*a_, **k)
    )
    gate = all_of(any_of(a, b), any_of(c, d))
    got = gate_rows(model, [gate], PROMPTS)
    assert got.tolist() == ((single[a] | single[b]) & (single[c] | single[d])).tolist()
    # one prompt pass per (site, position); the resid_post read covers layers 0 and 1 once each
    assert sorted((k["site"], tuple(k["layers"])) for k in calls) == [
        ("resid_mid", (1,)),
        ("resid_post", (0, 1)),
    ]

    calls.clear()
    either = gate_rows(model, [any_of(a, all_of(b, c)), None, d], PROMPTS)
    assert either.tolist() == ((single[a] | (single[b] & single[c])) & single[d]).tolist()
    assert len(calls) == 2
    assert gate_rows(model, [None], PROMPTS).all()


# -- records and steering files ------------------------------------------------------------------------


def _same_gate(a, b) -> None:
    assert type(a) is type(b)
    if isinstance(a, Gate):
        torch.testing.assert_close(a.unit, b.unit, atol=1e-7, rtol=0)  # re-normalised on load
        for name in ("layer", "threshold", "site", "position", "when"):
            assert getattr(a, name) == getattr(b, name), name
    else:
        assert len(a.gates) == len(b.gates)
        for x, y in zip(a.gates, b.gates, strict=True):
            _same_gate(x, y)


def _composite():
    return all_of(
        _leaf(1, layer=0),
        any_of(
            _leaf(2, 0.25, site="resid_mid", when="below"),
            all_of(_leaf(3, -1.5, layer=-1, position="instruction_mean")),
        ),
    )


def test_composite_gates_round_trip_through_steering_files(tmp_path):
    steerings = {
        "composite": Steering(unit=random_unit(D, 6), layers=(1,), gate=_composite()),
        "single": Steering(unit=random_unit(D, 7), layers=(2,), gate=_leaf(8, 0.5)),
        "none": Steering(unit=random_unit(D, 9), layers=(2,)),
    }
    st_path, _ = save_steerings(steerings, tmp_path / "gates")
    back = load_steerings(tmp_path / "gates")
    _same_gate(back["composite"].gate, steerings["composite"].gate)
    _same_gate(back["single"].gate, steerings["single"].gate)
    assert back["none"].gate is None
    from safetensors.torch import load_file

    keys = set(load_file(str(st_path)))
    assert {
        "composite/gate_unit.0",
        "composite/gate_unit.1.0",
        "composite/gate_unit.1.1.0",
        "single/gate_unit",
    } <= keys
    assert not any(k.startswith("none/gate") for k in keys)


def test_record_round_trip_without_files():
    gate = _composite()
    record, tensors = gate_to_record(gate)
    json.dumps(record, allow_nan=False)
    assert record["kind"] == "all_of" and record["gates"][1]["kind"] == "any_of"
    _same_gate(gate_from_record(record, tensors.__getitem__), gate)


def test_old_single_gate_records_still_load(tmp_path):
    """Files written before composites: a gate record without "kind", its unit under ``<name>/gate_unit``."""
    gate = _leaf(5, -0.25, site="resid_mid", when="below")
    _, json_path = save_steering(Steering(unit=random_unit(D, 10), layers=(1,), gate=gate), tmp_path / "old")
    record = json.loads(json_path.read_text())
    old = {k: v for k, v in record["steerings"]["steering"]["gate"].items() if k != "kind"}
    assert set(old) == {"layer", "threshold", "site", "position", "when"}  # exactly the old format's keys
    record["steerings"]["steering"]["gate"] = old
    del record["record_sha256"]  # files of that format predate the record hash too
    json_path.write_text(json.dumps(record))
    _same_gate(load_steering(tmp_path / "old").gate, gate)


@pytest.mark.parametrize(
    ("gate_record", "match"),
    [
        ({"kind": "all_of", "gates": []}, "key 'steerings.steering.gate.gates' is empty"),
        ({"kind": "xor", "gates": []}, "key 'steerings.steering.gate.kind' = 'xor' is not allowed"),
        ({"kind": "any_of"}, "key 'steerings.steering.gate.gates' is missing"),
        (
            {
                "kind": "any_of",
                "gates": [
                    {
                        "kind": "gate",
                        "layer": 1,
                        "threshold": 0.0,
                        "site": "resid_post",
                        "position": "last",
                        "when": "above",
                    },
                    {"layer": 1},
                ],
            },
            r"key 'steerings.steering.gate.gates\[1\].threshold' is missing",
        ),
        (
            {"kind": "any_of", "gates": [{"kind": "gate", "layer": 1.5, "threshold": 0.0}]},
            r"key 'steerings.steering.gate.gates\[0\].layer' = 1.5 is not allowed; expected int",
        ),
        (
            {
                "kind": "any_of",
                "gates": [
                    {"layer": 1, "threshold": 0.0, "site": "resid_post", "position": "last", "when": "above"}
                ]
                * 2,
            },
            r"tensor 'steering/gate_unit.1' is missing",
        ),
    ],
)
def test_bad_gate_records_are_data_errors_naming_file_and_key(tmp_path, gate_record, match):
    steering = Steering(unit=random_unit(D, 10), layers=(1,), gate=any_of(_leaf(1)))
    _, json_path = save_steering(steering, tmp_path / "bad")
    record = json.loads(json_path.read_text())
    record["steerings"]["steering"]["gate"] = gate_record
    json_path.write_text(json.dumps(record))
    with pytest.raises(DataError, match=match) as err:
        load_steering(tmp_path / "bad")
    assert "bad." in str(err.value)


# -- threshold at a false-positive budget, ROC ----------------------------------------------------------

NEG = torch.arange(10.0)  # 0 .. 9
POS = torch.tensor([3.5, 8.5, 9.5])


@pytest.mark.parametrize(
    ("target", "threshold", "fpr", "tpr"),
    [
        (0.05, 9.25, 0.0, 1 / 3),  # k = 0 negatives above: the largest negative (9), midway to 9.5
        (0.1, 8.25, 0.1, 2 / 3),  # k = 1: the 2nd largest (8), midway to 8.5
        (0.19, 8.25, 0.1, 2 / 3),  # floor(1.9) = 1
        (0.25, 7.5, 0.2, 2 / 3),  # k = 2: the 3rd largest (7), midway to the next score 8
        (0.7, 2.5, 0.7, 1.0),  # k = 7 (0.7 x 10 rounds to 7.000000000000001): 2, midway to 3
    ],
)
def test_threshold_at_fpr_is_the_order_statistic_by_hand(target, threshold, fpr, tpr):
    assert threshold_at_fpr(NEG, POS, target) == pytest.approx((threshold, fpr, tpr), abs=1e-12)


def test_threshold_at_fpr_ties_and_no_higher_score():
    # three tied negatives at 1: any threshold below 1 lets 3/4 through, so FPR 0.5 is reachable only as 0
    assert threshold_at_fpr(torch.tensor([1.0, 1.0, 1.0, 0.0]), torch.tensor([2.0]), 0.5) == (1.5, 0.0, 1.0)
    # nothing above the boundary negative: the threshold is the negative itself (strictly-above rule)
    assert threshold_at_fpr(torch.tensor([5.0, 1.0]), torch.tensor([0.0]), 0.4) == (5.0, 0.0, 0.0)
    # 0.29 x 100 is 28.999999999999996 in floats; 29 negatives above is still within budget
    assert threshold_at_fpr(torch.arange(100.0), torch.tensor([1000.0]), 0.29) == (70.5, 0.29, 1.0)


def test_threshold_at_fpr_is_the_lowest_within_budget_on_random_scores():
    gen = torch.Generator().manual_seed(0)
    for trial in range(50):
        neg = torch.randn(int(torch.randint(1, 40, (1,), generator=gen)), generator=gen).round(decimals=1)
        pos = torch.randn(int(torch.randint(1, 40, (1,), generator=gen)), generator=gen).round(decimals=1) + 1
        target = float(torch.rand(1, generator=gen).clamp(0.01, 0.99))
        threshold, fpr, tpr = threshold_at_fpr(neg, pos, target)
        assert fpr == float((neg > threshold).double().mean()) <= target, trial
        assert tpr == float((pos > threshold).double().mean()), trial
        lower = neg[neg <= threshold].max()  # any threshold below this lets one more negative through
        assert float((neg > lower - 1e-6).double().mean()) > target, trial


def test_roc_curve_by_hand_and_its_area_is_the_auroc():
    fpr, tpr, thresholds = roc_curve(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0]))
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 1.0, 1.0]
    assert thresholds.tolist() == [2.0, 1.0, 0.0, -math.inf]
    assert float(torch.trapezoid(tpr, fpr)) == pytest.approx(0.875)  # (3 wins + 1 tie / 2) / 4 pairs
    gen = torch.Generator().manual_seed(1)
    neg, pos = torch.randn(30, generator=gen).round(), torch.randn(20, generator=gen).round() + 0.5
    fpr, tpr, _ = roc_curve(neg, pos)
    assert float(torch.trapezoid(tpr, fpr)) == pytest.approx(auroc(pos, neg), abs=1e-6)  # auroc: float32


@pytest.mark.parametrize("target", [0.0, 1.0, -0.1, 1.5])
def test_target_fpr_outside_zero_one_is_a_config_error(target):
    with pytest.raises(
        ConfigError, match=rf"target_fpr={target!r} is not allowed; .*strictly between 0 and 1"
    ):
        threshold_at_fpr(NEG, POS, target)


# -- the search ------------------------------------------------------------------------------------------


def _planted(n: int, seed: int, shift: float) -> torch.Tensor:
    """``[n, 2 layers, 8]``: column 0 is the same noise for both classes; column 1 moves by ``shift`` along e0."""
    gen = torch.Generator().manual_seed(seed)
    acts = torch.randn(n, 2, 8, generator=gen)
    acts[:, 1, 0] += shift
    return acts


def test_search_chooses_the_separable_layer_at_the_budget():
    pos_tr, neg_tr, pos_val, neg_val = (
        _planted(40, 1, 3.0),
        _planted(40, 2, 0.0),
        _planted(30, 3, 3.0),
        _planted(40, 4, 0.0),
    )
    result = search_gate_from_activations(pos_tr, neg_tr, pos_val, neg_val, layers=[3, 7], target_fpr=0.1)
    assert isinstance(result, GateSearch)
    assert result.layer == 7 and result.gate.layer == 7 and result.layers == (3, 7)
    assert float(result.gate.unit[0]) > 0.8  # the planted axis, positives above
    assert result.auroc[7] > 0.95 > 0.75 > result.auroc[3]
    assert result.val_fpr <= 0.1 and result.val_tpr > 0.8
    assert result.tpr_by_layer[7] > result.tpr_by_layer[3]
    # the threshold by hand: k = floor(0.1 x 40) = 4 negatives may lie above; the 5th largest negative
    # projection, midway to the next higher projection of either class
    neg, pos = neg_val[:, 1] @ result.gate.unit, pos_val[:, 1] @ result.gate.unit
    fifth = torch.sort(neg.double(), descending=True).values[4]
    both = torch.cat([neg, pos]).double()
    assert result.threshold == pytest.approx(float((fifth + both[both > fifth].min()) / 2), abs=1e-6)
    assert result.val_fpr == float((neg > result.threshold).double().mean())
    fpr, tpr = result.roc[7]
    assert fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0 and len(fpr) == len(tpr)
    assert (result.n_positive_val, result.n_negative_val) == (30, 40)
    summary = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert summary["layer"] == 7 and [r["layer"] for r in summary["layers"]] == [3, 7]
    # the summary keeps only the ROC's corners: fewer points, the same curve (same area, same ends)
    for row in summary["layers"]:
        assert len(row["roc_fpr"]) < len(result.roc[row["layer"]][0])
        area = float(
            torch.trapezoid(
                torch.tensor(row["roc_tpr"], dtype=torch.float64),
                torch.tensor(row["roc_fpr"], dtype=torch.float64),
            )
        )
        assert area == pytest.approx(result.auroc[row["layer"]], abs=1e-6)


def test_search_breaks_ties_by_the_earlier_layer():
    def same_both(n, seed, shift):
        acts = _planted(n, seed, shift)
        acts[:, 0] = acts[:, 1]
        return acts

    result = search_gate_from_activations(
        same_both(20, 1, 4.0),
        same_both(20, 2, 0.0),
        same_both(20, 3, 4.0),
        same_both(20, 4, 0.0),
        layers=[5, 2],
        target_fpr=0.2,
    )
    assert (
        result.tpr_by_layer[5] == result.tpr_by_layer[2] and result.fpr_by_layer[5] == result.fpr_by_layer[2]
    )
    assert result.layer == 2


def test_search_gate_end_to_end_on_a_tiny_model(tiny_llama_bridge, tmp_path):
    model = tiny_llama_bridge
    pos = [f"zzzz zz {w} zzz" for w in ("a", "b", "c", "d", "e", "f", "g", "h", "i", "j")]
    neg = [
        f"How do I bake {w} bread?"
        for w in ("rye", "corn", "soda", "flat", "milk", "seed", "wheat", "oat", "nut", "fig")
    ]
    result = search_gate(
        model,
        pos[:6],
        neg[:6],
        pos[6:],
        neg[6:],
        layers=[0, -1],
        target_fpr=0.3,
        batch_size=4,
        progress=False,
    )
    assert result.layers == (0, 1)
    assert result.val_fpr <= 0.3
    best = max(result.tpr_by_layer.values())
    assert result.val_tpr == best
    # deploying the gate reproduces the validation rates the search reported
    assert float(gate_rows(model, [result.gate], neg[6:]).double().mean()) == result.val_fpr
    assert float(gate_rows(model, [result.gate], pos[6:]).double().mean()) == result.val_tpr
    s = Steering(unit=random_unit(int(model.cfg.d_model), 1), layers=(1,), gate=any_of(result.gate))
    save_steering(s, tmp_path / "s")
    _same_gate(load_steering(tmp_path / "s").gate, s.gate)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"target_fpr": 0.0}, ConfigError, "target_fpr=0.0 is not allowed"),
        ({"negatives_val": []}, DataError, "negatives_val is empty; give a non-empty list of prompts"),
        ({"positives_train": "one prompt"}, DataError, "positives_train is a single string"),
        ({"layers": []}, HookSiteError, "layers is empty"),
        ({"layers": [0, 5]}, HookSiteError, r"layer 5 is out of range .*valid layers are 0..1"),
        (
            {"position": "post_instruction"},
            HookSiteError,
            "position 'post_instruction' is not allowed for a gate",
        ),
        ({"site": "resid_nowhere"}, HookSiteError, "unknown hook site 'resid_nowhere'"),
    ],
)
def test_search_gate_bad_input(tiny_llama_bridge, kwargs, error, match):
    args = {
        "positives_train": ["a"],
        "negatives_train": ["b"],
        "positives_val": ["c"],
        "negatives_val": ["d"],
        "layers": [0],
        **kwargs,
    }
    with pytest.raises(error, match=match):
        search_gate(tiny_llama_bridge, progress=False, **args)


def test_public_names_are_exported():
    for name in (
        "AllOf",
        "AnyOf",
        "GateLike",
        "GateSearch",
        "all_of",
        "any_of",
        "gate_rows",
        "search_gate",
        "threshold_at_fpr",
        "roc_curve",
        "search_gate_from_activations",
    ):
        assert hasattr(lensteer.steering, name), name
