"""Benchmark: ``lensteer run --plan``'s estimate of each stage against a finished study's recorded seconds.

Reads the study's config (``report.json``, or ``study.json`` while it runs) and its wall seconds per stage
(``timing.json``: written as each threat model finishes, so a study still running is compared on the
threat models it finished), probes this machine's rates at the study's shapes
(:func:`lensteer.study.plan.probe_rates`, at the study's torch threads) and prints, per threat model and
stage, the plan's estimate, the real seconds and their ratio.
The probe runs now, the study ran earlier: the machine line (load, reference) says how comparable they are.

    python benchmarks/bench_plan.py --study results [--out plan_vs_real.json]
"""

import argparse
import json
import os
from pathlib import Path

import torch
from _machine import machine_line

import lensteer
from lensteer.study.config import StudyConfig
from lensteer.study.plan import probe_rates, study_plan


def study_config(folder: Path) -> StudyConfig:
    """A study folder's config: ``report.json``'s, else (a study still running) ``study.json``'s."""
    for name in ("report.json", "study.json"):
        if (folder / name).is_file():
            return StudyConfig.from_dict(json.loads((folder / name).read_text())["config"])
    raise SystemExit(f"{folder} holds neither report.json nor study.json: not a study folder")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--study", required=True, help="a finished study folder (report.json, timing.json)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the study's)")
    parser.add_argument("--out", default=None, help="also write the table as JSON here")
    args = parser.parse_args()
    folder = Path(args.study)
    config = study_config(folder)
    if not (folder / "timing.json").is_file():
        raise SystemExit(f"{folder} has no timing.json yet: no threat model has finished")
    timing = json.loads((folder / "timing.json").read_text())
    threads = args.threads or int(timing.get("threads", 1))
    torch.set_num_threads(threads)
    print(machine_line(threads), flush=True)
    model = lensteer.load_model()
    rates = probe_rates(model, config)
    stages = study_plan(model, config)[1]
    print(
        f"probe: {rates.decode_tokens_per_s(rates.batch):.0f} decoded tokens/s at {rates.batch} rows "
        f"({1000 * rates.step_seconds:.0f} ms a step + {1000 * rates.row_seconds:.1f} ms a row), "
        f"{rates.forward_tokens_per_s:.0f} teacher-forced tokens/s; load average {os.getloadavg()[0]:.1f}\n"
    )
    rows = []
    for s in stages:
        real = timing.get("stages", {}).get(s.where, {}).get(s.stage)
        rows.append({"where": s.where, "stage": s.stage, "estimate_s": s.seconds(rates), "real_s": real})
    print(
        "| threat model | stage | plan's estimate (s) | real (s) | real / estimate |\n|---|---|---|---|---|"
    )
    for r in rows:
        real = "not recorded" if r["real_s"] is None else f"{r['real_s']:.0f}"
        ratio = "" if r["real_s"] is None else f"{r['real_s'] / r['estimate_s']:.2f}"
        print(f"| {r['where']} | {r['stage']} | {r['estimate_s']:.0f} | {real} | {ratio} |")
    done = [r for r in rows if r["real_s"] is not None]  # a study still running: its finished stages
    estimate, real_total = sum(r["estimate_s"] for r in done), sum(r["real_s"] for r in done)
    print(f"| recorded | all | {estimate:.0f} | {real_total:.0f} | {real_total / max(estimate, 1e-9):.2f} |")
    print(f"| plan | whole study | {sum(r['estimate_s'] for r in rows):.0f} | | |")
    print(f"\nthe study's wall time (timing.json): {timing['seconds']:.0f} s, {threads} torch threads")
    if args.out is not None:
        Path(args.out).write_text(
            json.dumps(
                {"study": str(folder), "threads": threads, "rates": vars(rates), "stages": rows}, indent=1
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
