"""Atomic writes: a reader sees the old file or the new one, never half of one, and no temporary is left."""

import json
import math

import pytest
import torch

from lensteer.core.io import atomic_path, write_json, write_text


def test_write_json_writes_tensors_as_lists_and_non_finite_floats_as_null(tmp_path):
    path = write_json(
        tmp_path / "deep" / "r.json", {"t": torch.tensor([1.0, 2.0]), "bad": [math.nan, math.inf], "ok": 0.5}
    )
    assert json.loads(path.read_text()) == {"t": [1.0, 2.0], "bad": [None, None], "ok": 0.5}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_the_temporary_lives_beside_the_target_so_the_rename_is_atomic(tmp_path):
    with atomic_path(tmp_path / "x.safetensors") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.suffix == ".safetensors"
        tmp.write_bytes(b"new")
    assert (tmp_path / "x.safetensors").read_bytes() == b"new"


def test_unserialisable_payloads_fail_before_anything_is_written(tmp_path):
    with pytest.raises(TypeError, match="cannot serialise object"):
        write_json(tmp_path / "r.json", {"x": object()})
    assert not list(tmp_path.iterdir())


def test_a_written_file_gets_the_mode_a_plain_open_would_give_it(tmp_path):
    import os

    mask = os.umask(0o027)
    try:
        new = write_text(tmp_path / "new.txt", "x")  # the temporary it was written as is owner-only
        assert new.stat().st_mode & 0o777 == 0o640
        kept = tmp_path / "kept.txt"
        kept.write_text("old")
        kept.chmod(0o604)
        write_text(kept, "new")
        assert kept.stat().st_mode & 0o777 == 0o604 and kept.read_text() == "new"
    finally:
        os.umask(mask)
