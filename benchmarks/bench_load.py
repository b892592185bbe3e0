"""Benchmark: warm load_model() time of the embedded model, in fresh processes.

Import time (torch, transformers, TransformerLens) is reported separately; the load itself reads
the cached safetensors folder (the first, cold load dequantises the GGUF once).

    python benchmarks/bench_load.py [--runs 3]
"""

import argparse
import json
import statistics
import subprocess
import sys

from _machine import machine_line

CHILD = """
import json, time
t0 = time.perf_counter()
import lensteer, torch
torch.set_num_threads(2)
t1 = time.perf_counter()
lensteer.load_model()
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(machine_line(), flush=True)
    subprocess.run(
        [sys.executable, "-c", CHILD], check=True, capture_output=True
    )  # make sure the cache exists
    runs = [
        json.loads(
            subprocess.run([sys.executable, "-c", CHILD], check=True, capture_output=True, text=True)
            .stdout.strip()
            .splitlines()[-1]
        )
        for _ in range(args.runs)
    ]
    loads = ", ".join(f"{r['load_s']:.2f}" for r in runs)
    print(
        f"warm load_model(): median {statistics.median(r['load_s'] for r in runs):.2f} s (runs: {loads}); "
        f"imports {statistics.median(r['import_s'] for r in runs):.2f} s"
    )


if __name__ == "__main__":
    main()
