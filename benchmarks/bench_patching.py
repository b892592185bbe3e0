"""Benchmark: lensteer's full residual patching sweep vs TransformerLens' activation patching,
and attribution patching (AtP, AtP* GradDrop) vs exact patching.

Same model (embedded SmolLM2), same 8 equal-length harmful/harmless prompt pairs, same metric
(logit of "I" minus logit of "Sure" at the last position), denoising resid_pre patching, in one
process. lensteer runs the FULL sweep (every layer x every position). TransformerLens'
``generic_activation_patch`` (what ``get_act_patch_resid_pre`` calls) runs one whole forward per
cell at the same cost for every cell, so it times a subset of layers (``--tl-layers``, every
position) and its full-sweep time is extrapolated from the per-cell time; the results are compared
on the cells both computed. The lensteer sweep runs before and after TransformerLens (interleaved)
so that load from other processes shows up as the spread of the two times.

    python benchmarks/bench_patching.py [--tl-layers 0,15,29] [--n-pairs 8] [--threads 2]
    python benchmarks/bench_patching.py --attribution-only   # AtP vs exact, residual cells and heads
"""

import argparse
import platform
import time

import torch
from _machine import machine_line
from transformer_lens import patching as tl_patching

import lensteer


def _timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a @ b) / (a.norm() * b.norm()).clamp(min=1e-12))


def _recall(estimate: torch.Tensor, exact: torch.Tensor, k: int) -> float:
    """Fraction of the exact top-k cells (by |effect|) that are in the estimate's top-k."""
    top_exact = set(exact.abs().flatten().topk(k).indices.tolist())
    top_est = set(estimate.abs().flatten().topk(k).indices.tolist())
    return len(top_exact & top_est) / k


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tl-layers", default="0,15,29", help="layers TransformerLens times (every position)"
    )
    parser.add_argument("--n-pairs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument(
        "--attribution-only",
        action="store_true",
        help="skip TransformerLens: attribution vs exact patching, residual cells and heads, 2 rounds",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(args.threads), flush=True)
    model = lensteer.load_model()
    ds = lensteer.load_dataset("refusal")
    idx = lensteer.locate.equal_length_pairs(model, ds.prompts, ds.paired_prompts)[: args.n_pairs]
    clean = torch.stack([lensteer.core.tokenize_prompt(model, ds.prompts[i]).tokens for i in idx])
    corrupted = torch.stack([lensteer.core.tokenize_prompt(model, ds.paired_prompts[i]).tokens for i in idx])
    metric = lensteer.locate.logit_diff_metric(
        lensteer.core.first_token_id(model, "I"), lensteer.core.first_token_id(model, "Sure")
    )
    n_layers, n_pos = int(model.cfg.n_layers), clean.shape[1]
    tl_layers = [int(x) for x in args.tl_layers.split(",")]
    n_cells, n_tl_cells = n_layers * n_pos, len(tl_layers) * n_pos

    def ours() -> lensteer.locate.PatchResult:
        return lensteer.patch_residual(model, clean, corrupted, metric)

    def theirs() -> torch.Tensor:
        with torch.inference_mode():
            _, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_resid_pre"))
            index_df = tl_patching.make_df_from_ranges([n_layers, n_pos], ["layer", "pos"])
            index_df = index_df[index_df["layer"].isin(tl_layers)].reset_index(drop=True)
            return tl_patching.generic_activation_patch(
                model,
                corrupted,
                cache,
                lambda logits: metric(logits[:, -1]).mean(),
                tl_patching.layer_pos_patch_setter,
                "resid_pre",
                index_df=index_df,
            )

    if args.attribution_only:
        _attribution_only(model, clean, corrupted, metric, args.top_k)
        return
    exact, t_ours_1 = _timed(ours)
    print(f"lensteer full sweep, run 1: {t_ours_1:.1f} s", flush=True)
    tl_values, t_tl_subset = _timed(theirs)
    print(f"TransformerLens, {n_tl_cells} cells: {t_tl_subset:.1f} s", flush=True)
    exact_2, t_ours_2 = _timed(ours)
    print(f"lensteer full sweep, run 2: {t_ours_2:.1f} s", flush=True)
    atp, t_atp = _timed(lambda: lensteer.attribute_residual(model, clean, corrupted, metric))
    atp_star, t_star = _timed(
        lambda: lensteer.attribute_residual(model, clean, corrupted, metric, method="atp*")
    )

    t_tl_full = t_tl_subset / n_tl_cells * n_cells
    t_ours = (t_ours_1 + t_ours_2) / 2
    diff = float((exact.mean()[tl_layers].flatten() - tl_values.flatten()).abs().max())
    rerun = float((exact.per_example - exact_2.per_example).abs().max())
    first_diff = [int((a != b).nonzero()[0]) for a, b in zip(clean, corrupted, strict=True)]
    recomputed = n_layers * sum(n_pos - f for f in first_diff)
    print(f"machine: {platform.machine()}, {args.threads} torch threads, torch {torch.__version__}")
    print(
        f"{len(idx)} pairs x {n_pos} tokens; full sweep {n_layers} layers x {n_pos} positions = {n_cells} cells; "
        f"TransformerLens timed layers {tl_layers} = {n_tl_cells} cells"
    )
    print(
        f"pairs first differ at positions {first_diff}: at most {recomputed} of {n_cells * len(idx)} (cell, pair) "
        "runs change anything; the others equal the corrupted run and are not recomputed"
    )
    print("| implementation | seconds (full sweep) | speed-up |\n|---|---|---|")
    print(
        f"| TransformerLens generic_activation_patch, resid_pre | {t_tl_full:.0f} (extrapolated from "
        f"{t_tl_subset:.1f} s for {n_tl_cells} cells, {t_tl_subset / n_tl_cells:.2f} s/cell) | 1.00x |"
    )
    print(
        f"| lensteer.patch_residual (incremental), run 1 / run 2 | {t_ours_1:.1f} / {t_ours_2:.1f} | "
        f"{t_tl_full / t_ours_1:.1f}x / {t_tl_full / t_ours_2:.1f}x |"
    )
    print(f"| lensteer.attribute_residual, AtP | {t_atp:.1f} | {t_tl_full / t_atp:.0f}x |")
    print(f"| lensteer.attribute_residual, AtP* (GradDrop) | {t_star:.1f} | {t_tl_full / t_star:.0f}x |")
    print(
        f"max |difference| vs TransformerLens on the {n_tl_cells} shared cells: {diff:.2e}; "
        f"between our two runs: {rerun:.2e}"
    )
    ex = exact.mean() - exact.target.mean()
    for name, res, t in (("AtP", atp, t_atp), ("AtP* GradDrop", atp_star, t_star)):
        est = res.mean() - res.target.mean()
        print(
            f"{name}: {t_ours / t:.1f}x faster than our exact sweep; Pearson r with exact = {res.correlation(exact):.2f} "
            f"(signed), {_pearson(est.abs(), ex.abs()):.2f} (|effect|); top-{args.top_k} recall "
            f"{_recall(est, ex, args.top_k):.2f}"
        )


