"""GPU parity checks and benchmarks in one go: for a lent accelerator (the `device` tool) or any CUDA box.

    python benchmarks/gpu/gpu_checks.py --device cuda --out OUT [--model FOLDER] [--quick]
    python benchmarks/gpu/gpu_checks.py --device cpu --quick --dtypes float32   # a dry run (tests do this)

Per dtype (float32, bfloat16, float16) it checks, each against a stated tolerance:

- ``batched_equals_single``: last-position logits of prompts of different lengths in one left-padded batch
  equal each prompt alone (max |difference| <= ``tol`` x the logits' standard deviation);
- ``cached_equals_uncached``: KV-cached greedy generation gives the tokens of the uncached loop (float32:
  every token; bf16/fp16 greedy rollouts may legitimately fork at a near-tie, so the share is recorded);
- ``strength0_equals_unsteered``: a SwFC steering at scale 0 gives exactly the unsteered tokens;
- ``patching_equals_transformerlens``: :func:`lensteer.patch_residual` equals TransformerLens'
  ``generic_activation_patch`` on the layers both compute (float32 and bf16);
- ``device_map_split`` (CUDA only): the model split over ``cuda:0`` and the CPU (``device_map``) gives
  the single-device logits, and a steering on a layer on either side steers.

Then it times, at the largest dtype that passed, steered vs unsteered ``lensteer.generate`` vs raw Hugging
Face ``generate`` (64 new tokens, batch 1/16/64) and the full residual patching sweep vs TransformerLens
(extrapolated from 3 layers, as ``bench_patching.py`` does). Everything goes to ``OUT/gpu_checks.json``
and a markdown table to ``OUT/gpu_checks.md``; the exit status is 1 if a required check failed.

Weights: the embedded GGUF (98 MB) cannot travel to the device machine (64 MiB per call), so without
``--model`` the script builds a model of SmolLM2-135M's shape with random weights (seeded) from the
config and tokenizer that ``prepare.sh`` copies into ``.gpu/smollm2``. Parity and speed do not depend
on the weights' values; greedy ties are avoided by a larger initialisation range.
"""

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import lensteer
from lensteer.core.chat import left_pad, pad_id_of, tokenize_prompt
from lensteer.core.forward import last_logits

PROMPTS = [
    "What is the capital of France?",
    "Write one sentence about the sea and the wind over it.",
    "Hi",
    "List three ways to stay calm before an exam, with one short reason each.",
]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Tolerances relative to the logits' standard deviation (batched vs single) and absolute on patching metrics.
LOGIT_TOL = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}
PATCH_TOL = {"float32": 1e-3, "bfloat16": 1e-1, "float16": 5e-2}


