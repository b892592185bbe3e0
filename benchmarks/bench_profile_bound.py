"""Benchmark: the least time each study profile can take on this machine, from its counted work and a roofline.

The plan (:func:`lensteer.study.plan.study_plan`) counts every stage's work in tokens decoded and tokens run
teacher-forced; a roofline (``bench_roofline.py --out FILE``) gives the FLOPs per token of each and the
throughput of the model's own matmul shapes at batch 64. Work over throughput is the compute-bound limit: no
implementation on this CPU runs the stage faster (attention is left out, so the limit is a lower bound).
A budget below it asks for less work, not faster code.

    python benchmarks/bench_profile_bound.py --roofline benchmarks/roofline-2026-12-07.json [--threads 2]
"""

import argparse
import json
from pathlib import Path

from _machine import machine_line

import lensteer
from lensteer.study.config import PROFILES, StudyConfig
from lensteer.study.plan import study_plan


def stage_work(config: StudyConfig, model: object) -> dict[str, tuple[int, int]]:
    """Per stage (summed over threat models): tokens decoded and tokens run teacher-forced."""
    _, stages = study_plan(model, config)
    out: dict[str, tuple[int, int]] = {}
    for s in stages:
        decoded, forced = out.get(s.stage, (0, 0))
        out[s.stage] = (decoded + s.decode_tokens, forced + s.forward_tokens)
    return out


def limit_minutes(decoded: int, forced: int, roofline: dict, threads: int) -> float:
    """Compute-bound minutes: decoded and teacher-forced FLOPs over the B=64 shapes' throughput."""
    flops = roofline["flops_per_token"]
    shapes = roofline["model_shape_gflops"]
    decode = decoded * flops["decode_at_context_0"] / (shapes[f"fp32 B=64 {threads}t decode"] * 1e9)
    forward = forced * flops["teacher_forced_at_length_0"] / (shapes[f"fp32 B=64 {threads}t body"] * 1e9)
    return (decode + forward) / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--roofline", required=True, help="a roofline JSON from bench_roofline.py --out")
    parser.add_argument("--threads", type=int, default=2, choices=(1, 2), help="threads the limit assumes")
    args = parser.parse_args()
    roofline = json.loads(Path(args.roofline).read_text())
    print(machine_line(1))
    print(
        f"roofline {args.roofline}: reference {roofline['reference_fp32_gemm_1024_1t_gflops']:.1f} GFLOP/s, "
        f"load {roofline['load_average_at_start']} at start\n"
    )
    model = lensteer.load_model()
    print("| profile | stage | decoded tokens | teacher-forced tokens | compute-bound limit |")
    print("|---|---|---|---|---|")
    for profile in PROFILES:
        work = stage_work(StudyConfig.profile(profile), model)
        for stage, (decoded, forced) in work.items():
            minutes = limit_minutes(decoded, forced, roofline, args.threads)
            print(f"| {profile} | {stage} | {decoded:,} | {forced:,} | {minutes:.1f} min |")
        decoded, forced = (sum(w[i] for w in work.values()) for i in (0, 1))
        total = limit_minutes(decoded, forced, roofline, args.threads)
        print(f"| **{profile}** | **all** | {decoded:,} | {forced:,} | **{total:.0f} min** |")


if __name__ == "__main__":
    main()
