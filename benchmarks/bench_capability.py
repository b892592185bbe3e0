"""Benchmark: multiple-choice scoring with the question computed once per item vs once per option.

``mc_accuracy`` scores each option as the reply to its question. Before, every option ran with its
question (480 rows for the 120 items, ``batch_size`` rows per forward, through the bridge); now an
item's options are one batch whose shared question runs once at batch 1 through the plain view and
is copied to every option (``teacher_forced_states``). Both timed side by side in interleaved rounds
(median) on the embedded model, unsteered and under a steering, same scores checked (1e-5).

    python benchmarks/bench_capability.py [--items 24] [--rounds 3] [--threads 1]
"""

import argparse
import os
import statistics
import time
from typing import Any

import torch
from _machine import machine_line

import lensteer
from lensteer.evaluate.capability import load_mc_items, mc_accuracy


def _old(model: Any, items: list[Any], steering: Any) -> Any:
    """One pass per option through the bridge (no plain view: the implementation before)."""
    os.environ["LENSTEER_DECODE"] = "bridge"
    try:
        return mc_accuracy(model, items, steering=steering)
    finally:
        os.environ.pop("LENSTEER_DECODE", None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--items", type=int, default=24, help="the first items of each subject in turn")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(args.threads), flush=True)
    model = lensteer.load_model()
    every = load_mc_items()
    by_subject: dict[str, list[Any]] = {}
    for it in every:
        by_subject.setdefault(it.category, []).append(it)
    items = [it for group in zip(*by_subject.values(), strict=False) for it in group][: args.items]
    unit = torch.randn(int(model.cfg.d_model), generator=torch.Generator().manual_seed(0))
    steering = lensteer.Steering(
        unit=unit / unit.norm(), layers=(15,), mode="add", scale=4.0, positions=lensteer.Window(1, None)
    )
    for label, s in (("unsteered", None), ("steered (add, layer 15)", steering)):
        times: dict[str, list[float]] = {"one pass per option": [], "question once": []}
        scores = {}
        for _ in range(args.rounds):
            for name, fn in (("one pass per option", _old), ("question once", mc_accuracy)):
                start = time.perf_counter()
                result = fn(model, items, steering=s) if name == "question once" else fn(model, items, s)
                times[name].append(time.perf_counter() - start)
                scores[name] = torch.tensor([v for row in result.option_logprobs for v in row])
        diff = float((scores["one pass per option"] - scores["question once"]).abs().max())
        old, new = (statistics.median(times[n]) for n in times)
        n_opts = sum(len(it.options) for it in items)
        print(
            f"{label}: {len(items)} items ({n_opts} options), median of {args.rounds} interleaved rounds: "
            f"one pass per option {old:.2f} s, question once {new:.2f} s, speed-up {old / new:.2f}x; "
            f"max score difference {diff:.1e}",
            flush=True,
        )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
