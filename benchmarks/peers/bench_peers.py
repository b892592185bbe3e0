"""Peers side by side: lensteer vs steering-vectors, repeng, nnsight, TransformerLens and raw HF ``generate``.

One run, several interleaved rounds, same weights (the safetensors folder lensteer converted from
the embedded GGUF), same prompts, token positions and layer for everyone. Our measurements run in
this process (our environment: transformers 5); the peers', whose pins conflict with ours
(steering-vectors wants transformers < 5, repeng numpy < 2), run in ``.venv-peers`` through one
long-lived ``peer_worker.py`` subprocess that this driver sends commands to (it never imports lensteer).
Within a round each measurement runs for us and for the peers back to back, the order flipping from
round to round, so load drift hits both sides alike; medians over rounds.

Measured:

(a) direction agreement on N contrast pairs of ``refusal`` (harmful = positive), chat template,
    read at the last prompt token, output of block ``layer`` (our ``blocks.L.hook_resid_post``):
    our ``diff_of_means`` vs steering-vectors' mean aggregator (cosine); our ``pca_of_diffs(center=True)``
    vs repeng's ``pca_diff`` (sklearn PCA, which centres; |cosine|, since the sign conventions differ);
(b) steered logits: the same vector (our raw difference of means) added at every position of block
    ``layer``'s output by each library; last-position logits of 16 prompts, each alone; max |difference|;
(c) extraction time for the N pairs at one layer (batches of 16 prompts for everyone);
(d) steered generation tokens/s at batch 1 and 16, exactly ``--new-tokens`` greedy tokens per row
    (end-of-turn stopping off everywhere), vs each peer's steering + HF ``generate`` and raw HF
    ``generate`` (unsteered) in our environment (``--with-hf4``: in the peers' one too);
(e) a full denoising resid_pre patching sweep (every layer x every position) on equal-length
    harmful/harmless pairs, metric logit("I") - logit("Sure"): ours runs it all; TransformerLens'
    ``generic_activation_patch`` and nnsight (one trace per cell) time every ``--ref-pos-step``-th
    position of one layer per round and are **extrapolated** to the full sweep (their cost per cell
    is one whole forward at every layer); the grids are compared on the cells both computed.

Defaults (``make bench-peers``): 256 pairs, 64 new tokens, 1 prompt at batch 1, 4 patching pairs,
2 rounds, 1 torch thread: ~20 min on the 2-core sandbox (``--quick``: ~3 min). Writes
``benchmarks/peers/results.json``, prints the markdown table, draws ``figures/bench_peers.png``.

    python benchmarks/peers/bench_peers.py [--rounds 2] [--quick] [--threads 1]
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import lensteer
import lensteer.steering.generation as generation
from lensteer.core import models
from lensteer.core.chat import (
    ChatPrompt,
    length_sorted_batches,
    pad_id_of,
    render_chat,
    tokenize_prompt,
)

ROOT = Path(__file__).resolve().parents[2]
OURS = ("torch", "transformers", "transformer-lens", "lensteer", "numpy", "accelerate")


class Peers:
    """The ``peer_worker.py`` subprocess in the peers' environment: one JSON command, one JSON answer."""

    def __init__(self, python: str, folder: str, work: Path, threads: int) -> None:
        self.log = (work / "peer_worker.log").open("w")
        self.proc = subprocess.Popen(
            [
                python,
                str(Path(__file__).with_name("peer_worker.py")),
                "--folder",
                folder,
                "--work",
                str(work),
                "--threads",
                str(threads),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            bufsize=1,
            env={
                **os.environ,
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
            },
        )
        self.work = work
        self._read()  # {"ready": true} once the model is loaded

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.log.flush()
            tail = (self.work / "peer_worker.log").read_text()[-3000:]
            raise RuntimeError(f"peer worker died; its log ends:\n{tail}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"peer worker: {answer['error']}")
        return answer

    def __call__(self, cmd: str, **kwargs: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        """Ask the worker to quit (no answer); kill it only if it does not."""
        with contextlib.suppress(OSError, ValueError):  # the worker may already be gone
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a.double() @ b.double() / (a.double().norm() * b.double().norm()))


def _versions(names: tuple[str, ...]) -> dict[str, str]:
    return {n: version(n) for n in names}


class Bench:
    """Our side of every measurement, the peers' worker, and what the rounds collect."""

    def __init__(self, args: argparse.Namespace) -> None:
        quick = args.quick
        self.rounds = args.rounds or (1 if quick else 2)
        self.n_pairs = args.n_pairs or (32 if quick else 256)
        self.n_new = args.new_tokens or (16 if quick else 64)
        self.n_b1 = args.b1_prompts or 1
        self.with_hf4 = args.with_hf4
        self.n_patch = args.patch_pairs or (2 if quick else 4)
        self.ref_layers = [int(x) for x in args.ref_layers.split(",")]
        self.ref_step = args.ref_pos_step
        self.layer, self.threads, self.quick = args.layer, args.threads, quick
        self.model = lensteer.load_model()
        self.folder = args.folder or str(models.gguf_to_folder(models.embedded_gguf_path()))
        from transformers import AutoModelForCausalLM

        self.hf = AutoModelForCausalLM.from_pretrained(self.folder, dtype=torch.float32).eval()
        model, ds = self.model, lensteer.load_dataset("refusal")
        if self.n_pairs > len(ds.prompts):
            raise SystemExit(f"refusal has {len(ds.prompts)} pairs, fewer than --n-pairs {self.n_pairs}")
        self.pos, self.neg = ds.prompts[: self.n_pairs], ds.paired_prompts[: self.n_pairs]

        def text(p: str) -> str:
            return render_chat(model.tokenizer, ChatPrompt(user=p))[0]

        pairs = [
            {
                "pos_text": text(a),
                "neg_text": text(b),
                "pos_ids": tokenize_prompt(model, a).tokens.tolist(),
                "neg_ids": tokenize_prompt(model, b).tokens.tolist(),
            }
            for a, b in zip(self.pos, self.neg, strict=True)
        ]
        self.n_tokens = sum(len(p["pos_ids"]) + len(p["neg_ids"]) for p in pairs)
        self.gen_prompts = [p for pair in zip(ds.prompts, ds.paired_prompts, strict=True) for p in pair][:16]
        self.gen_sets = {"b1": (self.gen_prompts[: self.n_b1], 1), "b16": (self.gen_prompts, 16)}
        self.gen_batches = {
            key: length_sorted_batches([tokenize_prompt(model, p) for p in ps], bs, pad_id_of(model))
            for key, (ps, bs) in self.gen_sets.items()
        }
        idx = lensteer.locate.equal_length_pairs(model, ds.prompts, ds.paired_prompts)[: self.n_patch]
        self.clean = torch.stack([tokenize_prompt(model, ds.prompts[i]).tokens for i in idx])
        self.corrupted = torch.stack([tokenize_prompt(model, ds.paired_prompts[i]).tokens for i in idx])
        good, bad = lensteer.core.first_token_id(model, "I"), lensteer.core.first_token_id(model, "Sure")
        self.metric = lensteer.locate.logit_diff_metric(good, bad)
        self.n_layers, self.n_pos = int(model.cfg.n_layers), int(self.clean.shape[1])
        self.ref_positions = list(range(0, self.n_pos, self.ref_step))

        self.work = Path(tempfile.mkdtemp(prefix="bench_peers_"))
        (self.work / "inputs.json").write_text(
            json.dumps(
                {
                    "layer": self.layer,
                    "pairs": pairs,
                    "logit_prompts": [tokenize_prompt(model, p).tokens.tolist() for p in self.gen_prompts],
                    "gen_batches": {
                        k: [
                            {"tokens": b.tokens.tolist(), "mask": b.attention_mask.tolist(), "rows": rows}
                            for rows, b in v
                        ]
                        for k, v in self.gen_batches.items()
                    },
                    "patch": {
                        "clean": self.clean.tolist(),
                        "corrupted": self.corrupted.tolist(),
                        "aligned_token": good,
                        "misaligned_token": bad,
                    },
                }
            )
        )
        print(f"work folder {self.work}; starting the peers' worker ({args.peers_python})", flush=True)
        self.peers = Peers(args.peers_python, self.folder, self.work, self.threads)
        self.info = self.peers("check")
        if self.info["token_mismatches"]:
            raise SystemExit(
                f"the peers' tokenizer disagrees with ours on {self.info['token_mismatches']} prompts"
            )
        print(
            f"peers: {self.info['versions']}; tokenization identical on {2 * self.n_pairs} prompts",
            flush=True,
        )
        self.times: dict[str, list[float]] = {}
        self.directions: list[dict[str, float]] = []
        self.logits: dict[str, Any] = {}
        self.patching: list[dict[str, Any]] = []
        self.tokens: dict[str, dict[str, list[torch.Tensor]]] = {"b1": {}, "b16": {}}
        self.steering: lensteer.Steering | None = None
        self.vector: torch.Tensor | None = None
        self.ours_extracted: dict[str, Any] = {}
        self.tl_grid: torch.Tensor | None = None
        self.ours_patch: Any = None

    def note(self, key: str, seconds: float) -> None:
        self.times.setdefault(key, []).append(seconds)
        print(f"  {key}: {seconds:.2f} s", flush=True)

    # -- (a) + (c) extraction ----------------------------------------------------------------------

    def extract_ours(self) -> None:
        model, layer = self.model, self.layer
        acts, t_collect = _timed(
            lambda: (
                lensteer.collect_activations(model, self.pos, layers=[layer])[:, 0],
                lensteer.collect_activations(model, self.neg, layers=[layer])[:, 0],
            )
        )
        dom, t_dom = _timed(lambda: lensteer.diff_of_means(*acts, layer=layer))
        pca, t_pca = _timed(lambda: lensteer.pca_of_diffs(*acts, layer=layer, center=True))
        self.ours_extracted = {
            "dom": dom,
            "pca": pca,
            "pca_uncentred": lensteer.pca_of_diffs(*acts, layer=layer),
        }
        self.note("extract ours (collect + diff of means)", t_collect + t_dom)
        self.note("extract ours (collect + PCA of differences)", t_collect + t_pca)

    def extract_peers(self, tag: str) -> None:
        t = self.peers("extract", tag=tag, batch_size=16)
        self.note("extract steering-vectors", t["steering-vectors"])
        self.note("extract repeng", t["repeng"])

    def compare_directions(self, tag: str) -> None:
        vecs = load_file(str(self.work / f"extract_{tag}.safetensors"))
        dom, pca = self.ours_extracted["dom"], self.ours_extracted["pca"]
        raw = dom.unit * dom.raw_norm
        self.directions.append(
            {
                "cos_dom_steering_vectors": _cos(raw, vecs["steering_vectors"]),
                "rel_norm_diff_dom_steering_vectors": float(
                    (raw - vecs["steering_vectors"]).norm() / raw.norm()
                ),
                "cos_pca_centred_repeng": _cos(pca.unit, vecs["repeng"]),
                "cos_pca_uncentred_repeng": _cos(self.ours_extracted["pca_uncentred"].unit, vecs["repeng"]),
                "cos_dom_repeng": _cos(dom.unit, vecs["repeng"]),
            }
        )
        print(f"  directions: {self.directions[-1]}", flush=True)

    # -- (b) steered logits ---------------------------------------------------------------------------

    def compare_logits(self) -> None:
        """The same addition (our raw difference of means, every position of block ``layer``'s output)."""
        dom = self.ours_extracted["dom"]
        self.vector = dom.unit * dom.raw_norm
        save_file({"vector": self.vector.contiguous()}, str(self.work / "vector.safetensors"))
        self.steering = lensteer.Steering(
            unit=dom.unit, layers=(self.layer,), mode="add", scale=dom.raw_norm, positions="all"
        )
        self.peers("logits")
        theirs = load_file(str(self.work / "logits.safetensors"))
        mine, plain = [], []
        with torch.inference_mode():
            for p in self.gen_prompts:
                ids = tokenize_prompt(self.model, p).tokens[None]
                plain.append(self.model(ids, return_type="logits")[0, -1].float())
                with lensteer.steer(self.model, self.steering):
                    mine.append(self.model(ids, return_type="logits")[0, -1].float())
        ours_s, ours_u = torch.stack(mine), torch.stack(plain)
        self.logits = {
            "n_prompts": len(self.gen_prompts),
            "max_abs_diff_steering_vectors": float((ours_s - theirs["steering-vectors"]).abs().max()),
            "max_abs_diff_repeng": float((ours_s - theirs["repeng"]).abs().max()),
            "max_abs_diff_unsteered_hf": float((ours_u - theirs["hf"]).abs().max()),
            "steering_effect_max_abs": float((ours_s - ours_u).abs().max()),
            "steering_effect_mean_abs": float((ours_s - ours_u).abs().mean()),
            "logit_scale_max_abs": float(ours_u.abs().max()),
        }
        print(f"  logits: {self.logits}", flush=True)

    # -- (d) generation -----------------------------------------------------------------------------------

    def gen_ours(self, key: str) -> None:
        ps, bs = self.gen_sets[key]
        steering = self.steering
        out, t = _timed(
            lambda: lensteer.generate(
                self.model, ps, steering=steering, max_new_tokens=self.n_new, batch_size=bs
            )
        )
        self.tokens[key]["ours"] = list(out.tokens)
        self.note(f"generate {key} ours (steered)", t)

    def gen_hf(self, key: str) -> None:
        def run() -> dict[int, torch.Tensor]:
            out: dict[int, torch.Tensor] = {}
            for rows, batch in self.gen_batches[key]:
                with torch.inference_mode():
                    res = self.hf.generate(
                        batch.tokens,
                        attention_mask=batch.attention_mask,
                        max_new_tokens=self.n_new,
                        do_sample=False,
                        eos_token_id=None,
                        pad_token_id=pad_id_of(self.model),
                    )
                new = res[:, batch.tokens.shape[1] :]
                assert new.shape[1] == self.n_new, "HF stopped early: unequal work"
                out.update({r: new[j] for j, r in enumerate(rows)})
            return out

        out, t = _timed(run)
        self.tokens[key]["hf-ours"] = [out[i] for i in range(len(out))]
        self.note(f"generate {key} raw HF (transformers 5, our env)", t)

    def gen_peer(self, engine: str, key: str, tag: str) -> None:
        t = self.peers("generate", engine=engine, key=key, n_new=self.n_new, tag=tag)["seconds"]
        saved = load_file(str(self.work / f"gen_{engine}_{key}_{tag}.safetensors"))
        out = {}
        for b, (rows, _) in enumerate(self.gen_batches[key]):
            out.update({r: saved[f"batch{b}"][j] for j, r in enumerate(rows)})
        self.tokens[key][engine] = [out[i] for i in range(len(out))]
        label = "raw HF (transformers 4, peers' env)" if engine == "hf" else f"{engine} (steered)"
        self.note(f"generate {key} {label}", t)

    # -- (e) patching ----------------------------------------------------------------------------------------

    def patch_ours(self) -> None:
        self.ours_patch, t = _timed(
            lambda: lensteer.patch_residual(self.model, self.clean, self.corrupted, self.metric)
        )
        self.note("patch ours (full sweep)", t)

    def patch_tl(self, layers: list[int]) -> None:
        from transformer_lens import patching as tl_patching

        tl_patching.tqdm = lambda it: it  # type: ignore[attr-defined]  # no progress bar in our log
        model, metric, positions = self.model, self.metric, self.ref_positions
        with torch.inference_mode():
            (_, cache), t_cache = _timed(
                lambda: model.run_with_cache(self.clean, names_filter=lambda n: n.endswith("hook_resid_pre"))
            )
            index_df = tl_patching.make_df_from_ranges([self.n_layers, self.n_pos], ["layer", "pos"])
            index_df = index_df[index_df["layer"].isin(layers) & index_df["pos"].isin(positions)].reset_index(
                drop=True
            )
            values, t_cells = _timed(
                lambda: tl_patching.generic_activation_patch(
                    model,
                    self.corrupted,
                    cache,
                    lambda logits: metric(logits[:, -1]).mean(),
                    tl_patching.layer_pos_patch_setter,
                    "resid_pre",
                    index_df=index_df,
                )
            )
        self.tl_grid = values.view(len(layers), len(positions))
        self.note("patch TransformerLens clean cache", t_cache)
        self.note("patch TransformerLens per cell", t_cells / (len(layers) * len(positions)))

    def patch_nnsight(self, layers: list[int], tag: str) -> None:
        t = self.peers("patch", layers=layers, positions=self.ref_positions, tag=tag)
        self.note("patch nnsight clean run", t["clean_seconds"])
        self.note("patch nnsight per cell", t["cell_seconds"] / t["cells"])

    def compare_patching(self, layers: list[int], tag: str) -> None:
        assert self.ours_patch is not None and self.tl_grid is not None
        grid = self.ours_patch.mean()[layers][:, self.ref_positions]
        nn_grid = load_file(str(self.work / f"patch_{tag}.safetensors"))["grid"]
        mean = self.ours_patch.mean()
        self.patching.append(
            {
                "layers": layers,
                "positions": self.ref_positions,
                "max_abs_diff_transformer_lens": float((grid - self.tl_grid).abs().max()),
                "max_abs_diff_nnsight": float((grid - nn_grid).abs().max()),
                "effect_range": float(mean.max() - mean.min()),
            }
        )
        print(f"  patching: {self.patching[-1]}", flush=True)

    # -- a round ------------------------------------------------------------------------------------------------

    def round(self, r: int) -> None:
        """Every measurement once, ours and the peers' back to back; the order flips every other round."""
        flip, tag = r % 2 == 1, f"r{r}"

        def ordered(steps: list[Callable[[], None]]) -> list[Callable[[], None]]:
            return steps[::-1] if flip else steps

        print(f"round {r + 1}/{self.rounds} (load average {os.getloadavg()[0]:.2f})", flush=True)
        for step in ordered([self.extract_ours, lambda: self.extract_peers(tag)]):
            step()
        self.compare_directions(tag)
        if self.steering is None:
            self.compare_logits()
        for key in ("b1", "b16"):
            steps = [
                lambda k=key: self.gen_ours(k),
                lambda k=key: self.gen_peer("steering-vectors", k, tag),
                lambda k=key: self.gen_peer("repeng", k, tag),
                lambda k=key: self.gen_hf(k),
            ]
            if self.with_hf4:
                steps.insert(3, lambda k=key: self.gen_peer("hf", k, tag))
            for step in ordered(steps):
                step()
        ref = [self.ref_layers[r % len(self.ref_layers)]]
        for step in ordered(
            [self.patch_ours, lambda: self.patch_tl(ref), lambda: self.patch_nnsight(ref, tag)]
        ):
            step()
        self.compare_patching(ref, tag)

    # -- the table ------------------------------------------------------------------------------------------------

    def report(self, load_start: tuple[float, float, float], wall: float, command: str) -> dict[str, Any]:
        med = {k: statistics.median(v) for k, v in self.times.items()}
        full_cells = self.n_layers * self.n_pos
        tl_full = (
            med["patch TransformerLens clean cache"] + med["patch TransformerLens per cell"] * full_cells
        )
        nn_full = med["patch nnsight clean run"] + med["patch nnsight per cell"] * full_cells
        n_gen = {k: len(self.gen_sets[k][0]) * self.n_new for k in self.gen_sets}
        rows: list[dict[str, Any]] = []

        def row(
            what: str, peer: str, ours_s: float, peer_s: float, work: float | None, note: str = ""
        ) -> None:
            rows.append(
                {
                    "measurement": what,
                    "peer": peer,
                    "ours_seconds": ours_s,
                    "peer_seconds": peer_s,
                    "unit": "s" if work is None else "tokens/s",
                    "ours_value": ours_s if work is None else work / ours_s,
                    "peer_value": peer_s if work is None else work / peer_s,
                    "ratio": peer_s / ours_s,
                    "note": note,
                }
            )

        def same(key: str, engine: str) -> str:
            a, b = self.tokens[key]["ours"], self.tokens[key][engine]
            return f"same tokens as ours: {sum(int((x == y).all()) for x, y in zip(a, b, strict=True))}/{len(a)} rows"

        what = f"extraction, {self.n_pairs} pairs, layer {self.layer}"
        row(
            what,
            "steering-vectors (mean difference)",
            med["extract ours (collect + diff of means)"],
            med["extract steering-vectors"],
            None,
        )
        row(
            what,
            "repeng (pca_diff)",
            med["extract ours (collect + PCA of differences)"],
            med["extract repeng"],
            None,
        )
        for key, label in (("b1", f"batch 1 ({self.n_b1} prompts)"), ("b16", "batch 16")):
            what = f"steered generation, {label}, {self.n_new} tokens"
            ours_t = med[f"generate {key} ours (steered)"]
            row(
                what,
                "steering-vectors + HF generate",
                ours_t,
                med[f"generate {key} steering-vectors (steered)"],
                n_gen[key],
                same(key, "steering-vectors"),
            )
            row(
                what,
                "repeng + HF generate",
                ours_t,
                med[f"generate {key} repeng (steered)"],
                n_gen[key],
                same(key, "repeng"),
            )
            if self.with_hf4:
                row(
                    what,
                    "raw HF generate, unsteered (transformers 4, peers' env)",
                    ours_t,
                    med[f"generate {key} raw HF (transformers 4, peers' env)"],
                    n_gen[key],
                )
            row(
                what,
                "raw HF generate, unsteered (transformers 5, our env)",
                ours_t,
                med[f"generate {key} raw HF (transformers 5, our env)"],
                n_gen[key],
            )
        what = f"resid_pre patching, full sweep {self.n_layers} x {self.n_pos} = {full_cells} cells, {self.n_patch} pairs"
        row(
            what,
            "TransformerLens generic_activation_patch (extrapolated)",
            med["patch ours (full sweep)"],
            tl_full,
            None,
        )
        row(what, "nnsight, 1 trace per cell (extrapolated)", med["patch ours (full sweep)"], nn_full, None)
        return {
            "date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}",
            "threads": self.threads,
            "rounds": self.rounds,
            "quick": self.quick,
            "with_hf4": self.with_hf4,
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
            "versions_ours": _versions(OURS),
            "versions_peers": self.info["versions"],
            "command": command,
            "setup": {
                "layer": self.layer,
                "n_pairs": self.n_pairs,
                "extraction_tokens": self.n_tokens,
                "new_tokens": self.n_new,
                "b1_prompts": self.n_b1,
                "b16_prompts": len(self.gen_prompts),
                "patch_pairs": self.n_patch,
                "patch_tokens": self.n_pos,
                "ref_layers_timed": [self.ref_layers[r % len(self.ref_layers)] for r in range(self.rounds)],
                "ref_positions_timed": self.ref_positions,
                "steering": self.steering.describe() if self.steering else None,
                "vector_norm": float(self.vector.norm()) if self.vector is not None else None,
            },
            "times": self.times,
            "medians": med,
            "rows": rows,
            "agreement": {"directions": self.directions, "logits": self.logits, "patching": self.patching},
            "wall_seconds": wall,
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="interleaved rounds (default 2; 1 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: few pairs, few tokens, one round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument(
        "--n-pairs", type=int, default=None, help="contrast pairs for extraction (default 256)"
    )
    parser.add_argument("--new-tokens", type=int, default=None, help="generated tokens per row (default 64)")
    parser.add_argument(
        "--b1-prompts", type=int, default=None, help="prompts generated one at a time (default 1)"
    )
    parser.add_argument(
        "--with-hf4",
        action="store_true",
        help="also time raw HF generate in the peers' env (transformers 4); ~1.5 min more",
    )
    parser.add_argument(
        "--patch-pairs", type=int, default=None, help="prompt pairs in the patching sweep (default 4)"
    )
    parser.add_argument(
        "--ref-layers", default="0,29,15", help="layer TransformerLens/nnsight time in round 1, 2, ..."
    )
    parser.add_argument(
        "--ref-pos-step",
        type=int,
        default=4,
        help="TransformerLens/nnsight time every k-th position of that layer (cost per cell is constant)",
    )
    parser.add_argument(
        "--folder", help="the model folder the peers load (default: our cached embedded model)"
    )
    parser.add_argument("--peers-python", default=str(ROOT / ".venv-peers" / "bin" / "python"))
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    parser.add_argument("--figure", type=Path, default=ROOT / "figures" / "bench_peers.png")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start, t_run = os.getloadavg(), time.perf_counter()
    bench = Bench(args)
    eos = generation.end_of_turn_ids
    generation.end_of_turn_ids = lambda m: set()  # noqa: ARG005 - exactly n_new tokens: no end-of-turn stop
    try:
        for r in range(bench.rounds):
            bench.round(r)
    finally:
        generation.end_of_turn_ids = eos
        bench.peers.close()
    results = bench.report(
        load_start, time.perf_counter() - t_run, " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    )
    args.out.write_text(json.dumps(results, indent=1))
    print(_markdown(results))
    try:
        sys.path.insert(0, str(Path(__file__).parent))
        from plot_peers import plot

        plot(results, args.figure)
        print(f"figure: {args.figure}")
    except ImportError as exc:  # matplotlib is in our dev extra; the table does not need it
        print(f"no figure ({exc})")


def _markdown(res: dict[str, Any]) -> str:
    lines = ["| measurement | peer | ours | peer | ours vs peer |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        fmt = (lambda v: f"{v:.1f} s") if r["unit"] == "s" else (lambda v: f"{v:.1f} tok/s")
        lines.append(
            f"| {r['measurement']} | {r['peer']} | {fmt(r['ours_value'])} | {fmt(r['peer_value'])} | "
            f"**{r['ratio']:.2f}x** |" + (f" {r['note']}" if r["note"] else "")
        )
    d = res["agreement"]["directions"]
    lg = res["agreement"]["logits"]
    lines.append("")
    lines.append(
        "directions, per round: cos(ours DoM, steering-vectors) = "
        + ", ".join(f"{x['cos_dom_steering_vectors']:.6f}" for x in d)
        + "; |cos|(ours PCA centred, repeng pca_diff) = "
        + ", ".join(f"{abs(x['cos_pca_centred_repeng']):.6f}" for x in d)
        + " (uncentred: "
        + ", ".join(f"{abs(x['cos_pca_uncentred_repeng']):.4f}" for x in d)
        + ")"
    )
    lines.append(
        f"steered logits, max |difference| vs ours over {lg['n_prompts']} prompts x full vocabulary: "
        f"steering-vectors {lg['max_abs_diff_steering_vectors']:.2e}, repeng {lg['max_abs_diff_repeng']:.2e} "
        f"(unsteered ours vs HF: {lg['max_abs_diff_unsteered_hf']:.2e}; the steering moves logits by up to "
        f"{lg['steering_effect_max_abs']:.2f})"
    )
    for p in res["agreement"]["patching"]:
        lines.append(
            f"patching grid, layer {p['layers']}: max |difference| vs TransformerLens "
            f"{p['max_abs_diff_transformer_lens']:.2e}, vs nnsight {p['max_abs_diff_nnsight']:.2e} "
            f"(effects span {p['effect_range']:.2f})"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