def _attribution_only(model, clean, corrupted, metric, top_k: int) -> None:  # type: ignore[no-untyped-def]
    """Attribution patching vs exact patching on the same inputs, residual cells and heads, interleaved."""
    variants = {
        "exact resid_pre (patch_residual)": lambda: lensteer.patch_residual(model, clean, corrupted, metric),
        "AtP resid_pre (attribute_residual)": lambda: lensteer.attribute_residual(
            model, clean, corrupted, metric
        ),
        "exact heads (patch_heads)": lambda: lensteer.locate.patch_heads(model, clean, corrupted, metric),
        "AtP heads (attribute_heads)": lambda: lensteer.locate.attribute_heads(
            model, clean, corrupted, metric
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    results = {}
    for _ in range(2):
        for name, fn in variants.items():
            results[name], t = _timed(fn)
            times[name].append(t)
            print(f"{name}: {t:.1f} s", flush=True)
    best = {k: min(v) for k, v in times.items()}
    print(
        f"machine: {platform.machine()}, torch {torch.__version__}, {len(clean)} pairs x {clean.shape[1]} tokens, "
        "all layers; best of 2 interleaved rounds"
    )
    print("| variant | s (round 1 / round 2) | attribution speed-up | Pearson r with exact | top-k recall |")
    print("|---|---|---|---|---|")
    for exact_name, atp_name in (
        ("exact resid_pre (patch_residual)", "AtP resid_pre (attribute_residual)"),
        ("exact heads (patch_heads)", "AtP heads (attribute_heads)"),
    ):
        exact, atp = results[exact_name], results[atp_name]
        ex, est = exact.mean() - exact.target.mean(), atp.mean() - atp.target.mean()
        k = min(top_k, ex.numel() // 4)
        print(f"| {exact_name} | {times[exact_name][0]:.1f} / {times[exact_name][1]:.1f} | | | |")
        print(
            f"| {atp_name} | {times[atp_name][0]:.1f} / {times[atp_name][1]:.1f} | "
            f"{best[exact_name] / best[atp_name]:.1f}x | {atp.correlation(exact):.2f} | {_recall(est, ex, k):.2f} (k={k}) |"
        )


if __name__ == "__main__":
    main()
