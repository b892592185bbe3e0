"""A Steering is a direction, a Placement and one edit per mode; the flat keywords build and change the parts."""

import json
from dataclasses import replace

import pytest
import torch
from builders import random_unit

import lensteer
from lensteer.steering.edits import ACE, Add, Placement, StMP, StTP, SwFC
from lensteer.steering.files import load_steering, save_steering
from lensteer.steering.hooks import steer_resid
from lensteer.steering.positions import Window
from lensteer.steering.spec import Steering

D = 16
V = random_unit(D, 3)


def _resid() -> torch.Tensor:
    return torch.randn(2, 5, D, generator=torch.Generator().manual_seed(1)) * 3


def test_flat_keywords_build_the_mode_s_edit_with_only_what_it_reads():
    s = Steering(unit=V, layers=(1,), mode="sttp", threshold=0.2, target=1.5, positions="generated")
    assert s.edit == StTP(threshold=0.2, target=1.5) and s.placement == Placement(
        layers=(1,), positions="generated"
    )
    add = Steering(unit=V, layers=2, scale=0.5, relative=True, reference_norm=4.0)
    assert add.edit == Add(scale=0.5, relative=True, reference_norm=4.0) and add.coefficient == 2.0
    assert not hasattr(add.edit, "threshold") and add.threshold is None and add.stmp_variant == "mirror"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"mode": "add", "threshold": 0.3},
            r"threshold=0.3 does not apply to mode 'add'; it is read by \['sttp', 'stmp'\]",
        ),
        (
            {"mode": "sttp", "threshold": 0.0, "target": 1.0, "stmp_variant": "push"},
            "stmp_variant='push' does not apply",
        ),
        (
            {"mode": "ablate", "relative": True, "reference_norm": 2.0},
            r"relative=True applies to modes \('add'",
        ),
        (
            {"mode": "stmp", "threshold": 0.0, "reference": -1.0},
            r"reference=-1.0 does not apply to mode 'stmp'.*\['ace'\]",
        ),
    ],
)
def test_a_keyword_the_mode_does_not_read_is_refused_by_name(kwargs, match):
    with pytest.raises(lensteer.ConfigError, match=match):
        Steering(unit=V, layers=(0,), **kwargs)


def test_an_unknown_keyword_is_refused_even_through_from_direction():
    with pytest.raises(lensteer.ConfigError, match=r"unknown Steering keywords \['treshold'\]; allowed: \["):
        Steering.from_direction(V, layers=(0,), mode="sttp", treshold=None)


def test_the_parts_given_whole_steer_exactly_like_the_flat_keywords():
    flat = Steering(
        unit=V, layers=(0,), mode="stmp", threshold=0.5, stmp_variant="push", scale=0.7, max_norm=30.0
    )
    parts = Steering(
        unit=V,
        placement=Placement(layers=(0,), max_norm=30.0),
        edit=StMP(threshold=0.5, variant="push", scale=0.7),
    )
    mask = torch.ones(2, 5, dtype=torch.bool)
    a, b = steer_resid(_resid(), flat, mask, 30.0), steer_resid(_resid(), parts, mask, 30.0)
    assert torch.equal(a.resid, b.resid) and torch.equal(a.fired, b.fired) and bool(a.fired.any())
    assert flat.edit == parts.edit and flat.placement == parts.placement


def test_changing_one_part_keeps_the_other():
    s = Steering(unit=V, layers=(1,), mode="ace", reference=-2.0, scale=0.5, positions=Window(1, None))
    moved = replace(s, positions="all", gate=None)
    assert moved.edit is s.edit and moved.positions == "all" and moved.layers == (1,)
    stronger = s.with_scale(2.0)
    assert stronger.edit == ACE(reference=-2.0, scale=2.0) and stronger.placement is s.placement
    assert s.placed(max_norm=5.0).max_norm == 5.0 and s.placed(max_norm=5.0).edit is s.edit
    # another mode keeps the parameters it reads and drops the others (they were not the caller's)
    swfc = s.with_edit(mode="swfc")
    assert swfc.edit == SwFC(scale=0.5) and swfc.info is s.info
    with pytest.raises(lensteer.ConfigError, match="needs reference="):
        Steering(unit=V, layers=(1,), mode="add").with_edit(mode="ace")


def test_format_2_stores_the_placement_and_the_edit_and_loads_them_back(tmp_path):
    s = Steering.from_contrast(
        V,
        V[None] * 2 + 0.1,
        -V[None] * 2,
        mode="stmp",
        layers=(1, 2),
        stmp_variant="push",
        max_norm=(7.0, 8.0),
    )
    _, json_path = save_steering(s, tmp_path / "s")
    entry = json.loads(json_path.read_text())["steerings"]["steering"]
    assert entry["placement"]["layers"] == [1, 2] and entry["placement"]["max_norm"] == [7.0, 8.0]
    assert set(entry["edit"]) == {"mode", "scale", "preserve_norm", "threshold", "target", "variant"}
    back = load_steering(tmp_path / "s")
    assert back.edit == s.edit and back.placement == s.placement and back.stmp_variant == "push"
