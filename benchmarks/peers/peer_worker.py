"""The peers' side of ``bench_peers.py``: runs in ``.venv-peers`` (transformers < 5, numpy < 2) and never
imports lensteer.

The driver starts this process once, writes ``inputs.json`` (token ids and chat-rendered texts of the
same prompts it uses itself) and ``vector.safetensors`` into a work folder, then sends one JSON
command per line on stdin; each answer is one JSON line on the original stdout (everything the
libraries print goes to stderr). Tensors go through safetensors files in the work folder.

Same weights as ours: the safetensors folder lensteer converted from the embedded GGUF, loaded with
plain ``AutoModelForCausalLM``. Two conventions of that folder need mapping for transformers 4.x:
it was written by transformers 5, whose config keeps the RoPE base in ``rope_parameters``
(4.x reads ``rope_theta`` and would silently use 10,000 instead of 100,000), and whose tokenizer
class ``TokenizersBackend`` 4.x does not know (the same ``tokenizer.json`` loads as
``PreTrainedTokenizerFast``).

Layer convention (ours ``blocks.L.hook_resid_post`` = output of decoder block L):

* steering-vectors: ``layers=[L]`` with the default ``layer_type="decoder_block"`` reads and adds at
  the output of ``model.model.layers[L]``; ``read_token_index=-1`` with pad-aware indices is our
  ``position="last"``.
* repeng 0.4.0: ``hidden_layers=[L]`` reads ``hidden_states[L + 1]`` (the output of block L) at the
  last non-pad token; ``ControlModel(model, [L])`` adds to the output of ``model.model.layers[L]``.
* nnsight: ``model.model.layers[L].output``; resid_pre L is ``layers[L - 1].output`` (L >= 1) or
  ``embed_tokens.output`` (L = 0), the input of block L.
"""

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

PEERS = (
    "steering-vectors",
    "repeng",
    "nnsight",
    "transformers",
    "torch",
    "numpy",
    "accelerate",
    "scikit-learn",
)


def _load(folder: str) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    config = AutoConfig.from_pretrained(folder)
    rope = getattr(config, "rope_parameters", None) or {}
    if "rope_theta" in rope:  # transformers 5 config -> 4.x field (see the module docstring)
        config.rope_theta = float(rope["rope_theta"])
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # exactly max_new_tokens per row, as in our engine
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


