import pytest
import torch
from builders import random_unit

import lensteer
from lensteer.errors import DataError


def _planted(n, d, shifts, seed):
    """[n, n_layers, d] activations shifted along a planted unit vector by `shifts[layer]`."""
    g = torch.Generator().manual_seed(seed)
    u = random_unit(d, seed=99)
    return torch.randn(n, len(shifts), d, generator=g) + torch.tensor(shifts)[None, :, None] * u


def _acts(shifts, d=16, n=120):
    acts = {}
    for k, split in enumerate(("train", "val", "test")):
        acts[f"pos_{split}"] = _planted(n, d, shifts, seed=2 * k)
        acts[f"neg_{split}"] = _planted(n, d, [0.0] * len(shifts), seed=2 * k + 1)
    return acts


def test_probe_layers_tracks_the_planted_shift_and_recovers_the_direction():
    shifts = [0.0, 1.0, 3.0]
    rep = lensteer.locate.probe_layers(_acts(shifts), layers=[4, 5, 6], dataset="toy", n_boot=100)
    u = random_unit(16, seed=99)
    assert rep.best_layer() == 6 and rep.best_layer("dom_d_prime") == 6
    assert rep.metrics["probe_auroc"][0] < 0.65 and rep.metrics["probe_auroc"][2] > 0.95
    assert rep.metrics["dom_d_prime"][0] < rep.metrics["dom_d_prime"][1] < rep.metrics["dom_d_prime"][2]
    assert 2.4 < rep.metrics["dom_d_prime"][2] < 3.6  # d' of a unit-variance shift of 3
    for name, (lo, hi) in zip(rep.metrics, (rep.ci[m][2] for m in rep.metrics), strict=True):
        assert lo <= rep.metrics[name][2] <= hi
    for method in ("diff_of_means", "probe", "pca_of_diffs"):
        assert rep.direction(method, 6).cosine(lensteer.Direction(unit=u, layer=6)) > 0.9
    assert rep.cosine_between_methods(6).min() > 0.8
    assert rep.cosine_across_layers().shape == (3, 3)
    assert "best layer by probe AUROC: 6" in rep.to_table()
    assert [r["layer"] for r in rep.to_rows()] == [4, 5, 6] and rep.to_dict()["best_layer"] == 6


def test_probe_boundary_sits_between_the_classes():
    rep = lensteer.locate.probe_layers(_acts([4.0]), layers=[0], n_boot=10)
    probe = rep.probe(0)
    pos_scores = rep.direction("probe", 0).project(_acts([4.0])["pos_test"][:, 0])
    neg_scores = rep.direction("probe", 0).project(_acts([4.0])["neg_test"][:, 0])
    assert neg_scores.mean() < probe.boundary < pos_scores.mean()
    assert probe.metrics["val_accuracy"] > 0.95


def test_probe_layers_errors():
    good = _acts([1.0, 2.0])
    bad = dict(good, pos_test=good["pos_test"].clone())
    bad["pos_test"][0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="pos_test contains NaN"):
        lensteer.locate.probe_layers(bad, layers=[0, 1])
    with pytest.raises(DataError, match="one per entry"):
        lensteer.locate.probe_layers(good, layers=[0])
    with pytest.raises(DataError, match=r"missing \['neg_val'\]"):
        lensteer.locate.probe_layers({k: v for k, v in good.items() if k != "neg_val"}, layers=[0, 1])
    rep = lensteer.locate.probe_layers(good, layers=[0, 1], n_boot=10)
    with pytest.raises(lensteer.ConfigError, match="unknown metric 'f1'"):
        rep.best_layer("f1")
    with pytest.raises(lensteer.ConfigError, match="layer 9 was not probed"):
        rep.direction("probe", 9)


def test_probe_on_a_single_class_is_refused():
    with pytest.raises(DataError, match="negative activations must be"):
        lensteer.fit_probe(torch.randn(5, 4), torch.empty(0, 4), layer=0)


def test_diff_of_means_errors_and_sign():
    a, b = torch.randn(5, 8) + 2.0, torch.randn(5, 8)
    d = lensteer.diff_of_means(a, b, layer=3)
    assert d.project(a).mean() > d.project(b).mean() and abs(float(d.unit.norm()) - 1) < 1e-6
    with pytest.raises(DataError, match="means coincide"):
        lensteer.diff_of_means(a, a, layer=0)
    with pytest.raises(DataError, match="must be"):
        lensteer.diff_of_means(torch.empty(0, 8), b, layer=0)
    unchecked = getattr(
        lensteer.diff_of_means, "__wrapped__", lensteer.diff_of_means
    )  # past jaxtyping's check
    with pytest.raises(DataError, match="width"):
        unchecked(a, torch.randn(5, 4), layer=0)
    with pytest.raises(DataError, match="unit vector"):
        lensteer.Direction(unit=torch.ones(8), layer=0)


def test_direction_unit_is_a_private_copy():
    v = random_unit(8, seed=1)
    d = lensteer.Direction(unit=v, layer=0)
    v.mul_(0)
    assert abs(float(d.unit.norm()) - 1.0) < 1e-6


def test_public_namespace_names_have_docstrings():
    for name in lensteer.__all__:
        obj = getattr(lensteer, name)
        if name != "__version__":
            assert obj.__doc__, f"lensteer.{name} has no docstring"
