"""The machine a benchmark ran on, and its reference figure: every timing is quoted beside it.

The reference is the fp32 throughput of a large square matmul (1024 x 1024 x 1024) on one torch
thread, median of a few runs: a number any machine can produce in a second, so timings measured on
different machines (or on one machine under different load) can be compared as multiples of it.
``python benchmarks/_machine.py`` prints it alone.
"""

import os
import platform
import statistics
import time
from pathlib import Path

import torch

REFERENCE_SIZE = 1024  # the square GEMM of the reference figure


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gemm_gflops(
    m: int,
    k: int,
    n: int,
    *,
    dtype: torch.dtype = torch.float32,
    threads: int = 1,
    min_seconds: float = 0.3,
    repeats: int = 5,
) -> float:
    """Median GFLOP/s of ``[m, k] @ [k, n]`` (2 m k n FLOPs) with ``threads`` torch threads."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        a, b = torch.randn(m, k, generator=gen).to(dtype), torch.randn(k, n, generator=gen).to(dtype)
        with torch.inference_mode():
            a @ b  # warm-up
            start, calls = time.perf_counter(), 0
            while time.perf_counter() - start < min_seconds / repeats or calls < 1:
                a @ b
                calls += 1
            rates = []
            for _ in range(repeats):
                start = time.perf_counter()
                for _ in range(calls):
                    a @ b
                rates.append(2 * m * k * n * calls / (time.perf_counter() - start) / 1e9)
        return statistics.median(rates)
    finally:
        torch.set_num_threads(saved)


def reference_gflops() -> float:
    """The machine reference: fp32 GFLOP/s of a 1024-cube matmul on one thread."""
    return gemm_gflops(REFERENCE_SIZE, REFERENCE_SIZE, REFERENCE_SIZE, threads=1)


def machine_line(threads: int | None = None) -> str:
    """One line for a benchmark's output: CPU, cores, load average, torch, threads and the reference figure
    (measured now, so it reflects the load the benchmark ran under)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    used = f", {threads} torch threads" if threads is not None else ""
    return (
        f"machine: {cpu_model()}, {os.cpu_count()} cores, load average {load[0]:.1f}{used}, torch {torch.__version__}; "
        f"reference fp32 GEMM {REFERENCE_SIZE}^3 at 1 thread: {reference_gflops():.1f} GFLOP/s"
    )


if __name__ == "__main__":
    print(machine_line())
