"""The steerings the study committed (docs/study/steerings) load, and save again to the same steering:
the guard for any change to the Steering value or its file format."""

from dataclasses import fields
from pathlib import Path

import pytest
import torch

from lensteer.steering.files import load_steerings, save_steerings
from lensteer.steering.gates import gate_to_record
from lensteer.steering.spec import Steering

STEERINGS = Path(__file__).resolve().parents[3] / "docs" / "study" / "steerings"
FILES = sorted(STEERINGS.glob("*.json"))


def _same(a: Steering, b: Steering) -> bool:
    for f in fields(Steering):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            if not torch.equal(x, y):
                return False
        elif f.name == "gate":
            if (x is None) != (y is None):
                return False
            if x is not None:
                (rx, tx), (ry, ty) = gate_to_record(x), gate_to_record(y)
                if rx != ry or tx.keys() != ty.keys() or not all(torch.equal(tx[k], ty[k]) for k in tx):
                    return False
        elif x != y:
            return False
    return True


def test_the_study_committed_steerings_of_every_mode():
    modes = {s.mode for p in FILES for s in load_steerings(p).values()}
    assert len(FILES) >= 10 and {"swfc", "sttp", "stmp"} <= modes


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_committed_steering_loads_and_round_trips(path, tmp_path):
    loaded = load_steerings(path)
    save_steerings(loaded, tmp_path / "again")
    again = load_steerings(tmp_path / "again")
    assert loaded.keys() == again.keys()
    assert all(_same(loaded[k], again[k]) for k in loaded)