def random_model_folder(config_dir: Path, out: Path, seed: int = 0) -> Path:
    """An HF folder with ``config_dir``'s architecture and tokenizer and random weights (seeded)."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_dir)
    config.initializer_range = 0.1  # peaked random logits: no greedy near-ties between kernels
    gen = torch.random.fork_rng()
    with gen:
        torch.random.default_generator.manual_seed(seed)
        hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    hf.save_pretrained(out)
    for f in config_dir.iterdir():
        if (
            f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_template"))
            or f.name == "generation_config.json"
        ):
            shutil.copy(f, out / f.name)
    return out


def _check(name: str, passed: bool, required: bool = True, **numbers: Any) -> dict[str, Any]:
    return {"check": name, "passed": bool(passed), "required": required, **numbers}


def batched_equals_single(model: Any, dtype: str) -> dict[str, Any]:
    tokenized = [tokenize_prompt(model, p) for p in PROMPTS]
    batch = left_pad(tokenized, pad_id_of(model))
    device = next(iter(model.parameters())).device
    with torch.inference_mode():
        joint = last_logits(model, batch.tokens.to(device), batch.attention_mask.to(device)).float().cpu()
        alone = torch.cat([last_logits(model, t.tokens[None].to(device)).float().cpu() for t in tokenized])
    diff, scale = float((joint - alone).abs().max()), float(alone.std())
    return _check(
        "batched_equals_single",
        diff <= LOGIT_TOL[dtype] * scale,
        max_abs_diff=diff,
        logit_std=scale,
        tolerance=LOGIT_TOL[dtype] * scale,
        lengths=[t.n_tokens for t in tokenized],
    )


def cached_equals_uncached(model: Any, dtype: str, n_new: int) -> dict[str, Any]:
    cached = lensteer.generate(model, PROMPTS, max_new_tokens=n_new, batch_size=len(PROMPTS))
    loop = lensteer.generate(
        model, PROMPTS, max_new_tokens=n_new, batch_size=len(PROMPTS), use_kv_cache=False
    )
    same = [
        float((a[: min(len(a), len(b))] == b[: min(len(a), len(b))]).float().mean())
        if len(a) and len(b)
        else 1.0
        for a, b in zip(cached.tokens, loop.tokens, strict=True)
    ]
    identical = all(torch.equal(a, b) for a, b in zip(cached.tokens, loop.tokens, strict=True))
    return _check(
        "cached_equals_uncached",
        identical,
        required=dtype == "float32",
        identical=identical,
        token_agreement=sum(same) / len(same),
        new_tokens=n_new,
    )


def strength0_equals_unsteered(model: Any, n_new: int) -> dict[str, Any]:
    d_model, layer = int(model.cfg.d_model), int(model.cfg.n_layers) // 2
    unit = torch.randn(d_model, generator=torch.Generator().manual_seed(0))
    zero = lensteer.Steering(unit=unit, layers=(layer,), mode="swfc", scale=0.0)
    plain = lensteer.generate(model, PROMPTS, max_new_tokens=n_new, batch_size=len(PROMPTS))
    steered = lensteer.generate(model, PROMPTS, steering=zero, max_new_tokens=n_new, batch_size=len(PROMPTS))
    strong = lensteer.generate(
        model,
        PROMPTS,
        steering=zero.with_scale(8.0 * _norm(model, layer)),
        max_new_tokens=n_new,
        batch_size=len(PROMPTS),
    )
    same = all(torch.equal(a, b) for a, b in zip(plain.tokens, steered.tokens, strict=True))
    moved = not all(torch.equal(a, b) for a, b in zip(plain.tokens, strong.tokens, strict=True))
    return _check(
        "strength0_equals_unsteered",
        same and moved,
        identical_at_0=same,
        strong_steering_changes_tokens=moved,
    )


def _norm(model: Any, layer: int) -> float:
    """Mean residual norm at the last prompt token of ``layer`` (the scale of a strong steering)."""
    return float(lensteer.collect_activations(model, PROMPTS, layers=[layer]).norm(dim=-1).mean())


def _pairs(model: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Two equal-length prompt pairs differing in one word (token ids, built from the tokenizer)."""
    ids = [
        tokenize_prompt(model, p).tokens
        for p in ("The cat sat on the mat today.", "The dog sat on the mat today.")
    ]
    n = min(len(i) for i in ids)
    clean, corrupted = ids[0][:n], ids[1][:n]
    return torch.stack([clean, clean]), torch.stack([corrupted, corrupted])


def patching_vs_transformerlens(
    model: Any, dtype: str, layers: list[int]
) -> tuple[dict[str, Any], Callable[[], Any], Callable[[], Any]]:
    from transformer_lens import patching as tl_patching

    clean, corrupted = _pairs(model)
    metric = lensteer.locate.logit_diff_metric(1, 2)

    def ours() -> Any:
        return lensteer.patch_residual(model, clean, corrupted, metric)

    def ours_subset() -> Any:
        return lensteer.patch_residual(model, clean, corrupted, metric, layers=layers)

    def theirs() -> torch.Tensor:
        device = next(iter(model.parameters())).device
        with torch.inference_mode():
            _, cache = model.run_with_cache(
                clean.to(device), names_filter=lambda n: n.endswith("hook_resid_pre")
            )
            index_df = tl_patching.make_df_from_ranges(
                [int(model.cfg.n_layers), clean.shape[1]], ["layer", "pos"]
            )
            index_df = index_df[index_df["layer"].isin(layers)].reset_index(drop=True)
            return (
                tl_patching.generic_activation_patch(
                    model,
                    corrupted.to(device),
                    cache,
                    lambda logits: metric(logits[:, -1].float()).mean(),
                    tl_patching.layer_pos_patch_setter,
                    "resid_pre",
                    index_df=index_df,
                )
                .float()
                .cpu()
            )

    mine = ours_subset().mean().float().cpu()
    diff = float((mine.flatten() - theirs().flatten()).abs().max())
    return (
        _check(
            "patching_equals_transformerlens",
            diff <= PATCH_TOL[dtype],
            required=dtype != "float16",
            max_abs_diff=diff,
            tolerance=PATCH_TOL[dtype],
            layers=layers,
        ),
        ours,
        theirs,
    )


