"""Saving and loading steerings (safetensors + JSON) and exporting llama.cpp GGUF control vectors."""

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from builders import random_unit

import lensteer
from lensteer.steering.files import load_steering, load_steerings, save_steering, save_steerings
from lensteer.steering.gates import Gate
from lensteer.steering.gguf_export import export_gguf_control_vector, llama_cpp_layer
from lensteer.steering.positions import LastK, Window
from lensteer.steering.spec import Steering

D = 32
TOKENS = torch.tensor([[1, 5, 9, 13, 2, 7], [1, 3, 3, 8, 11, 4]])
FIELDS = (
    "layers",
    "site",
    "positions",
    "mode",
    "scale",
    "relative",
    "reference_norm",
    "preserve_norm",
    "threshold",
    "target",
    "reference",
    "info",
)


def _gate() -> Gate:
    return Gate(
        unit=random_unit(D, 9), layer=1, threshold=-0.25, site="resid_mid", position="last", when="below"
    )


def assert_same_steering(a: Steering, b: Steering) -> None:
    torch.testing.assert_close(a.unit, b.unit, atol=1e-7, rtol=0)
    for name in FIELDS:
        assert getattr(a, name) == getattr(b, name), name
    assert type(a.positions) is type(b.positions)
    assert (a.gate is None) == (b.gate is None)
    if a.gate is not None and b.gate is not None:
        torch.testing.assert_close(a.gate.unit, b.gate.unit, atol=1e-7, rtol=0)
        for name in ("layer", "threshold", "site", "position", "when"):
            assert getattr(a.gate, name) == getattr(b.gate, name), name


MODES = {
    "add": {"mode": "add", "scale": -3.5},
    "add_relative": {"mode": "add", "scale": 0.75, "relative": True, "reference_norm": 12.25},
    "swfc": {"mode": "swfc", "scale": 4.0, "positions": "generated"},
    "ablate": {"mode": "ablate", "scale": 0.5},
    "ace": {"mode": "ace", "scale": 1.0, "reference": -2.125, "relative": True, "reference_norm": 3.0},
    "angular": {"mode": "angular", "scale": 30.0, "preserve_norm": True},
    "sttp": {"mode": "sttp", "scale": 1.0, "threshold": 0.3, "target": 1.7},
    "stmp": {"mode": "stmp", "scale": 0.5, "threshold": -0.4},
}
POSITIONS = ["all", "prompt", "generated", (0, -1, 3), Window(1, 4), Window(-3, None), LastK(2)]


@pytest.mark.parametrize("gate", [False, True], ids=["no_gate", "gate"])
@pytest.mark.parametrize("case", MODES, ids=list(MODES))
def test_every_mode_round_trips(tmp_path, case, gate):
    info = {
        "direction_method": "diff_of_means",
        "source": {"dataset": "refusal", "split": "train"},
        "n": [3, 4],
    }
    s = Steering(
        unit=random_unit(D, 1), layers=(1, -1), info=info, gate=_gate() if gate else None, **MODES[case]
    )
    save_steering(s, tmp_path / "s")
    assert_same_steering(load_steering(tmp_path / "s"), s)


@pytest.mark.parametrize("gate", [False, True], ids=["no_gate", "gate"])
@pytest.mark.parametrize("positions", POSITIONS, ids=str)
def test_every_position_kind_round_trips(tmp_path, positions, gate):
    s = Steering(
        unit=random_unit(D, 2), layers=(2,), positions=positions, scale=2.0, gate=_gate() if gate else None
    )
    save_steering(s, tmp_path / "s.json")  # either suffix names the same pair
    back = load_steering(tmp_path / "s.safetensors")
    assert_same_steering(back, s)
    assert (
        back.positions == positions
        if not isinstance(positions, tuple)
        else back.positions == tuple(positions)
    )


def test_loaded_steering_steers_the_model_exactly_like_the_original(tiny_bridge, tmp_path):
    s = Steering(
        unit=random_unit(D, 3), layers=(1, 2), positions=LastK(3), mode="ace", scale=1.5, reference=-1.0
    )
    save_steering(s, tmp_path / "ace", model=tiny_bridge)
    back = load_steering(tmp_path / "ace", model=tiny_bridge)
    with torch.inference_mode():
        clean = tiny_bridge(TOKENS)
        with lensteer.steer(tiny_bridge, s):
            want = tiny_bridge(TOKENS)
        with lensteer.steer(tiny_bridge, back):
            got = tiny_bridge(TOKENS)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert not torch.allclose(got, clean, atol=1e-3)


