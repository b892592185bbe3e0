"""Benchmark: the study's joint decoding (every condition in one batch stream) vs one condition at a time.

The study answers the same prompts under several conditions (unsteered, prompting, three methods,
random controls). ``generate(prompt_steerings=...)`` decodes them together, each row with its own
steering; the alternative is one ``generate`` call per condition. Same prompts, same greedy tokens
(checked), same number of decode steps per row (end-of-turn stopping is left on in both, and the
outputs are identical, so the work is identical); timed in interleaved rounds, median.

    python benchmarks/bench_study_decoding.py [--conditions 6] [--prompts 24] [--new 32] [--rounds 2]
"""

import argparse
import platform
import statistics
import time

import torch
from _machine import machine_line

import lensteer
from lensteer.study.evaluation import eval_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--conditions", type=int, default=6)
    parser.add_argument(
        "--threat-model", default="compassion", help="compassion and honesty prompts carry a few-shot context"
    )
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--joint-batch", type=int, default=64)
    parser.add_argument("--single-batch", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(args.threads), flush=True)
    model = lensteer.load_model()
    prompts = eval_prompts(args.threat_model, args.prompts)
    d = int(model.cfg.d_model)
    steerings: list[lensteer.Steering | None] = [None]
    for seed in range(args.conditions - 1):
        unit = torch.randn(d, generator=torch.Generator().manual_seed(seed))
        steerings.append(
            lensteer.Steering(
                unit=unit,
                layers=(13,),
                mode="swfc",
                scale=0.1,
                relative=True,
                reference_norm=150.0,
                positions=lensteer.Window(1, None),
            )
        )
    times: dict[str, list[float]] = {"one condition at a time": [], "joint": []}
    outputs: dict[str, list[str]] = {}
    for _ in range(args.rounds):
        start = time.perf_counter()
        single = [
            t
            for s in steerings
            for t in lensteer.generate(
                model, prompts, steering=s, max_new_tokens=args.new, batch_size=args.single_batch
            ).texts
        ]
        times["one condition at a time"].append(time.perf_counter() - start)
        start = time.perf_counter()
        joint = lensteer.generate(
            model,
            [p for _ in steerings for p in prompts],
            prompt_steerings=[s for s in steerings for _ in prompts],
            max_new_tokens=args.new,
            batch_size=args.joint_batch,
        ).texts
        times["joint"].append(time.perf_counter() - start)
        outputs = {"single": single, "joint": list(joint)}
    same = outputs["single"] == outputs["joint"]
    rows = len(steerings) * len(prompts)
    print(
        f"{platform.processor() or platform.machine()}, torch threads {args.threads}; {args.threat_model}: {len(steerings)} conditions x "
        f"{len(prompts)} prompts, {args.new} new tokens; same tokens: {same}"
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, t in med.items():
        print(f"  {name:<24} {t:7.1f} s  ({rows / t:.2f} answers/s)")
    print(f"  joint / one-at-a-time speed: {med['one condition at a time'] / med['joint']:.2f}x")


if __name__ == "__main__":
    main()