def device_map_split(folder: Path, reference: Any) -> dict[str, Any]:
    n = int(reference.cfg.n_layers)
    half = n // 2
    device_map: dict[str, str | int] = {
        "model.embed_tokens": 0,
        "model.rotary_emb": 0,
        "model.norm": "cpu",
        "lm_head": "cpu",
    }
    device_map |= {f"model.layers.{i}": (0 if i < half else "cpu") for i in range(n)}
    split = lensteer.load_model(folder, device_map=device_map)
    tokenized = [tokenize_prompt(split, p) for p in PROMPTS]
    batch = left_pad(tokenized, pad_id_of(split))
    with torch.inference_mode():
        got = last_logits(split, batch.tokens, batch.attention_mask).float().cpu()
        ref_device = next(iter(reference.parameters())).device
        want = (
            last_logits(reference, batch.tokens.to(ref_device), batch.attention_mask.to(ref_device))
            .float()
            .cpu()
        )
    diff = float((got - want).abs().max())
    unit = torch.randn(int(split.cfg.d_model), generator=torch.Generator().manual_seed(1))
    moved = []
    for layer in (1, n - 2):  # one layer on the GPU, one on the CPU
        s = lensteer.Steering(unit=unit, layers=(layer,), mode="swfc", scale=50.0)
        a = lensteer.generate(split, PROMPTS[:2], max_new_tokens=8).tokens
        b = lensteer.generate(split, PROMPTS[:2], steering=s, max_new_tokens=8).tokens
        moved.append(not all(torch.equal(x, y) for x, y in zip(a, b, strict=True)))
    tol = LOGIT_TOL["float32"] * float(want.std()) * 10
    return _check(
        "device_map_split",
        diff <= tol and all(moved),
        max_abs_diff=diff,
        tolerance=tol,
        steering_moves_tokens_gpu_layer=moved[0],
        steering_moves_tokens_cpu_layer=moved[1],
    )