def test_record_holds_fingerprint_width_versions_and_no_pickle(tiny_bridge, tmp_path):
    s = Steering(
        unit=random_unit(D, 4),
        layers=(1,),
        mode="add",
        scale=0.5,
        relative=True,
        reference_norm=8.0,
        info={"direction_method": "probe"},
    )
    st_path, json_path = save_steering(s, tmp_path / "out" / "refusal", model=tiny_bridge)
    assert (st_path.name, json_path.name) == ("refusal.safetensors", "refusal.json")
    record = json.loads(json_path.read_text())
    assert record["model"] == lensteer.core.model_fingerprint(tiny_bridge).to_dict()
    assert record["d_model"] == D and record["format_version"] == 2
    assert set(record["versions"]) >= {"lensteer", "torch", "transformers", "transformer-lens"}
    assert record["versions"]["lensteer"] == lensteer.__version__
    entry = record["steerings"]["steering"]
    assert entry["method"] == "probe" and entry["coefficient"] == pytest.approx(4.0)
    assert entry["placement"]["positions"] == {"kind": "named", "value": "all"}
    assert entry["edit"] == {
        "mode": "add",
        "scale": 0.5,
        "preserve_norm": False,
        "relative": True,
        "reference_norm": 8.0,
    }  # only what the mode reads
    # safetensors: an 8-byte little-endian header length, then a JSON header; never a pickle stream.
    raw = st_path.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert header["steering/unit"]["shape"] == [D] and header["steering/unit"]["dtype"] == "F32"
    assert not raw.startswith(b"\x80")
    assert sorted(p.name for p in st_path.parent.iterdir()) == [
        "refusal.json",
        "refusal.safetensors",
    ]  # no temp files


def test_fingerprint_defaults_to_the_steerings_provenance(tiny_llama_bridge, tmp_path):
    fp = lensteer.core.model_fingerprint(tiny_llama_bridge).to_dict()
    s = Steering(unit=random_unit(D, 5), layers=(1,), info={"model": fp})
    _, json_path = save_steering(s, tmp_path / "s")
    assert json.loads(json_path.read_text())["model"] == fp
    load_steering(tmp_path / "s", model=tiny_llama_bridge)  # the right model loads it


def test_loading_into_another_model_is_a_clear_error_naming_both(tiny_bridge, tiny_llama_bridge, tmp_path):
    s = Steering(unit=random_unit(D, 6), layers=(1,))
    save_steering(s, tmp_path / "s", model=tiny_bridge)
    saved_name = lensteer.core.model_fingerprint(tiny_bridge).name
    other_name = lensteer.core.model_fingerprint(tiny_llama_bridge).name
    assert saved_name != other_name
    with pytest.raises(lensteer.ArtifactMismatchError) as err:
        load_steering(tmp_path / "s", model=tiny_llama_bridge)
    msg = str(err.value)
    assert repr(saved_name) in msg and repr(other_name) in msg and "n_layers" in msg and "s.json" in msg
    # Same width: strict=False checks only the width, and the steering then works on that model.
    loose = load_steering(tmp_path / "s", model=tiny_llama_bridge, strict=False)
    assert_same_steering(loose, s)


def test_another_width_is_refused_even_when_not_strict(tiny_bridge, tmp_path):
    wide = lensteer.core.ModelFingerprint(
        name="wide", n_layers=4, d_model=576, d_vocab=64, processing_mode="bridge"
    )
    save_steering(Steering(unit=random_unit(D, 7), layers=(1,)), tmp_path / "s", model=tiny_bridge)
    with pytest.raises(lensteer.ArtifactMismatchError, match=r"width 32 .*'wide' has d_model 576"):
        load_steering(tmp_path / "s", model=wide, strict=False)
    # A file with no fingerprint is still checked for width.
    save_steering(Steering(unit=random_unit(D, 7), layers=(1,)), tmp_path / "anon")
    with pytest.raises(lensteer.ArtifactMismatchError, match="d_model 576"):
        load_steering(tmp_path / "anon", model=wide)


