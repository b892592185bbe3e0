"""Benchmark: the study on 1, 2 and 4 local Ray workers (``lensteer run --executor ray``) against serial.

A tiny random Llama (4 layers, d_model 32, saved as a model folder as the workers load it) runs a
sweep with enough blocks to share: one threat model, three layers (the chosen one and two swept), two
KL budgets, two methods and three random seeds (17 conditions). Each worker runs one torch thread, as
does the serial run. Ray is started once before the timed runs (its start-up is not the study's cost);
each timed run starts its workers, which load the model, so that is counted. Every Ray run's
``results.json`` is checked equal to the serial run's, row for row.

    python benchmarks/bench_ray_cells.py [--workers 1,2,4] [--threat-model compassion] [--block-size N]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from _machine import machine_line

from lensteer.core.models import load_model
from lensteer.study.config import StudyConfig
from lensteer.study.distributed import default_block_size, run_study_distributed
from lensteer.study.plan import plan_conditions
from lensteer.study.runner import run_study

QUIET = {"progress": False, "log": lambda _line: None}


def tiny_model_folder(folder: Path) -> str:
    """A 4-layer random Llama with the tests' character tokenizer, saved as a Hugging Face folder."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from builders import make_char_tokenizer, save_tiny_llama_folder

    return str(
        save_tiny_llama_folder(
            folder / "model",
            make_char_tokenizer(folder / "tokenizer"),
            num_hidden_layers=4,
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            initializer_range=0.5,  # steerings reach their KL budgets (as in the Ray tests)
        )
    )


def sweep(threat_model: str) -> StudyConfig:
    return StudyConfig(
        threat_models=(threat_model,),
        methods=("SwFC", "StMP"),
        kl_budgets=(0.25, 0.5),
        layer=2,
        sweep_layers=(1, 3),
        random_seeds=(0, 1, 2),
        n_train=6,
        n_eval=4,
        n_harmless=4,
        n_borderline=2,
        n_kl=4,
        n_fluency=2,
        n_conversations=1,
        n_turns=2,
        n_mc=2,
        n_paragraphs=2,
        max_new_tokens=4,
        batch_size=8,
    )


def cell_seconds(out: Path) -> float:
    """The wall seconds spent inside the stages (``timing.json``), summed over every worker: the work done
    plus what each worker repeats (its evaluation sets, its fluency probe per threat model)."""
    stages = json.loads((out / "timing.json").read_text())["stages"]
    return sum(s for where in stages.values() for s in where.values())


def rows(out: Path) -> list[dict]:
    found: list[dict] = json.loads((out / "results.json").read_text())["rows"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--threat-model", default="compassion")
    parser.add_argument("--block-size", type=int, default=None, help="default: the executor's")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    torch.set_num_threads(1)
    config = sweep(args.threat_model)
    conditions = sum(p.twin_of is None for p in plan_conditions(config, 2, 4))
    print(machine_line(1), flush=True)
    print(f"{conditions} conditions of {args.threat_model}\n")
    print(
        "| run | conditions per block | wall | seconds in stages, all workers | speed-up | load average at start |"
        "\n|---|---|---|---|---|---|"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = tiny_model_folder(root)
        load = os.getloadavg()[0]
        start = time.perf_counter()
        run_study(load_model(folder), config, root / "serial", **QUIET)
        serial = time.perf_counter() - start
        work = cell_seconds(root / "serial")
        print(f"| serial (1 process) | - | {serial:.1f} s | {work:.1f} s | 1.00x | {load:.1f} |", flush=True)
        import ray

        os.environ.setdefault(
            "RAY_worker_niceness", "0"
        )  # as the tests: workers compete as this process does
        ray.init(num_cpus=max(counts), include_dashboard=False, log_to_driver=False)
        try:
            for n in counts:
                out = root / f"ray{n}"
                load = os.getloadavg()[0]
                start = time.perf_counter()
                run_study_distributed(
                    folder, config, out, workers=n, threads=1, block_size=args.block_size, **QUIET
                )
                took = time.perf_counter() - start
                assert rows(out) == rows(root / "serial"), f"{n} workers: rows differ from the serial run's"
                block = args.block_size or default_block_size(conditions, n)
                print(
                    f"| ray, {n} worker(s) | {block} | {took:.1f} s | {cell_seconds(out):.1f} s "
                    f"| {serial / took:.2f}x | {load:.1f} |",
                    flush=True,
                )
        finally:
            ray.shutdown()
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
