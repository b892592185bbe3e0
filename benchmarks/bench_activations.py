"""Benchmark: activation collection vs a plain forward pass over the same tokens, side by side.

Throughput ratio = plain forward time / collection time on the same left-padded batches of the
same 256 chat prompts (goal >= 0.9). Collecting the last layer runs the whole model, so that ratio
is the hook + tokenization overhead; collecting two middle layers stops the forward early.
Peak memory of collecting 2 layers for 256 prompts is measured in a fresh subprocess (max RSS
growth), next to the size a full ``run_with_cache`` of the same tokens would need.

    python benchmarks/bench_activations.py [--rounds 3] [--threads 2]
"""

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
from _machine import machine_line

import lensteer
from lensteer.core.chat import length_sorted_batches, pad_id_of, tokenize_prompt


def _prompts(n: int) -> list[str]:
    ds = lensteer.load_dataset("refusal")
    return (ds.prompts + ds.paired_prompts)[:n]


def _plain_forward(model, prompts, batch_size):
    tokenized = [tokenize_prompt(model, p) for p in prompts]
    for _, batch in length_sorted_batches(tokenized, batch_size, pad_id_of(model)):  # the collector's batches
        with torch.inference_mode():
            model(batch.tokens, attention_mask=batch.attention_mask)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def memory_child(n_prompts: int, threads: int, mode: str) -> None:
    """Peak RSS growth over the loaded model of a plain forward sweep or of collecting 2 layers."""
    torch.set_num_threads(threads)
    model = lensteer.load_model()
    prompts = _prompts(n_prompts)
    n_tokens = sum(tokenize_prompt(model, p).n_tokens for p in prompts)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result_mb = 0.0
    if mode == "forward":
        _plain_forward(model, prompts, 16)
    else:
        acts = lensteer.collect_activations(model, prompts, layers=[10, 20], batch_size=16)
        result_mb = acts.numel() * 4 / 2**20
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "peak_rss_growth_mb": (after - before) / 1024,
                "result_mb": result_mb,
                "full_cache_estimate_mb": len(model.hook_dict) * n_tokens * model.cfg.d_model * 4 / 2**20,
                "n_tokens": n_tokens,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-prompts", type=int, default=256)
    parser.add_argument("--memory-child", choices=["forward", "collect"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.n_prompts, args.threads, args.memory_child)
        return
    torch.set_num_threads(args.threads)
    print(machine_line(args.threads), flush=True)
    model = lensteer.load_model()
    prompts = _prompts(args.n_prompts)
    n_layers = model.cfg.n_layers
    variants = {
        "plain forward": lambda: _plain_forward(model, prompts, 16),
        f"collect layer {n_layers - 1} (full depth)": lambda: lensteer.collect_activations(
            model, prompts, layers=[n_layers - 1]
        ),
        "collect layers 10, 14 (stops early)": lambda: lensteer.collect_activations(
            model, prompts, layers=[10, 14]
        ),
    }
    variants["plain forward"]()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):  # interleaved so drift hits every variant alike
        for name, fn in variants.items():
            times[name].append(_timed(fn))
    base = statistics.median(times["plain forward"])
    print(
        f"machine: {platform.processor() or platform.machine()}, {args.threads} torch threads, torch {torch.__version__}"
    )
    print(f"{args.n_prompts} chat prompts, batch 16, median of {args.rounds} interleaved rounds\n")
    print("| variant | median s | throughput vs plain forward |\n|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.2f} | {base / med:.2f}x |")
    mem = {}
    for mode in ("forward", "collect"):
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--memory-child",
                mode,
                "--n-prompts",
                str(args.n_prompts),
                "--threads",
                str(args.threads),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        mem[mode] = json.loads(child.stdout.strip().splitlines()[-1])
    c = mem["collect"]
    print(
        f"\nmemory over the loaded model, {args.n_prompts} prompts ({c['n_tokens']} tokens), fresh processes: "
        f"plain forward sweep peak +{mem['forward']['peak_rss_growth_mb']:.0f} MB; collecting 2 layers peak "
        f"+{c['peak_rss_growth_mb']:.0f} MB (result tensor {c['result_mb']:.1f} MB); a full run_with_cache of "
        f"the same tokens would hold ~{c['full_cache_estimate_mb'] / 1024:.1f} GB"
    )


if __name__ == "__main__":
    main()