def test_saving_for_a_model_of_another_width_is_refused(tmp_path):
    wide = lensteer.core.ModelFingerprint(
        name="wide", n_layers=4, d_model=576, d_vocab=64, processing_mode="bridge"
    )
    with pytest.raises(lensteer.ArtifactMismatchError, match="width 32.*d_model 576"):
        save_steering(Steering(unit=random_unit(D, 7), layers=(1,)), tmp_path / "s", model=wide)
    assert not any(tmp_path.iterdir())


def test_tensor_width_must_match_the_json(tmp_path):
    _, json_path = save_steering(Steering(unit=random_unit(D, 8), layers=(1,)), tmp_path / "s")
    record = json.loads(json_path.read_text())
    record["d_model"] = record["steerings"]["steering"]["d_model"] = 16
    json_path.write_text(json.dumps(record))
    with pytest.raises(lensteer.ArtifactMismatchError, match=r"shape \(32,\) but .*s.json says d_model=16"):
        load_steering(tmp_path / "s")


def _edit(record: dict, key: str, value: object) -> None:
    *parents, last = key.split(".")
    for p in parents:
        record = record[p]
    if value is KeyError:
        del record[last]
    else:
        record[last] = value


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("steerings.steering.edit.mode", KeyError, "key 'steerings.steering.edit.mode' is missing"),
        ("steerings.steering.edit.mode", "bogus", "mode 'bogus' is not allowed"),
        (
            "steerings.steering.edit.scale",
            "strong",
            "key 'steerings.steering.edit.scale' = 'strong'.*expected float",
        ),
        (
            "steerings.steering.placement.layers",
            KeyError,
            "key 'steerings.steering.placement.layers' is missing",
        ),
        ("steerings.steering.edit.relative", 1, "key 'steerings.steering.edit.relative' = 1.*expected bool"),
        ("steerings.steering.edit.threshold", 0.5, "threshold=0.5 does not apply to mode 'add'"),
        ("steerings.steering.edit.flip", True, r"keys \['flip'\] of 'steerings.steering.edit' are not edit"),
        ("steerings.steering.placement", KeyError, "key 'steerings.steering.placement' is missing"),
        (
            "steerings.steering.placement.positions",
            {"kind": "everywhere"},
            "'steerings.steering.placement.positions.kind' = 'everywhere'",
        ),
        ("steerings.steering.placement.positions", {"kind": "last_k", "k": 0}, "LastK.k must be an int >= 1"),
        ("steerings.steering.gate", {"layer": 1}, "key 'steerings.steering.gate.threshold' is missing"),
        ("model", {"name": "x"}, "key 'model.n_layers' is missing"),
        ("format_version", 99, "key 'format_version' = 99"),
        ("format", "pickle", "key 'format' = 'pickle'"),
        ("steerings", {}, "key 'steerings' is empty"),
    ],
)
def test_bad_records_are_data_errors_naming_the_key_and_file(tmp_path, key, value, match):
    s = Steering(unit=random_unit(D, 10), layers=(1,), gate=_gate())
    _, json_path = save_steering(
        s,
        tmp_path / "bad",
        model=lensteer.core.ModelFingerprint(
            name="m", n_layers=4, d_model=D, d_vocab=64, processing_mode="bridge"
        ),
    )
    record = json.loads(json_path.read_text())
    _edit(record, key, value)
    json_path.write_text(json.dumps(record))
    with pytest.raises(lensteer.DataError, match=match) as err:
        load_steering(tmp_path / "bad")
    assert "bad.json" in str(err.value)


def test_missing_or_corrupt_files_are_data_errors(tmp_path):
    with pytest.raises(lensteer.DataError, match="nothing.json does not exist"):
        load_steering(tmp_path / "nothing")
    save_steering(Steering(unit=random_unit(D, 11), layers=(1,)), tmp_path / "s")
    (tmp_path / "s.json").write_text("{not json")
    with pytest.raises(lensteer.DataError, match="s.json is not valid JSON"):
        load_steering(tmp_path / "s")


def test_a_mixed_up_pair_is_refused(tmp_path):
    save_steering(Steering(unit=random_unit(D, 12), layers=(1,)), tmp_path / "a")
    save_steering(Steering(unit=random_unit(D, 13), layers=(1,)), tmp_path / "b")
    shutil.copyfile(tmp_path / "b.safetensors", tmp_path / "a.safetensors")
    with pytest.raises(lensteer.DataError, match="SHA-256 differs"):
        load_steering(tmp_path / "a")


