"""Benchmark: this machine's matmul roofline and how close lensteer's decoding and teacher-forced passes come to it.

1. **Matmul throughput** (GFLOP/s), fp32 and bf16, 1 and 2 torch threads: a large square GEMM (the
   machine reference: fp32 1024^3 at 1 thread, ``benchmarks/_machine.py``) and the matmuls of the
   embedded model at ``B`` tokens per forward (SmolLM2-135M: 30 layers of q/o 576x576, k/v 576x192,
   gate/up/down 576x1536, and the tied 576x49152 unembedding).
2. **Compute-bound limit** (tokens/s): FLOPs per token over the throughput of the model's own matmul
   shapes at that batch. Decoding: ``2 x 134.5M`` (every weight once, the unembedding included) plus
   attention ``4 x d_model x context`` per layer. A teacher-forced pass reads logits at a few positions
   only: ``2 x 106.2M`` (no unembedding) plus causal attention (``context / 2`` on average).
3. **Measured**: ``lensteer.generate`` (greedy, end of turn off, so every row decodes every step; decode
   rate = tokens of 16 extra steps over their extra time, prefill excluded) and a teacher-forced forward
   (``teacher_forced_states`` over paragraphs, unsteered), on the embedded model, as a share of the limit.

Prints a table and writes ``benchmarks/roofline.json``. bf16 is measured on small shapes only: on a CPU
without bf16 instructions it runs at a fraction of fp32 (the numbers say how small).

4. With ``--study DIR`` (a finished study: ``report.json`` and ``timing.json``), each stage of that study as a
   share of the limit: its FLOPs (``lensteer.study.plan``'s tokens decoded and run teacher-forced) over its
   wall seconds, at the limit of the study's own torch threads. With ``--roofline FILE`` as well (a
   ``roofline.json`` this script wrote), the limit is read from that file and nothing is measured again
   (a few seconds instead of about five minutes).

    python benchmarks/bench_roofline.py [--threads 1] [--batches 1 16 64] [--study results]
    python benchmarks/bench_roofline.py --study results --roofline benchmarks/roofline.json
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _machine import cpu_model, gemm_gflops, machine_line, reference_gflops

import lensteer
import lensteer.steering.generation as generation
from lensteer.core.chat import length_sorted_batches, pad_id_of, tokenize_prompt
from lensteer.core.plain import plain_view
from lensteer.evaluate.capability import load_paragraphs
from lensteer.steering.hooks import SteeringContext
from lensteer.steering.prefix import teacher_forced_states

N_LAYERS, D_MODEL, D_KV, D_MLP, VOCAB = 30, 576, 192, 1536, 49152  # SmolLM2-135M (3 KV heads x 64)
LAYER_SHAPES = (
    (D_MODEL, D_MODEL),
    (D_MODEL, D_KV),
    (D_MODEL, D_KV),
    (D_MODEL, D_MODEL),
    (D_MODEL, D_MLP),
    (D_MODEL, D_MLP),
    (D_MLP, D_MODEL),
)  # q k v o gate up down: [in, out]
LAYER_PARAMS = sum(i * o for i, o in LAYER_SHAPES)  # 3.54M
BODY_PARAMS, EMBED_PARAMS = N_LAYERS * LAYER_PARAMS, VOCAB * D_MODEL  # 106.2M + 28.3M = 134.5M


def decode_flops(context: int) -> float:
    """FLOPs to decode one token after ``context`` tokens: every weight once (tied unembedding) + attention."""
    return 2 * (BODY_PARAMS + EMBED_PARAMS) + N_LAYERS * 4 * D_MODEL * context


def teacher_forced_flops(length: int) -> float:
    """FLOPs per token of a teacher-forced pass over ``length`` tokens, no unembedding (read at few positions)."""
    return 2 * BODY_PARAMS + N_LAYERS * 4 * D_MODEL * length / 2


def model_gflops(batch: int, *, dtype: torch.dtype, threads: int, unembed: bool, min_seconds: float) -> float:
    """Throughput of the model's matmuls at ``batch`` rows: one layer's 7 matmuls x 30 (+ the unembedding),
    total FLOPs over total time."""
    shapes = [(i, o, N_LAYERS) for i, o in LAYER_SHAPES] + ([(D_MODEL, VOCAB, 1)] if unembed else [])
    flops = seconds = 0.0
    for i, o, times in shapes:
        rate = gemm_gflops(batch, i, o, dtype=dtype, threads=threads, min_seconds=min_seconds, repeats=3)
        f = 2 * batch * i * o * times
        flops, seconds = flops + f, seconds + f / (rate * 1e9)
    return flops / seconds / 1e9


def _no_end_of_turn(model: Any) -> set[int]:  # noqa: ARG001 - replaces end_of_turn_ids(model)
    return set()


def measured_decode(model: Any, prompts: list[str], batch: int, steps: int) -> tuple[float, int]:
    """Decoded tokens/s at ``batch`` rows (the extra time of ``steps`` more steps; prefill cancels) and the
    mean prompt length."""
    rows = prompts[:batch]

    def run(n: int) -> float:
        start = time.perf_counter()
        lensteer.generate(model, rows, max_new_tokens=n, batch_size=batch)
        return time.perf_counter() - start

    run(2)  # warm-up
    extra = statistics.median(run(2 + steps) - run(2) for _ in range(2))
    context = sum(tokenize_prompt(model, p).n_tokens for p in rows) // len(rows) + steps // 2
    return batch * steps / max(extra, 1e-9), context


def measured_teacher_forced(model: Any, texts: list[str], batch: int) -> tuple[float, int]:
    """Tokens/s of a teacher-forced forward (final-norm states at every real position, no logits) over
    ``texts`` in length-sorted batches, and the mean length."""
    tokenized = [tokenize_prompt(model, t, chat=False) for t in texts]
    view, n_tokens = plain_view(model), sum(t.n_tokens for t in tokenized)

    def run() -> float:
        start = time.perf_counter()
        for _, b in length_sorted_batches(tokenized, batch, pad_id_of(model)):
            pads = torch.tensor(b.pad_lengths)
            ctx = SteeringContext(
                prompt_lens=torch.tensor([p.n_tokens for p in b.prompts]), pads=pads, record=False
            )
            with torch.inference_mode():
                teacher_forced_states(
                    model, (), b.tokens, b.attention_mask, b.attention_mask.bool(), ctx, view=view
                )
        return time.perf_counter() - start

    run()
    return n_tokens / min(run() for _ in range(2)), n_tokens // len(tokenized)


def study_stage_shares(
    model: Any, folder: Path, limit_gflops: float, context: int = 100
) -> list[dict[str, Any]]:
    """Each stage of a finished study (``folder``: its ``report.json`` config and ``timing.json`` stages) as a
    share of the limit: the stage's FLOPs (``lensteer.study.plan``'s tokens decoded and run teacher-forced,
    at a typical ``context``) over its wall seconds, over ``limit_gflops`` (the model's shapes at B=64)."""
    from lensteer.study.config import StudyConfig
    from lensteer.study.plan import study_plan

    name = "report.json" if (folder / "report.json").is_file() else "study.json"  # study.json: still running
    config = StudyConfig.from_dict(json.loads((folder / name).read_text())["config"])
    timing = json.loads((folder / "timing.json").read_text()).get("stages", {})
    rows = []
    for stage in study_plan(model, config)[1]:
        seconds = timing.get(stage.where, {}).get(stage.stage)
        if not seconds:
            continue
        flops = stage.decode_tokens * decode_flops(context) + stage.forward_tokens * teacher_forced_flops(
            context
        )
        rate = flops / seconds / 1e9
        rows.append(
            {
                "where": stage.where,
                "stage": stage.stage,
                "seconds": seconds,
                "gflops": rate,
                "share_of_limit": rate / limit_gflops,
            }
        )
    return rows


def print_stage_table(rows: list[dict[str, Any]], title: str) -> None:
    print(f"\n{title}\n")
    print("| threat model | stage | seconds | GFLOP/s | share of limit |\n|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['where']} | {r['stage']} | {r['seconds']:.0f} | {r['gflops']:.2f} | {r['share_of_limit']:.2f} |"
        )


def study_from_file(study: Path, roofline: Path) -> None:
    """``--study`` with ``--roofline``: the stage shares against a roofline measured earlier (its machine
    reference and load said first), at the study's torch threads."""
    data = json.loads(roofline.read_text())
    timing = json.loads((study / "timing.json").read_text())
    threads = int(timing.get("threads", data["threads"]))
    key = f"fp32 B=64 {threads}t body"
    if key not in data["model_shape_gflops"]:
        raise SystemExit(f"{roofline} has no {key!r}; it has {sorted(data['model_shape_gflops'])}")
    start, end = data["load_average_at_start"][0], data["load_average_at_end"][0]
    print(
        f"roofline {roofline}: {data['cpu']}, {data['cores']} cores, torch {data['torch']}, load average "
        f"{start:.1f} to {end:.1f}; reference fp32 GEMM 1024^3 at 1 thread: "
        f"{data['reference_fp32_gemm_1024_1t_gflops']:.1f} GFLOP/s; limit ({key}): "
        f"{data['model_shape_gflops'][key]:.1f} GFLOP/s"
    )
    print(f"study {study}: {timing['seconds']:.0f} s wall, {threads} torch threads; now: {machine_line()}")
    rows = study_stage_shares(lensteer.load_model(), study, data["model_shape_gflops"][key])
    print_stage_table(
        rows, f"the study in {study}, each stage as a share of the B=64 limit at {threads} thread(s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads for lensteer's measured runs")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--paragraphs", type=int, default=8)
    parser.add_argument("--min-seconds", type=float, default=0.2, help="per fp32 matmul timing")
    parser.add_argument("--out", default=str(Path(__file__).with_name("roofline.json")))
    parser.add_argument(
        "--study",
        default=None,
        help="a finished study folder (report.json, timing.json): each stage as a share of the limit",
    )
    parser.add_argument(
        "--roofline",
        default=None,
        help="with --study: a roofline.json this script wrote, read instead of measuring again",
    )
    args = parser.parse_args()
    if args.roofline is not None:
        if args.study is None:
            parser.error("--roofline goes with --study (it replaces measuring the limit again)")
        study_from_file(Path(args.study), Path(args.roofline))
        return
    load = os.getloadavg()
    print(machine_line(args.threads), flush=True)
    ref = reference_gflops()
    gemm: dict[str, float] = {}
    for threads in (1, 2):
        gemm[f"fp32 1024^3 {threads}t"] = gemm_gflops(1024, 1024, 1024, threads=threads)
        gemm[f"bf16 256^3 {threads}t"] = gemm_gflops(
            256, 256, 256, dtype=torch.bfloat16, threads=threads, min_seconds=0.05, repeats=1
        )
    shapes: dict[str, float] = {}
    for threads in (1, 2):
        for b in args.batches:
            shapes[f"fp32 B={b} {threads}t decode"] = model_gflops(
                b, dtype=torch.float32, threads=threads, unembed=True, min_seconds=args.min_seconds
            )
            shapes[f"fp32 B={b} {threads}t body"] = model_gflops(
                b, dtype=torch.float32, threads=threads, unembed=False, min_seconds=args.min_seconds
            )
        shapes[f"bf16 B=16 {threads}t body"] = model_gflops(
            16, dtype=torch.bfloat16, threads=threads, unembed=False, min_seconds=0.02
        )
    for k, v in {**gemm, **shapes}.items():
        print(f"  {k}: {v:.2f} GFLOP/s", flush=True)

    torch.set_num_threads(args.threads)
    t = args.threads
    model = lensteer.load_model()
    ds = lensteer.load_dataset("refusal")
    prompts = [p for pair in zip(ds.prompts, ds.paired_prompts, strict=True) for p in pair][
        : max(args.batches)
    ]
    eos = generation.end_of_turn_ids
    generation.end_of_turn_ids = _no_end_of_turn  # every row decodes every step
    rows = []
    try:
        for b in args.batches:
            rate, context = measured_decode(model, prompts, b, args.steps)
            rate_limit = shapes[f"fp32 B={b} {t}t decode"] * 1e9 / decode_flops(context)
            peak_limit = gemm[f"fp32 1024^3 {t}t"] * 1e9 / decode_flops(context)
            rows.append(
                {
                    "pass": "decode",
                    "batch": b,
                    "context": context,
                    "tokens_per_s": rate,
                    "limit_tokens_per_s": rate_limit,
                    "share_of_limit": rate / rate_limit,
                    "peak_limit_tokens_per_s": peak_limit,
                    "share_of_peak": rate / peak_limit,
                }
            )
            print(f"  decode B={b}: {rate:.1f} tokens/s", flush=True)
    finally:
        generation.end_of_turn_ids = eos
    texts = load_paragraphs()[: args.paragraphs]
    rate, length = measured_teacher_forced(model, texts, 16)
    b = max(args.batches)
    limit = shapes[f"fp32 B={b} {t}t body"] * 1e9 / teacher_forced_flops(length)
    peak = gemm[f"fp32 1024^3 {t}t"] * 1e9 / teacher_forced_flops(length)
    rows.append(
        {
            "pass": "teacher-forced",
            "batch": f"{len(texts)} x {length}",
            "context": length,
            "tokens_per_s": rate,
            "limit_tokens_per_s": limit,
            "share_of_limit": rate / limit,
            "peak_limit_tokens_per_s": peak,
            "share_of_peak": rate / peak,
        }
    )

    print(
        f"\nlensteer on the embedded model, {t} torch thread(s); limit = FLOPs per token over the fp32 throughput of "
        f"the model's own matmul shapes at that batch (teacher-forced: at B={b} rows); peak = over the 1024^3 GEMM\n"
    )
    print(
        "| pass | batch | context | tokens/s | limit tokens/s | share of limit | peak-GEMM limit | share of peak |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['pass']} | {r['batch']} | {r['context']} | {r['tokens_per_s']:.1f} | {r['limit_tokens_per_s']:.0f} | "
            f"{r['share_of_limit']:.2f} | {r['peak_limit_tokens_per_s']:.0f} | {r['share_of_peak']:.2f} |"
        )
    stage_rows = (
        []
        if args.study is None
        else study_stage_shares(model, Path(args.study), shapes[f"fp32 B={b} {t}t body"])
    )
    if stage_rows:
        print_stage_table(stage_rows, f"the study in {args.study}, each stage as a share of the B={b} limit")
    result = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_at_start": list(load),
        "load_average_at_end": list(os.getloadavg()),
        "torch": torch.__version__,
        "reference_fp32_gemm_1024_1t_gflops": ref,
        "gemm_gflops": gemm,
        "model_shape_gflops": shapes,
        "flops_per_token": {
            "decode_at_context_0": decode_flops(0),
            "teacher_forced_at_length_0": teacher_forced_flops(0),
            "attention_per_context_token": N_LAYERS * 4 * D_MODEL,
        },
        "threads": t,
        "measured": rows,
        "study_stages": stage_rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out}; load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
