import pytest

import lensteer
from lensteer.core import models as models
from lensteer.errors import ConfigError, ModelLoadError


def test_kv_cache_fix_is_idempotent_and_probe_is_consistent():
    first = lensteer.core.ensure_kv_cache_fix()
    assert lensteer.core.ensure_kv_cache_fix() == first
    if first:  # once installed, TL's method honours `cache=` and the probe no longer flags it
        assert not models._kv_cache_fix_needed()


def test_existing_bridge_is_returned_in_eval_mode(tiny_bridge):
    tiny_bridge.train()
    assert lensteer.load_model(tiny_bridge) is tiny_bridge and not tiny_bridge.training


def test_fingerprint_round_trips_and_rejects_unknown_keys(tiny_llama_bridge):
    fp = lensteer.core.model_fingerprint(tiny_llama_bridge)
    assert (fp.n_layers, fp.d_model, fp.processing_mode) == (2, 32, "bridge")
    assert lensteer.core.ModelFingerprint.from_dict(fp.to_dict()) == fp
    with pytest.raises(ConfigError, match="unknown fingerprint keys"):
        lensteer.core.ModelFingerprint.from_dict({**fp.to_dict(), "colour": 1})


def test_load_errors_name_the_bad_path(tmp_path):
    with pytest.raises(ModelLoadError, match="has no config.json"):
        lensteer.load_model(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file but not a .gguf"):
        lensteer.load_model(tmp_path / "weights.bin")
    with pytest.raises(ModelLoadError, match="does not exist"):
        lensteer.load_model(tmp_path / "missing.gguf")
    with pytest.raises(ModelLoadError, match="could not load model 'no-such-org/no-such-model'"):
        lensteer.load_model("no-such-org/no-such-model")


def test_local_hf_folder_loads(tmp_path, tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaForCausalLM(
        LlamaConfig(
            num_hidden_layers=1,
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_key_value_heads=1,
            vocab_size=len(tiny_tokenizer),
        )
    )
    hf.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    model = lensteer.load_model(tmp_path)
    assert lensteer.core.model_fingerprint(model).name == str(tmp_path)
    assert lensteer.collect_activations(model, ["hi"]).shape == (1, 1, 16)


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LENSTEER_CACHE", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"


def test_gguf_cache_key_follows_content_not_location(tmp_path):
    a, b, c = tmp_path / "a.gguf", tmp_path / "sub" / "b.gguf", tmp_path / "c.gguf"
    b.parent.mkdir()
    payload = bytes(range(256)) * 20000
    a.write_bytes(payload)
    b.write_bytes(payload)
    c.write_bytes(payload[:-1] + b"\x00")
    assert models._gguf_cache_key(a) == models._gguf_cache_key(b) != models._gguf_cache_key(c)