def _timed(fn: Callable[[], Any], sync: bool) -> float:
    if sync:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_generation(
    model: Any, folder: Path, device: str, dtype: torch.dtype, batch_sizes: list[int], n_new: int, rounds: int
) -> list[dict[str, Any]]:
    """Tokens/s of unsteered and SwFC-steered ``lensteer.generate`` and raw HF ``generate``, interleaved."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    layer = int(model.cfg.n_layers) // 2
    unit = torch.randn(int(model.cfg.d_model), generator=torch.Generator().manual_seed(2))
    swfc = lensteer.Steering(unit=unit, layers=(layer,), mode="swfc", scale=1.0)
    rows = []
    sync = device.startswith("cuda")
    for bs in batch_sizes:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(bs)]
        batch = left_pad([tokenize_prompt(model, p) for p in prompts], pad_id_of(model))
        tok, mask = batch.tokens.to(device), batch.attention_mask.to(device)

        def hf_generate(tok: torch.Tensor = tok, mask: torch.Tensor = mask) -> None:
            with torch.inference_mode():
                hf.generate(
                    tok,
                    attention_mask=mask,
                    max_new_tokens=n_new,
                    min_new_tokens=n_new,
                    do_sample=False,
                    pad_token_id=pad_id_of(model),
                )

        variants: dict[str, Callable[[], Any]] = {
            "lensteer unsteered": lambda p=prompts, b=bs: lensteer.generate(
                model, p, max_new_tokens=n_new, batch_size=b
            ),
            "lensteer SwFC": lambda p=prompts, b=bs: lensteer.generate(
                model, p, steering=swfc, max_new_tokens=n_new, batch_size=b
            ),
            "HF generate": hf_generate,
        }
        for fn in variants.values():  # warm-up (kernels, allocator)
            fn()
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(rounds):
            for name, fn in variants.items():
                times[name].append(_timed(fn, sync))
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        for name, t in med.items():
            rows.append(
                {
                    "batch": bs,
                    "variant": name,
                    "seconds": t,
                    "tokens_per_s": bs * n_new / t,
                    "vs_hf": med["HF generate"] / t,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", help="HF model folder (default: random weights of SmolLM2-135M's shape)")
    parser.add_argument(
        "--config-dir", default=".gpu/smollm2", help="config + tokenizer for the random model"
    )
    parser.add_argument("--dtypes", default="float32,bfloat16,float16")
    parser.add_argument("--quick", action="store_true", help="fewer tokens, rounds and batch sizes")
    parser.add_argument(
        "--batch-sizes", help="generation benchmark batch sizes (default 1,16,64; quick: 1,16)"
    )
    parser.add_argument("--no-bench", action="store_true", help="the parity checks only, no timings")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 parity means float32 matmuls
        torch.backends.cudnn.allow_tf32 = False
    tmp = Path(tempfile.mkdtemp(prefix="lensteer-gpu-"))
    folder = Path(args.model) if args.model else random_model_folder(Path(args.config_dir), tmp / "model")
    n_new = 8 if args.quick else 16
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "model": str(args.model or "random SmolLM2-135M shape"),
        "checks": {},
        "bench": {},
    }
    from importlib.metadata import version

    report |= {"transformers": version("transformers"), "transformer_lens": version("transformer-lens")}
    passed_dtypes = []
    for name in args.dtypes.split(","):
        checks: list[dict[str, Any]] = []
        start = time.perf_counter()
        try:
            model = lensteer.load_model(folder, device=args.device, dtype=DTYPES[name])
            n = int(model.cfg.n_layers)
            checks.append(batched_equals_single(model, name))
            checks.append(cached_equals_uncached(model, name, n_new))
            checks.append(strength0_equals_unsteered(model, n_new))
            patch, ours, theirs = patching_vs_transformerlens(model, name, sorted({0, n // 2, n - 1}))
            checks.append(patch)
            if cuda and name == "float32":
                checks.append(device_map_split(folder, model))
        except Exception as err:  # recorded, not hidden: the check that raised fails
            checks.append(_check("error", False, error=f"{type(err).__name__}: {err}"))
        report["checks"][name] = {"rows": checks, "seconds": time.perf_counter() - start}
        ok = all(c["passed"] for c in checks if c["required"])
        print(
            f"[{name}] {'PASS' if ok else 'FAIL'}: "
            + "; ".join(f"{c['check']} {'ok' if c['passed'] else 'FAILED'}" for c in checks),
            flush=True,
        )
        if ok:
            passed_dtypes.append(name)
            if name in ("float32", "bfloat16") and "model" in locals() and not args.no_bench:
                sizes = [
                    int(b) for b in (args.batch_sizes or ("1,16" if args.quick else "1,16,64")).split(",")
                ]
                rounds = 1 if args.quick else 3
                report["bench"][name] = {
                    "generation": bench_generation(
                        model, folder, args.device, DTYPES[name], sizes, 16 if args.quick else 64, rounds
                    )
                }
                t_ours = _timed(ours, cuda)
                t_tl = (
                    _timed(theirs, cuda) * n / len({0, n // 2, n - 1})
                )  # TL timed on those layers; the full sweep extrapolated
                report["bench"][name]["patching"] = {
                    "lensteer_full_s": t_ours,
                    "transformerlens_full_s_extrapolated": t_tl,
                    "speedup": t_tl / t_ours,
                }
        del model
        if cuda:
            torch.cuda.empty_cache()
    report["all_required_passed"] = len(passed_dtypes) == len(args.dtypes.split(","))
    (out / "gpu_checks.json").write_text(json.dumps(report, indent=1))
    (out / "gpu_checks.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if report["all_required_passed"] else 1


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Device: {report['device']}; torch {report['torch']}; transformers {report.get('transformers')}; "
        f"TransformerLens {report.get('transformer_lens')}; model: {report['model']}; {report['date']}",
        "",
        "| dtype | check | passed | numbers |",
        "|---|---|---|---|",
    ]
    for dtype, entry in report["checks"].items():
        for c in entry["rows"]:
            nums = ", ".join(
                f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in c.items()
                if k not in ("check", "passed", "required")
            )
            lines.append(
                f"| {dtype} | {c['check']}{'' if c['required'] else ' (recorded)'} | "
                f"{'yes' if c['passed'] else 'NO'} | {nums} |"
            )
    for dtype, bench in report["bench"].items():
        lines += [
            "",
            f"Generation, {dtype}:",
            "",
            "| batch | variant | s | tokens/s | vs HF generate |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['batch']} | {r['variant']} | {r['seconds']:.2f} | {r['tokens_per_s']:.0f} | {r['vs_hf']:.2f}x |"
            for r in bench["generation"]
        ]
        p = bench["patching"]
        lines.append(
            f"\nPatching sweep, {dtype}: lensteer {p['lensteer_full_s']:.2f} s vs TransformerLens "
            f"{p['transformerlens_full_s_extrapolated']:.2f} s (extrapolated): {p['speedup']:.1f}x"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