def test_several_steerings_share_one_file(tmp_path):
    named = {
        "refusal": Steering(unit=random_unit(D, 14), layers=(1,), scale=2.0),
        "honesty.v2": Steering(unit=random_unit(D, 15), layers=(2, 3), mode="ablate", gate=_gate()),
    }
    save_steerings(named, tmp_path / "set")
    back = load_steerings(tmp_path / "set")
    assert list(back) == list(named)
    for name in named:
        assert_same_steering(back[name], named[name])
    assert_same_steering(load_steering(tmp_path / "set", name="honesty.v2"), named["honesty.v2"])
    with pytest.raises(lensteer.DataError, match=r"holds 2 steerings.*pass name="):
        load_steering(tmp_path / "set")
    with pytest.raises(lensteer.DataError, match="no steering 'nope'"):
        load_steering(tmp_path / "set", name="nope")


def test_unsaveable_input_is_refused_before_anything_is_written(tmp_path):
    good = Steering(unit=random_unit(D, 16), layers=(1,))
    save_steering(good, tmp_path / "s")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(lensteer.ConfigError, match="not plain JSON"):
        save_steering(
            Steering(unit=random_unit(D, 17), layers=(1,), info={"acts": torch.ones(2)}), tmp_path / "s"
        )
    with pytest.raises(lensteer.ConfigError, match="name 'a/b' is not allowed"):
        save_steerings({"a/b": good}, tmp_path / "s")
    with pytest.raises(lensteer.ArtifactMismatchError, match="different widths"):
        save_steerings({"a": good, "b": Steering(unit=random_unit(16, 1), layers=(1,))}, tmp_path / "s")
    fp = {"name": "m", "n_layers": 4, "d_model": D, "d_vocab": 64, "processing_mode": "bridge"}
    with pytest.raises(lensteer.ArtifactMismatchError, match="different models"):
        save_steerings(
            {
                "a": Steering(unit=random_unit(D, 1), layers=(1,), info={"model": fp}),
                "b": Steering(unit=random_unit(D, 2), layers=(1,), info={"model": {**fp, "name": "n"}}),
            },
            tmp_path / "s",
        )
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # old pair intact, no temp files


# -- llama.cpp GGUF control vectors ----------------------------------------------------------------


def _read_gguf(path: Path) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    reader = gguf.GGUFReader(path)
    meta = {}
    for key in ("general.architecture", "controlvector.model_hint", "controlvector.layer_count"):
        field = reader.fields[key]
        meta[key] = (field.contents(), field.types[0])
    tensors = {}
    for t in reader.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        tensors[t.name] = np.array(t.data)
    return meta, tensors


