"""Benchmark: generation with a shared prompt prefix computed once vs once per row.

The study generates under misaligning few-shot contexts: every prompt of a batch starts with the
same few hundred tokens. :func:`lensteer.generate` runs that prefix once (batch 1), copies its keys
and values to every row and lays the batch out as ``[prefix][pads][own tokens]``. This benchmark
times it against the plain left-padded prefill (sharing switched off) on the same batches, side by
side in interleaved rounds, unsteered and with an SwFC steering at every position, and checks that
both give the same tokens.

    python benchmarks/bench_prefix.py [--rounds 3] [--threads 2] [--n 16] [--new 32]
"""

import argparse
import platform
import statistics
import time

import torch
from _machine import machine_line

import lensteer
import lensteer.steering.prefix as prefix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n", type=int, default=16, help="prompts (one batch)")
    parser.add_argument("--new", type=int, default=32, help="new tokens per prompt")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(args.threads), flush=True)
    model = lensteer.load_model()
    ds = lensteer.load_dataset("compassion")
    prompts = ds.test.head(args.n).chat_prompts(context="dismissive_fewshot")
    acts = lensteer.collect_activations(
        model,
        ds.train.head(16).chat_prompts(response="aligned")
        + ds.train.head(16).chat_prompts(response="misaligned"),
        layers=[13],
        position="response_mean",
    )[:, 0]
    direction = lensteer.diff_of_means(acts[:16], acts[16:], layer=13)
    ref = lensteer.steering.reference_norm(model, ds.val.head(4).prompts, 13)
    swfc = lensteer.Steering.from_direction(
        direction, mode="swfc", scale=0.25, relative=True, reference_norm=ref
    )
    default_min = prefix.MIN_SHARED_PREFIX
    times: dict[str, list[float]] = {}
    outputs: dict[str, tuple[torch.Tensor, ...]] = {}
    for _ in range(args.rounds):
        for label, steering in (("unsteered", None), ("SwFC", swfc)):
            for mode, minimum in (("shared", default_min), ("per-row", 10**9)):
                prefix.MIN_SHARED_PREFIX = minimum
                start = time.perf_counter()
                out = lensteer.generate(
                    model, prompts, steering=steering, max_new_tokens=args.new, batch_size=args.n
                )
                times.setdefault(f"{label} {mode}", []).append(time.perf_counter() - start)
                outputs[f"{label} {mode}"] = out.tokens
    prefix.MIN_SHARED_PREFIX = default_min
    lens = [len(lensteer.core.tokenize_prompt(model, p).tokens) for p in prompts]
    print(
        f"{platform.processor() or platform.machine()}, torch threads {args.threads}; {args.n} prompts of "
        f"{min(lens)}-{max(lens)} tokens (shared few-shot prefix), {args.new} new tokens, {args.rounds} rounds"
    )
    for label in ("unsteered", "SwFC"):
        shared, per_row = (
            statistics.median(times[f"{label} shared"]),
            statistics.median(times[f"{label} per-row"]),
        )
        same = all(
            torch.equal(a, b)
            for a, b in zip(outputs[f"{label} shared"], outputs[f"{label} per-row"], strict=True)
        )
        print(
            f"{label:9s}: shared prefix {shared:.2f} s, per row {per_row:.2f} s -> {per_row / shared:.2f}x; "
            f"same tokens: {same}"
        )


if __name__ == "__main__":
    main()
