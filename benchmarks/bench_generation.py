"""Benchmark: steered vs unsteered generation on our decoding loop, and our loop vs raw HF ``generate``.

Same left-padded batches of the same chat prompts (half harmful, half harmless from ``refusal``),
greedy, a fixed number of new tokens per row for every variant: end-of-turn stopping is switched
off in both engines, so each variant does exactly ``n_prompts x max_new_tokens`` decode steps and
tokens/s compares like with like. Variants, timed in interleaved rounds (median):

* unsteered: ``lensteer.generate`` with no steering (the bridge forward + KV cache);
* SwFC: add ``scale x`` the mean residual norm along a diff-of-means direction at one mid layer,
  positions ``Window(-1, None)`` (last prompt token and every generated one);
* StTP / StMP: a probe fitted on a few prompt activations at the same layer
  (``Steering.from_probe``, threshold = the probe boundary, generated tokens);
* raw HF: ``AutoModelForCausalLM.generate`` on the same weights, loaded from the same folder.

    python benchmarks/bench_generation.py [--rounds 3] [--threads 2]
"""

import argparse
import functools
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from _machine import machine_line

import lensteer
import lensteer.steering.generation as generation
from lensteer.core import models as models
from lensteer.core.chat import length_sorted_batches, pad_id_of, tokenize_prompt


def _prompts(n: int) -> list[str]:
    ds = lensteer.load_dataset("refusal")
    return [p for pair in zip(ds.prompts, ds.paired_prompts, strict=True) for p in pair][:n]


def _steerings(model: Any, layer: int, swfc_scale: float) -> dict[str, lensteer.Steering]:
    """SwFC along a diff-of-means direction and StTP/StMP from a probe, all at ``layer``."""
    ds = lensteer.load_dataset("refusal").head(24)
    harmful = lensteer.collect_activations(model, ds.prompts, layers=[layer])[:, 0]
    harmless = lensteer.collect_activations(model, ds.paired_prompts, layers=[layer])[:, 0]
    direction = lensteer.diff_of_means(harmful, harmless, layer=layer)
    norm = float(torch.cat([harmful, harmless]).norm(dim=-1).mean())
    probe = lensteer.fit_probe(harmful, harmless, layer=layer)
    return {
        "SwFC": lensteer.Steering.from_direction(
            direction, mode="swfc", scale=swfc_scale * norm, positions=lensteer.Window(-1, None)
        ),
        "StTP": lensteer.Steering.from_probe(probe, harmful, mode="sttp"),
        "StMP": lensteer.Steering.from_probe(probe, harmful, mode="stmp"),
    }


def _ours(model: Any, prompts: list[str], steering: Any, n_new: int, batch_size: int) -> Any:
    return lensteer.generate(model, prompts, steering=steering, max_new_tokens=n_new, batch_size=batch_size)


def _hf(hf: Any, model: Any, prompts: list[str], n_new: int, batch_size: int) -> None:
    """Raw HF greedy generate on the collector's left-padded batches, exactly ``n_new`` tokens per row."""
    tokenized = [tokenize_prompt(model, p) for p in prompts]
    for _, batch in length_sorted_batches(tokenized, batch_size, pad_id_of(model)):
        with torch.inference_mode():
            out = hf.generate(
                batch.tokens,
                attention_mask=batch.attention_mask,
                max_new_tokens=n_new,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=pad_id_of(model),
            )
        assert out.shape[1] - batch.tokens.shape[1] == n_new, "HF stopped early: token counts would be unfair"


def _no_end_of_turn(model: Any) -> set[int]:  # noqa: ARG001 - replaces end_of_turn_ids(model)
    return set()


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-prompts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--swfc-scale", type=float, default=0.1, help="SwFC coefficient / mean residual norm")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(args.threads), flush=True)
    model = lensteer.load_model()
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(
        models.gguf_to_folder(models.embedded_gguf_path()), dtype=torch.float32
    ).eval()
    prompts = _prompts(args.n_prompts)
    steerings = _steerings(model, args.layer, args.swfc_scale)
    n, bs = args.max_new_tokens, args.batch_size
    variants: dict[str, Callable[[], Any]] = {"unsteered": lambda: _ours(model, prompts, None, n, bs)}
    for name, s in steerings.items():
        variants[name] = functools.partial(_ours, model, prompts, s, n, bs)
    variants["raw HF generate"] = lambda: _hf(hf, model, prompts, n, bs)

    eos = generation.end_of_turn_ids
    generation.end_of_turn_ids = _no_end_of_turn  # fixed token count: no end-of-turn stop
    try:
        shares = {
            k: _ours(model, prompts, s, n, bs).steered_share() for k, s in steerings.items()
        }  # + warm-up
        variants["raw HF generate"]()
        times: dict[str, list[float]] = {k: [] for k in variants}
        for r in range(args.rounds):  # interleaved so drift hits every variant alike
            for name, fn in variants.items():
                times[name].append(_timed(fn))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)
    finally:
        generation.end_of_turn_ids = eos
    sample = _ours(model, prompts[:2], steerings["SwFC"], 24, bs).texts  # with end-of-turn, for a sanity look

    n_tokens = len(prompts) * n
    base = statistics.median(times["unsteered"])
    print(
        f"machine: {platform.processor() or platform.machine()}, {args.threads} torch threads, torch {torch.__version__}"
    )
    print(
        f"{len(prompts)} chat prompts, batch {bs}, {n} new tokens per row ({n_tokens} tokens per run), greedy, "
        f"layer {args.layer}; median of {args.rounds} interleaved rounds\n"
    )
    print(
        "| variant | median s | tokens/s | vs unsteered | spread (max/min) | steered share |\n|---|---|---|---|---|---|"
    )
    for name, ts in times.items():
        med = statistics.median(ts)
        share = f"{shares[name]:.2f}" if name in shares else ""
        print(
            f"| {name} | {med:.2f} | {n_tokens / med:.1f} | {base / med:.2f}x | {max(ts) / min(ts):.2f} | {share} |"
        )
    hf_med = statistics.median(times["raw HF generate"])
    print(f"\nour unsteered loop vs raw HF generate: {hf_med / base:.2f}x throughput\n")
    for name, s in steerings.items():
        print(f"{name}: {s.describe()}")
    print("SwFC samples (24 tokens):", [t[:120] for t in sample])


if __name__ == "__main__":
    main()