def test_gguf_export_reads_back_with_the_gguf_library(tiny_bridge, tmp_path):
    v = random_unit(D, 20)
    s = Steering(unit=v, layers=(1, -1), mode="add", scale=0.5, relative=True, reference_norm=6.0)
    path = export_gguf_control_vector(s, tmp_path / "refusal", model=tiny_bridge, model_hint="smollm2")
    assert path == tmp_path / "refusal.gguf"
    meta, tensors = _read_gguf(path)
    assert meta["general.architecture"] == ("controlvector", gguf.GGUFValueType.STRING)
    assert meta["controlvector.model_hint"] == ("smollm2", gguf.GGUFValueType.STRING)
    assert meta["controlvector.layer_count"] == (3, gguf.GGUFValueType.UINT32)
    assert sorted(tensors) == ["direction.1", "direction.2", "direction.3"]  # never direction.0
    want = (3.0 * v).numpy()  # coefficient = scale x reference_norm
    np.testing.assert_allclose(tensors["direction.1"], want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(tensors["direction.3"], want, rtol=1e-6, atol=1e-7)  # layer -1 of 4
    assert not tensors["direction.2"].any()
    assert tensors["direction.1"].shape == (D,)
    assert [p.name for p in tmp_path.iterdir()] == ["refusal.gguf"]


def test_gguf_applied_as_llama_cpp_does_reproduces_lensteer_steering(tiny_bridge, tmp_path):
    """llama.cpp adds direction.il to the output of layer il; doing that by hand must equal steer()."""
    s_pre = Steering(unit=random_unit(D, 21), layers=(2,), site="resid_pre", scale=3.0)  # -> direction.1
    s_post = Steering(unit=random_unit(D, 22), layers=(1, 3), scale=-2.0)  # -> direction.1, direction.3
    path = export_gguf_control_vector([s_pre, s_post], tmp_path / "cv.gguf", n_layers=4)
    _, tensors = _read_gguf(path)

    def add(vec: np.ndarray):
        t = torch.from_numpy(vec)
        return lambda x, hook: x + t

    hooks = [(f"blocks.{name.split('.')[1]}.hook_resid_post", add(vec)) for name, vec in tensors.items()]
    with torch.inference_mode():
        clean = tiny_bridge(TOKENS)
        llama_cpp_like = tiny_bridge.run_with_hooks(TOKENS, fwd_hooks=hooks)
        with lensteer.steer(tiny_bridge, s_pre, s_post):
            ours = tiny_bridge(TOKENS)
    torch.testing.assert_close(llama_cpp_like, ours, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours, clean, atol=1e-3)


def test_layer_mapping():
    assert llama_cpp_layer("resid_post", 1, 30) == 1
    assert llama_cpp_layer("resid_post", 29, 30) == 29
    assert llama_cpp_layer("resid_post", -1, 30) == 29
    assert llama_cpp_layer("resid_pre", 2, 30) == 1
    assert llama_cpp_layer("resid_pre", 15, 30) == 14
    for site, layer, match in [
        ("resid_post", 0, "output of layer 0"),
        ("resid_pre", 1, "output of layer 0"),
        ("resid_pre", 0, "the embeddings"),
        ("mlp_out", 5, "no llama.cpp equivalent"),
        ("resid_post", 30, "out of range"),
    ]:
        with pytest.raises(lensteer.ConfigError, match=match):
            llama_cpp_layer(site, layer, 30)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "ablate"}, "mode 'ablate' is not a constant addition"),
        ({"mode": "ace", "reference": 0.0}, "mode 'ace' is not a constant addition"),
        ({"mode": "stmp", "threshold": 0.0}, "mode 'stmp' is not a constant addition"),
        ({"site": "attn_out"}, "site 'attn_out' has no llama.cpp equivalent"),
        ({"layers": (0,)}, "output of layer 0.*rejects direction.0"),
        ({"preserve_norm": True}, "preserve_norm"),
        ({"gate": "gate"}, "no prompt gate"),
        ({"mode": "swfc", "positions": "generated"}, "every token.*'generated'.*every_position=True"),
        ({"positions": LastK(2)}, "every token"),
    ],
)
def test_gguf_export_refuses_what_llama_cpp_cannot_reproduce(tmp_path, kwargs, match):
    if kwargs.get("gate") == "gate":
        kwargs = {**kwargs, "gate": _gate()}
    s = Steering(unit=random_unit(D, 23), **{"layers": (1,), **kwargs})
    with pytest.raises(lensteer.ConfigError, match=match):
        export_gguf_control_vector(s, tmp_path / "cv", n_layers=4)
    assert not any(tmp_path.iterdir())


def test_gguf_export_of_position_limited_steering_needs_consent(tmp_path):
    v = random_unit(D, 24)
    s = Steering.from_direction(v, layers=2, mode="swfc", scale=5.0)  # swfc defaults to generated tokens
    path = export_gguf_control_vector(s, tmp_path / "cv", n_layers=4, every_position=True)
    np.testing.assert_allclose(_read_gguf(path)[1]["direction.2"], (5.0 * v).numpy(), rtol=1e-6, atol=1e-7)


def test_gguf_export_needs_the_layer_count_and_the_right_width(tiny_bridge, tmp_path):
    s = Steering(unit=random_unit(D, 25), layers=(1,))
    with pytest.raises(lensteer.ConfigError, match="n_layers"):
        export_gguf_control_vector(s, tmp_path / "cv")
    with pytest.raises(lensteer.ConfigError, match="n_layers=5 but model"):
        export_gguf_control_vector(s, tmp_path / "cv", model=tiny_bridge, n_layers=5)
    wide = Steering(unit=random_unit(64, 25), layers=(1,))
    with pytest.raises(lensteer.ArtifactMismatchError, match="width 64.*d_model 32"):
        export_gguf_control_vector(wide, tmp_path / "cv", model=tiny_bridge)
    with pytest.raises(lensteer.ArtifactMismatchError, match="different widths"):
        export_gguf_control_vector([s, wide], tmp_path / "cv", n_layers=4)
