"""Vectors in and out of llama.cpp / repeng / EasySteer GGUF, repeng's and steering-vectors' in-memory forms and
EasyEdit2's saved vectors: round trips, wrong-model errors, and the imported vector steering our model as the
peer's code steers the same Hugging Face model."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import lensteer
from lensteer.errors import ArtifactMismatchError, ConfigError, DataError
from lensteer.steering.interop import (
    from_repeng,
    from_steering_vector,
    import_gguf_control_vector,
    load_easyedit_vectors,
    steerings_to_vectors,
    to_repeng,
    to_steering_vector,
    vectors_to_steerings,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_tokenizer):
    from builders import save_tiny_llama_folder

    return save_tiny_llama_folder(
        tmp_path_factory.mktemp("tiny_llama"), tiny_tokenizer, initializer_range=0.5
    )


@pytest.fixture(scope="module")
def ours(folder):
    return lensteer.load_model(str(folder))


@pytest.fixture(scope="module")
def hf(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def _vectors(d_model, layers=(0, 1), seed=0):
    g = torch.Generator().manual_seed(seed)
    return {layer: torch.randn(d_model, generator=g) * (layer + 1) for layer in layers}


def _same(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(torch.as_tensor(a[k]).float(), torch.as_tensor(b[k]).float())


def test_vectors_round_trip_through_steerings_with_the_coefficient(ours):
    vecs = _vectors(ours.cfg.d_model)
    steerings = vectors_to_steerings(vecs, ours, coefficient=-2.0)
    assert [s.layers for s in steerings] == [(0,), (1,)] and {s.mode for s in steerings} == {"add"}
    _same(steerings_to_vectors(steerings, ours), {k: -2.0 * v for k, v in vecs.items()})


def test_gguf_export_then_import_round_trips(ours, tmp_path):
    vec = _vectors(ours.cfg.d_model, layers=(1,))[1]
    steering = lensteer.Steering.from_direction(vec, layers=(1,), mode="add", scale=3.0)
    path = lensteer.steering.export_gguf_control_vector(steering, tmp_path / "cv", model=ours)
    (back,) = import_gguf_control_vector(path, ours, coefficient=0.5)
    assert back.layers == (1,) and back.site == "resid_post" and back.info["model_hint"] == "llama"
    _same(steerings_to_vectors(back, ours), {1: 1.5 * vec / vec.norm()})


def test_repeng_and_easysteer_gguf_layout_is_read(ours, tmp_path):
    """repeng's export_gguf writes only its layers (direction.0 allowed); EasySteer adds controlvector.method."""
    import gguf

    vecs = _vectors(ours.cfg.d_model)
    writer = gguf.GGUFWriter(str(tmp_path / "peer.gguf"), "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_string("controlvector.method", "pca")
    writer.add_uint32("controlvector.layer_count", len(vecs))
    for layer, v in vecs.items():
        writer.add_tensor(f"direction.{layer}", v.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    steerings = import_gguf_control_vector(tmp_path / "peer.gguf", ours)
    assert steerings[0].info["method"] == "pca"
    _same(steerings_to_vectors(steerings, ours), vecs)


def test_in_memory_peer_forms_and_easyedit_files_round_trip(ours, tmp_path):
    vecs = _vectors(ours.cfg.d_model)
    cv = SimpleNamespace(model_type="llama", directions={k: v.numpy() for k, v in vecs.items()})
    _same(steerings_to_vectors(from_repeng(cv, ours, coeff=2.0), ours), {k: 2 * v for k, v in vecs.items()})
    sv = SimpleNamespace(layer_activations=vecs, layer_type="decoder_block")
    _same(steerings_to_vectors(from_steering_vector(sv, ours), ours), vecs)
    (tmp_path / "caa_vector").mkdir()
    for layer, v in steerings_to_vectors(vectors_to_steerings(vecs, ours), ours).items():
        torch.save(v, tmp_path / "caa_vector" / f"layer_{layer}.pt")  # as EasyEdit2 saves its vectors
    _same(steerings_to_vectors(load_easyedit_vectors(tmp_path / "caa_vector", ours), ours), vecs)


def test_vectors_of_another_model_are_refused_clearly(ours, tmp_path):
    d, n = ours.cfg.d_model, ours.cfg.n_layers
    with pytest.raises(ArtifactMismatchError, match=rf"width {d + 8}.*d_model {d}.*another model"):
        vectors_to_steerings({0: torch.ones(d + 8)}, ours)
    with pytest.raises(ArtifactMismatchError, match=rf"layer {n + 3}.*{n} layers.*another model"):
        from_repeng(SimpleNamespace(directions={n + 3: np.ones(d)}), ours)
    with pytest.raises(ConfigError, match="layer_type 'attention'"):
        from_steering_vector(
            SimpleNamespace(layer_activations={0: torch.ones(d)}, layer_type="attention"), ours
        )
    with pytest.raises(DataError, match="every vector is zero"):
        vectors_to_steerings({0: torch.zeros(d)}, ours)
    with pytest.raises(DataError, match="no EasyEdit2 vectors"):
        load_easyedit_vectors(tmp_path, ours)
    (tmp_path / "model.gguf").write_bytes(b"not a gguf")
    with pytest.raises(DataError, match="not a GGUF file"):
        import_gguf_control_vector(tmp_path / "model.gguf", ours)
    gated = lensteer.Steering.from_direction(torch.ones(d), layers=(0,), mode="ablate")
    with pytest.raises(ConfigError, match="not a constant addition"):
        steerings_to_vectors(gated, ours)


def _peer_add(hf, vectors, coefficient):
    """What repeng's ControlModel and steering-vectors' apply() do (their documented maths): add
    ``coefficient * vectors[L]`` to the output of ``model.model.layers[L]`` at every position."""

    def hook_for(vec):
        def hook(_module, _inputs, output):
            if isinstance(output, tuple):
                return (output[0] + coefficient * vec, *output[1:])
            return output + coefficient * vec

        return hook

    return [hf.model.layers[k].register_forward_hook(hook_for(v)) for k, v in vectors.items()]


def _logits(ours, hf, tiny_tokenizer, steerings=None, peer=None):
    ids = torch.tensor([tiny_tokenizer("steer me, please")["input_ids"]])
    with torch.inference_mode():
        if steerings is None:
            mine = ours(ids)
        else:
            with lensteer.steer(ours, *steerings):
                mine = ours(ids)
        handles = peer() if peer is not None else []
        try:
            theirs = hf(ids).logits
        finally:
            for h in handles:
                h.remove()
    return mine, theirs


def test_an_imported_vector_steers_our_model_as_the_peer_code_does(ours, hf, tiny_tokenizer):
    vecs = _vectors(ours.cfg.d_model)
    plain_mine, plain_theirs = _logits(ours, hf, tiny_tokenizer)
    torch.testing.assert_close(plain_mine, plain_theirs, atol=1e-4, rtol=1e-4)  # the same model
    steerings = from_steering_vector(
        SimpleNamespace(layer_activations=vecs, layer_type="decoder_block"), ours, multiplier=1.5
    )
    mine, theirs = _logits(ours, hf, tiny_tokenizer, steerings, lambda: _peer_add(hf, vecs, 1.5))
    assert (mine - plain_mine).abs().max() > 0.1  # the vector does move the logits
    torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)


def test_cross_library_steering_vectors_apply_matches(ours, hf, tiny_tokenizer):
    """steering-vectors' own SteeringVector.apply (skipped where steering-vectors is not installed)."""
    pytest.importorskip("steering_vectors")
    vecs = _vectors(ours.cfg.d_model, seed=3)
    steerings = vectors_to_steerings(vecs, ours)
    sv = to_steering_vector(steerings, ours)
    assert type(sv).__module__.startswith("steering_vectors")

    def peer():
        handle = sv.patch_activations(hf, multiplier=1.0)
        return handle.model_hooks

    mine, theirs = _logits(ours, hf, tiny_tokenizer, steerings, peer)
    torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)


