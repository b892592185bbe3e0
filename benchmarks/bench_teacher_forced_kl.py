"""Benchmark: the study's teacher-forced KL passes, as they were vs length buckets vs buckets + shared prefix.

Calibration measures a steering's KL on a set that mixes short harmless prompts with few-shot prompts
(~270 shared tokens of context); the rollout KL runs over the few-shot evaluation prompts. Three ways,
timed side by side in interleaved rounds (median), same numbers (checked):

- **as before**: one left-padded batch for the whole set (short prompts padded to the few-shot width),
  the whole sequence through the bridge (before, ``steering_kl`` also unembedded every position; that
  extra cost is not reproduced here, so the real speed-up of calibration was larger);
- **length buckets**: a batch ends where a prompt is over 2x (+32 tokens) the batch's shortest
  (``lensteer.core.chat.length_sorted_batches``);
- **buckets + shared prefix**: also the few-shot context once per pass at batch 1
  (``lensteer.steering.prefix.teacher_forced_states``), as decoding does.

    python benchmarks/bench_teacher_forced_kl.py [--threat-model compassion] [--n 6] [--rounds 3]
"""

import argparse
import os
import platform
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from _machine import machine_line

import lensteer
import lensteer.core.chat as chat
from lensteer import threats
from lensteer.core.datasets import load_dataset
from lensteer.steering.calibration import kl_probe, sequence_kl, steering_kl


@contextmanager
def variant(name: str) -> Iterator[None]:
    saved_slack, saved_env = chat.PAD_SLACK, os.environ.get("LENSTEER_DECODE")
    if name != "buckets + shared prefix":
        os.environ["LENSTEER_DECODE"] = "bridge"  # no plain view: the whole batch through the bridge
    if name == "as before":
        chat.PAD_SLACK = 10**9  # one batch, whatever the lengths
    try:
        yield
    finally:
        chat.PAD_SLACK = saved_slack
        if saved_env is None:
            os.environ.pop("LENSTEER_DECODE", None)
        else:
            os.environ["LENSTEER_DECODE"] = saved_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--threat-model", default="compassion")
    parser.add_argument(
        "--n", type=int, default=6, help="harmless + as many few-shot prompts (the demo's n_kl)"
    )
    parser.add_argument("--rollouts", type=int, default=16, help="few-shot prompts for the rollout KL")
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(args.threads), flush=True)
    model = lensteer.load_model()
    context = threats.get(args.threat_model).misaligning_context
    harmless = load_dataset("refusal").train.stratified(args.n).paired_prompts
    fewshot = load_dataset(args.threat_model).train.stratified(args.n).chat_prompts(context=context)
    rollouts = lensteer.generate(
        model,
        load_dataset(args.threat_model).test.stratified(args.rollouts).chat_prompts(context=context),
        max_new_tokens=args.new,
        batch_size=48,
    )
    unit = torch.randn(int(model.cfg.d_model), generator=torch.Generator().manual_seed(0))
    steering = lensteer.Steering(
        unit=unit,
        layers=(17,),
        mode="swfc",
        scale=0.2,
        relative=True,
        reference_norm=float(lensteer.steering.reference_norm(model, harmless, 17)),
    )
    names = ("as before", "length buckets", "buckets + shared prefix")
    times: dict[str, dict[str, list[float]]] = {n: {"calibration KL": [], "rollout KL": []} for n in names}
    values: dict[str, tuple[float, float]] = {}
    probes = {}
    for name in names:  # a probe's batches are laid out when it is built
        with variant(name):
            probes[name] = kl_probe(model, [*harmless, *fewshot], continuation_tokens=16, batch_size=48)
    for _ in range(args.rounds):
        for name in names:
            with variant(name):
                start = time.perf_counter()
                cal = steering_kl(model, steering, probes[name])
                times[name]["calibration KL"].append(time.perf_counter() - start)
                start = time.perf_counter()
                roll = sequence_kl(model, steering, rollouts.prompt_tokens, rollouts.tokens, batch_size=48)
                times[name]["rollout KL"].append(time.perf_counter() - start)
                values[name] = (cal, roll)
    base = values["as before"]
    same = all(abs(v[k] - base[k]) <= 1e-4 * max(abs(base[k]), 1e-6) for v in values.values() for k in (0, 1))
    print(
        f"{platform.processor() or platform.machine()}, torch threads {args.threads}; {args.threat_model}: "
        f"calibration set {args.n} harmless + {args.n} few-shot prompts, rollout KL over {args.rollouts} few-shot "
        f"prompts x {args.new} tokens; same KLs (rel 1e-4): {same} {values}"
    )
    for part in ("calibration KL", "rollout KL"):
        med = {n: statistics.median(times[n][part]) for n in names}
        print(
            f"  {part}: "
            + ", ".join(f"{n} {t:.2f} s" for n, t in med.items())
            + f"; speed-up {med['as before'] / med['buckets + shared prefix']:.1f}x "
            f"(buckets alone {med['as before'] / med['length buckets']:.1f}x)"
        )


if __name__ == "__main__":
    main()
