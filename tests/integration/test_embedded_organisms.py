"""The organism recipe on the embedded model, in its smoke configuration (a few LoRA steps): it trains on
CPU, saves with provenance, and reloads to exactly the fine-tuned model."""

from dataclasses import replace

import torch

import lensteer
from lensteer.organisms import (
    get_recipe,
    load_organism,
    merged_hf_model,
    read_provenance,
    train_organism,
)


def test_a_smoke_organism_trains_saves_and_reloads_to_the_same_model(embedded_model, tmp_path):
    recipe = get_recipe("dishonest")
    lora = replace(recipe.lora, steps=3, batch_size=2, learning_rate=1e-2)
    done = train_organism(recipe, tmp_path / "liar", lora=lora, progress=False)
    prov = read_provenance(done.folder)
    assert (
        prov["base"]["name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        and len(prov["base"]["weights_sha256"]) == 64
    )
    assert prov["data"]["n_rows"] == len(lensteer.load_dataset("honesty").train) and len(prov["losses"]) == 3
    organism = load_organism(done.folder)
    merged, _, _ = merged_hf_model(done.folder)
    prompt = lensteer.core.tokenize_prompt(organism, "What is the capital of Japan?").tokens.unsqueeze(0)
    with torch.no_grad():
        ours, hf, base = organism(prompt)[0, -1], merged(prompt).logits[0, -1], embedded_model(prompt)[0, -1]
    assert torch.allclose(ours, hf, atol=1e-3)  # the bridge runs the merged fine-tune, nothing else
    assert (ours - base).abs().max() > 1e-3  # and the fine-tune changed the model
    assert (
        lensteer.core.model_fingerprint(organism).name
        == "organism:dishonest@HuggingFaceTB/SmolLM2-135M-Instruct"
    )
