"""The steerings committed under docs/ and data/ (the study's, in format 1) load with the values they were
written with, and save again (format 2) to the same steering: the guard for any change to the Steering
value or its file format."""

import json
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from lensteer.steering.files import load_steerings, save_steerings
from lensteer.steering.gates import gate_to_record
from lensteer.steering.spec import Steering

ROOT = Path(__file__).resolve().parents[3]
STEERINGS = ROOT / "docs" / "study" / "steerings"
FILES = sorted(
    p
    for folder in ("docs", "data")
    for p in (ROOT / folder).rglob("*.json")
    if p.with_suffix(".safetensors").exists()
)
FORMAT_1 = [p for p in FILES if json.loads(p.read_text())["format_version"] == 1]  # older studies' files


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
    assert any(p.parent == STEERINGS and p.name.startswith("refusal_StMP-push_kl0.5_L") for p in FILES)
    assert {json.loads(p.read_text())["format_version"] for p in FILES} == {1, 2}
    # the format-1 reader's guard: docs/robustness-honesty's steerings, one of each steering mode
    assert {s.mode for p in FORMAT_1 for s in load_steerings(p).values()} >= {"swfc", "sttp", "stmp"}


# What a format-1 record says that its steering's read-only views must give back unchanged.
_V1_VIEWS = ("layers", "site", "mode", "scale", "relative", "reference_norm", "preserve_norm", "max_norm")
_V1_MODE_VIEWS = {
    "sttp": ("threshold", "target"),
    "stmp": ("threshold", "target", "stmp_variant"),
    "ace": ("reference",),
}


@pytest.mark.parametrize("path", FORMAT_1, ids=lambda p: p.stem)
def test_committed_format_1_steering_loads_with_the_values_it_was_written_with(path):
    record = json.loads(path.read_text())
    for name, s in load_steerings(path).items():
        saved = record["steerings"][name]
        for key in (*_V1_VIEWS, *_V1_MODE_VIEWS.get(saved["mode"], ())):
            want = tuple(saved[key]) if isinstance(saved[key], list) else saved[key]
            assert getattr(s, key) == want, (name, key)
        assert s.coefficient == pytest.approx(saved["coefficient"], rel=1e-12)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_committed_steering_loads_and_round_trips(path, tmp_path):
    loaded = load_steerings(path)
    save_steerings(loaded, tmp_path / "again")
    again = load_steerings(tmp_path / "again")
    assert loaded.keys() == again.keys()
    assert all(_same(loaded[k], again[k]) for k in loaded)