def test_cross_library_repeng_control_model_and_gguf_match(ours, hf, tiny_tokenizer, tmp_path, monkeypatch):
    """repeng's own ControlModel and import_gguf (skipped where repeng is not installed; repeng 0.4 names
    np.float_, gone in numpy 2, in an annotation only)."""
    monkeypatch.setattr(np, "float_", np.float64, raising=False)
    repeng = pytest.importorskip("repeng")
    vecs = _vectors(ours.cfg.d_model, layers=(1,), seed=4)
    steerings = vectors_to_steerings(vecs, ours)
    path = lensteer.steering.export_gguf_control_vector(steerings, tmp_path / "cv", model=ours)
    cv = repeng.ControlVector.import_gguf(str(path))
    _same({k: v for k, v in cv.directions.items() if np.abs(v).sum() > 0}, vecs)
    assert isinstance(to_repeng(steerings, ours), repeng.ControlVector)
    plain, _ = _logits(ours, hf, tiny_tokenizer)
    mine, _ = _logits(ours, hf, tiny_tokenizer, steerings)
    wrapped = repeng.ControlModel(hf, [1])
    try:
        wrapped.set_control(cv, coeff=1.0)
        ids = torch.tensor([tiny_tokenizer("steer me, please")["input_ids"]])
        with torch.inference_mode():
            theirs = wrapped(ids).logits
    finally:
        wrapped.reset()
        wrapped.unwrap()
    assert (mine - plain).abs().max() > 0.1
    torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)
