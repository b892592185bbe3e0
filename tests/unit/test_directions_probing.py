import pytest
import torch
from builders import random_unit

import lensteer
from lensteer.errors import DataError


def _planted(n, d, layer_shift, seed):
    """[n, n_layers=3, d] activations: class shift grows with depth (0, 1, 3 along u)."""
    g = torch.Generator().manual_seed(seed)
    u = random_unit(d, seed=99)
    base = torch.randn(n, 3, d, generator=g)
    return base + torch.tensor(layer_shift)[None, :, None] * u


def test_layer_separation_tracks_the_planted_shift():
    shifts = [0.0, 1.0, 3.0]
    pos_tr, pos_te = _planted(200, 16, shifts, 0), _planted(200, 16, shifts, 1)
    neg_tr, neg_te = _planted(200, 16, [0, 0, 0], 2), _planted(200, 16, [0, 0, 0], 3)
    rep = lensteer.layer_separation(pos_tr, neg_tr, pos_te, neg_te, layers=[4, 5, 6], dataset="toy")
    assert rep.best_layer == 6
    assert rep.accuracy[0] < 0.62 and rep.accuracy[2] > 0.9
    assert rep.d_prime[0] < rep.d_prime[1] < rep.d_prime[2]
    assert 2.5 < rep.d_prime[2] < 3.5  # d' of a unit-variance shift of 3
    assert "best layer by d': 6" in rep.to_table()
    assert [r["layer"] for r in rep.to_rows()] == [4, 5, 6]


def test_layer_separation_rejects_nan_and_mismatched_layers():
    good = torch.randn(4, 2, 8)
    bad = good.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="pos_test contains NaN"):
        lensteer.layer_separation(good, good, bad, good, layers=[0, 1])
    with pytest.raises(DataError, match="one per entry"):
        lensteer.layer_separation(good, good, good, good, layers=[0])


def test_diff_of_means_errors_and_sign():
    a, b = torch.randn(5, 8) + 2.0, torch.randn(5, 8)
    d = lensteer.diff_of_means(a, b, layer=3)
    assert d.project(a).mean() > d.project(b).mean() and abs(float(d.unit.norm()) - 1) < 1e-6
    with pytest.raises(DataError, match="means coincide"):
        lensteer.diff_of_means(a, a, layer=0)
    with pytest.raises(DataError, match="must be"):
        lensteer.diff_of_means(torch.empty(0, 8), b, layer=0)
    unchecked = getattr(lensteer.diff_of_means, "__wrapped__", lensteer.diff_of_means)  # past jaxtyping's check
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
