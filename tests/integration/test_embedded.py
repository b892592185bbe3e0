"""The embedded SmolLM2-135M-Instruct: offline loading, chat formatting, collection, contexts."""

import torch

import lensteer
from lensteer.core import models as models
from lensteer.core.forward import response_logprob


def test_embedded_model_shape_and_fingerprint(embedded_model):
    fp = lensteer.core.model_fingerprint(embedded_model)
    assert (fp.name, fp.n_layers, fp.d_model, fp.d_vocab) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        30,
        576,
        49152,
    )
    assert not embedded_model.training


def test_warm_load_reads_the_cache_without_converting(embedded_model, monkeypatch):
    def no_conversion(*args, **kwargs):
        raise AssertionError("warm load must not dequantise the GGUF again")

    monkeypatch.setattr(models, "_convert_gguf", no_conversion)
    again = lensteer.load_model()
    assert lensteer.core.model_fingerprint(again) == lensteer.core.model_fingerprint(embedded_model)
    p = dict(again.named_parameters())
    q = dict(embedded_model.named_parameters())
    name = next(iter(p))
    assert torch.equal(p[name], q[name])


def test_chat_positions_and_single_bos(embedded_model):
    tok = embedded_model.tokenizer
    tp = lensteer.core.tokenize_prompt(
        embedded_model, lensteer.ChatPrompt(user="How do I bake bread?", response="Mix flour.")
    )
    assert tp.tokens[0] == tok.bos_token_id and tp.tokens[1] != tok.bos_token_id
    assert tok.decode(tp.tokens[slice(*tp.instruction)]) == "How do I bake bread?"
    assert tok.decode(tp.tokens[slice(*tp.post_instruction)]) == "<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(tp.tokens[slice(*tp.response)]) == "Mix flour."
    default_system = tok.decode(tp.tokens[: tp.instruction[0]])
    assert "SmolLM" in default_system  # the template's default system turn


def test_batched_collection_equals_one_at_a_time(embedded_model):
    prompts = ["Hi", "Please explain in detail how photosynthesis works in green plants.", "Name a colour."]
    layers = [0, 14, 29]
    batched = lensteer.collect_activations(embedded_model, prompts, layers=layers, batch_size=3)
    single = torch.cat([lensteer.collect_activations(embedded_model, [p], layers=layers) for p in prompts])
    rel = (batched - single).norm(dim=-1) / single.norm(dim=-1)
    assert rel.max() < 1e-4
    post = lensteer.collect_activations(embedded_model, prompts, layers=[5], position="post_instruction")
    assert post.shape == (3, 1, 6, 576)  # <|im_end|> \n <|im_start|> assist ant \n


def test_refusal_contrast_is_linearly_separable_in_middle_layers(embedded_model):
    ds = lensteer.load_dataset("refusal").stratified(
        120
    )  # every category; each row keeps its split (AUROC 0.90 / 0.94 at L12 / L24)
    report = lensteer.probe_by_layer(embedded_model, ds, layers=[0, 12, 24], batch_size=32, n_boot=50)
    assert report.metrics["probe_auroc"][1] > 0.75 and report.metrics["probe_auroc"][2] > 0.8
    assert report.metrics["dom_d_prime"][2] > report.metrics["dom_d_prime"][0]


def test_lying_few_shot_context_shifts_preference_towards_false_answers(embedded_model):
    """The embedded model follows in-context turns: the lying few-shot context raises the log-prob of the
    false answer relative to the true one (teacher-forced, no sampling; +0.07 nats/token on 24 prompts).
    Compassion's dismissive few-shot context, a large shift, is tested in test_inducers.py."""
    ds = lensteer.load_dataset("honesty").test.head(24)
    context = "lying_fewshot"

    def preference(ctx):
        bad = response_logprob(embedded_model, ds.chat_prompts(response="misaligned", context=ctx))
        good = response_logprob(embedded_model, ds.chat_prompts(response="aligned", context=ctx))
        return (bad - good).mean()

    assert preference(context) > preference(None) + 0.05


def test_locate_cli_on_the_embedded_model_patches_and_recommends(tmp_path, embedded_model):
    import json

    from lensteer.cli import main

    out = tmp_path / "locate"
    assert (
        main(
            [
                "locate",
                "--out",
                str(out),
                "--smoke",
                "--quiet",
                "--dataset",
                "refusal",
                "--layers",
                "6,12",
                "--n-pairs",
                "2",
            ]
        )
        == 0
    )
    refusal = json.loads((out / "locate.json").read_text())["refusal"]
    assert len(refusal["patching"]["pairs"]["ids"]) == 2
    assert len(refusal["patching"]["resid"]["normalized"]) == 2
    assert (out / "figures" / "patching_heads_refusal.pdf").is_file()
    # a site is recommended (layer 12 of the two offered, measured), and the causal evidence is among its reasons
    rec = refusal["recommendation"]
    assert rec["layer"] in (6, 12) and any(
        "residual patching restores" in reason for reason in rec["reasons"]
    )