class Worker:
    def __init__(self, folder: str, work: Path) -> None:
        self.work = work
        self.inputs = json.loads((work / "inputs.json").read_text())
        self.model, self.tokenizer = _load(folder)
        self.layer = int(self.inputs["layer"])

    # -- helpers ---------------------------------------------------------------------------------

    def _vector(self) -> torch.Tensor:
        return load_file(str(self.work / "vector.safetensors"))["vector"].float()

    @contextlib.contextmanager
    def _steered(self, engine: str) -> Any:
        """The peer's own way of adding ``vector`` at the output of block ``layer`` (every position)."""
        vec = self._vector()
        if engine == "hf":
            yield self.model
        elif engine == "steering-vectors":
            from steering_vectors import SteeringVector

            with SteeringVector({self.layer: vec}, "decoder_block").apply(self.model):
                yield self.model
        elif engine == "repeng":
            from repeng import ControlModel, ControlVector

            wrapped = ControlModel(self.model, [self.layer])  # wraps block `layer` in place
            try:
                wrapped.set_control(
                    ControlVector(model_type="llama", directions={self.layer: vec.numpy()}), coeff=1.0
                )
                yield wrapped
            finally:
                wrapped.reset()
                wrapped.unwrap()
        else:
            raise ValueError(f"unknown engine {engine!r}")

    # -- commands ----------------------------------------------------------------------------------

    def check(self) -> dict[str, Any]:
        """Versions, and whether the peers' tokenizer gives our token ids for our rendered texts."""
        mismatched = 0
        for pair in self.inputs["pairs"]:
            for text, ids in ((pair["pos_text"], pair["pos_ids"]), (pair["neg_text"], pair["neg_ids"])):
                mismatched += self.tokenizer(text)["input_ids"] != ids
        return {
            "versions": {p: version(p) for p in PEERS},
            "python": platform.python_version(),
            "token_mismatches": int(mismatched),
            "rope_theta": float(self.model.config.rope_theta),
        }

    def extract(self, tag: str, batch_size: int) -> dict[str, Any]:
        """steering-vectors' mean difference and repeng's pca_diff on the same pairs, timed apart."""
        from repeng import ControlVector, DatasetEntry
        from steering_vectors import train_steering_vector

        pairs = [(p["pos_text"], p["neg_text"]) for p in self.inputs["pairs"]]
        start = time.perf_counter()
        sv = train_steering_vector(
            self.model, self.tokenizer, pairs, layers=[self.layer], read_token_index=-1, batch_size=batch_size
        )
        t_sv = time.perf_counter() - start
        start = time.perf_counter()
        # repeng batches strings, a pair's two prompts side by side: 2 x batch_size strings = batch_size pairs
        cv = ControlVector.train(
            self.model,
            self.tokenizer,
            [DatasetEntry(positive=a, negative=b) for a, b in pairs],
            hidden_layers=[self.layer],
            batch_size=2 * batch_size,
            method="pca_diff",
        )
        t_rp = time.perf_counter() - start
        save_file(
            {
                "steering_vectors": sv.layer_activations[self.layer].float().contiguous(),
                "repeng": torch.from_numpy(cv.directions[self.layer]).float().contiguous(),
            },
            str(self.work / f"extract_{tag}.safetensors"),
        )
        return {"steering-vectors": t_sv, "repeng": t_rp}

    def logits(self) -> dict[str, Any]:
        """Last-position logits of each prompt alone (no padding), unsteered and steered by each peer."""
        out = {}
        for engine in ("hf", "steering-vectors", "repeng"):
            rows = []
            with self._steered(engine) as model, torch.inference_mode():
                for ids in self.inputs["logit_prompts"]:
                    rows.append(model(torch.tensor([ids])).logits[0, -1].float())
            out[engine] = torch.stack(rows)
        save_file(out, str(self.work / "logits.safetensors"))
        return {}

    def generate(self, engine: str, key: str, n_new: int, tag: str) -> dict[str, Any]:
        """Greedy HF ``generate`` under the peer's steering on the driver's left-padded batches."""
        batches = self.inputs["gen_batches"][key]
        tokens = {}
        start = time.perf_counter()
        with self._steered(engine) as model, torch.inference_mode():
            for b, batch in enumerate(batches):
                ids, mask = torch.tensor(batch["tokens"]), torch.tensor(batch["mask"])
                out = model.generate(ids, attention_mask=mask, max_new_tokens=n_new, do_sample=False)
                new = out[:, ids.shape[1] :]
                if new.shape[1] != n_new:
                    raise RuntimeError(
                        f"{engine} stopped after {new.shape[1]} of {n_new} tokens: unequal work"
                    )
                tokens[f"batch{b}"] = new.contiguous()
        elapsed = time.perf_counter() - start
        save_file(tokens, str(self.work / f"gen_{engine}_{key}_{tag}.safetensors"))
        return {"seconds": elapsed}

    def patch(self, layers: list[int], positions: list[int], tag: str) -> dict[str, Any]:
        """nnsight denoising resid_pre patching: one trace per (layer, position) cell, all pairs batched."""
        from nnsight import LanguageModel

        lm = LanguageModel(self.model, tokenizer=self.tokenizer)
        spec = self.inputs["patch"]
        clean, corrupted = torch.tensor(spec["clean"]), torch.tensor(spec["corrupted"])
        good, bad = int(spec["aligned_token"]), int(spec["misaligned_token"])

        def site(layer: int) -> Any:  # resid_pre of block `layer` = output of what feeds it
            return lm.model.embed_tokens if layer == 0 else lm.model.layers[layer - 1]

        # nnsight runs the traced block itself: results go into containers that exist before it
        clean_acts: dict[int, Any] = {}
        metric: list[Any] = []
        start = time.perf_counter()
        with torch.no_grad():  # nnsight intervenes from another thread: no inference-mode tensors
            with lm.trace(clean):  # the clean run's resid_pre at the layers wanted, in execution order
                for layer in sorted(layers):
                    clean_acts[layer] = site(layer).output.save()
            clean_seconds = time.perf_counter() - start
            start = time.perf_counter()
            for layer in layers:
                for pos in positions:
                    with lm.trace(corrupted):
                        site(layer).output[:, pos] = clean_acts[layer][:, pos]
                        last = lm.output.logits[:, -1]
                        metric.append((last[:, good] - last[:, bad]).mean().save())
        cell_seconds = time.perf_counter() - start
        grid = torch.tensor([float(m) for m in metric]).view(len(layers), len(positions))
        save_file({"grid": grid}, str(self.work / f"patch_{tag}.safetensors"))
        return {
            "clean_seconds": clean_seconds,
            "cell_seconds": cell_seconds,
            "cells": len(layers) * len(positions),
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--folder", required=True, help="the safetensors model folder (ours, shared)")
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything the libraries print goes to stderr; answers keep the real stdout
    sys.stdout = sys.stderr
    torch.set_num_threads(args.threads)
    worker = Worker(args.folder, args.work)
    reply.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        cmd = json.loads(line)
        name = cmd.pop("cmd")
        if name == "quit":
            break
        try:
            answer = getattr(worker, name)(**cmd)
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        reply.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
