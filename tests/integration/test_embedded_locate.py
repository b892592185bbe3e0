"""The embedded SmolLM2-135M-Instruct (or its tokenizer) under locate, capability scoring and the CLI.

Moved out of the unit tests, which never load the embedded model.
"""

import json

import pytest
import torch
from builders import save_tiny_llama_folder
from transformer_lens import patching as tl_patching

import lensteer
from lensteer import threats
from lensteer.cli import main
from lensteer.evaluate.capability import load_mc_items, mc_accuracy
from lensteer.locate import incremental
from lensteer.locate.pairs import patching_pairs
from lensteer.locate.patching import patch_residual
from lensteer.locate.patching_base import logit_diff_metric

pytestmark = pytest.mark.embedded


@pytest.fixture
def no_full_forward_per_cell(monkeypatch):
    """Fail if the reference path (one forward per cell) runs: the incremental path must be used."""
    from lensteer.locate import patching

    def refuse(*args, **kwargs):
        raise AssertionError("fell back to one forward per cell")

    monkeypatch.setattr(patching, "_sweep", refuse)


def test_embedded_model_beats_chance_on_easy_mc_items(embedded_model):
    items = load_mc_items()
    first = [
        it
        for cat in ("arithmetic", "science", "geography", "word_meaning", "common_sense")
        for it in [x for x in items if x.category == cat][:2]
    ]
    result = mc_accuracy(embedded_model, first)
    assert result.accuracy >= 0.5  # chance 0.25; these 10 measured 0.6, all 120 items 0.61 (data/README.md)


@pytest.fixture(scope="module")
def smol_tokenizer():
    """The embedded model's tokenizer alone (no weights are run)."""
    from transformers import AutoTokenizer

    from lensteer.core import models as models

    return AutoTokenizer.from_pretrained(models.gguf_to_folder(models.embedded_gguf_path()))


@pytest.mark.parametrize("name", threats.BUNDLED)
def test_bundled_designs_give_equal_length_pairs_on_smollm2(smol_tokenizer, name):
    pairs = patching_pairs(smol_tokenizer, name, design=threats.get(name).pair_design)
    assert len(pairs) >= 16  # enough for the CLI's --n-pairs default
    for clean, corrupted in zip(pairs.clean, pairs.corrupted, strict=True):
        assert lensteer.core.tokenize_prompt(smol_tokenizer, clean).n_tokens == pairs.n_tokens
        assert lensteer.core.tokenize_prompt(smol_tokenizer, corrupted).n_tokens == pairs.n_tokens
    assert all(a != b for a, b in zip(pairs.aligned_ids, pairs.misaligned_ids, strict=True))
    if name == "honesty":
        ds = lensteer.load_dataset("honesty")
        row = next(ex for ex in ds if ex.id == pairs.ids[0])
        assert pairs.clean[0].response == row.aligned_response.rsplit(" ", 1)[0]  # "The capital of X is"
        assert smol_tokenizer.decode([pairs.aligned_ids[0]]).strip() == row.true_answer.split()[0]
        assert pairs.clean[0].system == ds.context("honest_system").system


def test_incremental_patching_equals_transformer_lens_on_the_embedded_model(
    embedded_model, no_full_forward_per_cell
):
    model = embedded_model
    clean = torch.stack(
        [lensteer.core.tokenize_prompt(model, t).tokens for t in ["The cat sat on the", "A dog ran to the"]]
    )
    corrupted = torch.stack(
        [lensteer.core.tokenize_prompt(model, t).tokens for t in ["The cat sat on a", "A dog ran to a"]]
    )
    assert clean.shape == corrupted.shape
    _, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_resid_pre"))
    layers = [3, 29]
    index_df = tl_patching.make_df_from_ranges([model.cfg.n_layers, clean.shape[1]], ["layer", "pos"])
    index_df = index_df[index_df["layer"].isin(layers)].reset_index(drop=True)
    metric = logit_diff_metric(
        lensteer.core.first_token_id(model, " mat"), lensteer.core.first_token_id(model, " park")
    )
    expected = tl_patching.generic_activation_patch(
        model,
        corrupted,
        cache,
        lambda lg: metric(lg[:, -1]).mean(),
        tl_patching.layer_pos_patch_setter,
        "resid_pre",
        index_df=index_df,
    )
    ours = patch_residual(model, clean, corrupted, metric, layers=layers)
    assert incremental.Replayer(model, corrupted).use_prefix
    assert torch.allclose(ours.mean().flatten(), expected.flatten(), atol=1e-4)
    assert model.list_hooks() == {}


@pytest.fixture(scope="module")
def tiny_smol_folder(tmp_path_factory):
    """A 2-layer random Llama with the embedded model's tokenizer, on which every bundled design has pairs."""
    from transformers import AutoTokenizer

    from lensteer.core import models as models

    tok = AutoTokenizer.from_pretrained(models.gguf_to_folder(models.embedded_gguf_path()))
    return save_tiny_llama_folder(
        tmp_path_factory.mktemp("tiny_smol"),
        tok,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )


def test_cli_locate_patches_all_three_threat_models(tmp_path, tiny_smol_folder, capsys):
    out = tmp_path / "out"
    assert (
        main(
            [
                "locate",
                "--model",
                str(tiny_smol_folder),
                "--out",
                str(out),
                "--smoke",
                "--quiet",
                "--n-pairs",
                "2",
            ]
        )
        == 0
    )
    summary = json.loads((out / "locate.json").read_text())
    printed = capsys.readouterr().out
    for name in ("refusal", "compassion", "honesty"):
        entry = summary[name]
        pairs = entry["patching"]["pairs"]
        assert pairs["dataset"] == lensteer.threats.get(name).dataset and len(pairs["ids"]) == 2
        resid = entry["patching"]["resid"]
        assert resid["layers"] == [0, 1] and len(resid["col_labels"]) == pairs["n_tokens"]
        assert resid["source_mean"] != resid["target_mean"]
        assert len(entry["patching"]["heads"]["col_labels"]) == 2  # heads
        for stem in (
            f"patching_resid_{name}",
            f"patching_heads_{name}",
            f"attribution_vs_exact_{name}",
            f"attribution_vs_exact_heads_{name}",
        ):
            assert (out / "figures" / f"{stem}.png").is_file()
        # on a 2-layer model the first-order estimate is near exact for heads (r = 0.99998 measured)
        assert entry["patching"]["head_attribution_correlation"] > 0.9
        rec = entry["recommendation"]
        if (
            name == "compassion"
        ):  # even a random model reads caring vs dismissive replies (their words differ)
            assert rec["layer"] in (0, 1) and any("residual patching restores" in r for r in rec["reasons"])
        else:  # no readable direction: no layer passes the probe rule, and the reason is recorded
            assert rec["error"].startswith("no recommendation: no layer passes the selection rules")
        assert f"{name} patching (2 pairs;" in printed
    assert "caring_system" in summary["compassion"]["patching"]["pairs"]["design"]
    assert "honest_system" in summary["honesty"]["patching"]["pairs"]["design"]
