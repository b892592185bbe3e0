"""Benchmark: lensteer's residual patching sweep vs TransformerLens' get_act_patch_resid_pre,
and attribution patching vs exact patching.

Same model (embedded SmolLM2), same 8 equal-length harmful/harmless prompt pairs, same metric
(logit of "I" minus logit of "Sure" at the last position), every layer x every position, run side
by side in one process. Reports both times, the speed ratio and the largest difference; then the
time of attribution patching over the same cells and its correlation with exact patching.

    python benchmarks/bench_patching.py [--layers 0,10,20] [--threads 2]
"""

import argparse
import platform
import time

import torch
from transformer_lens import patching as tl_patching

import lensteer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default="", help="comma-separated layers (default: all)")
    parser.add_argument("--n-pairs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = lensteer.load_model()
    ds = lensteer.load_dataset("refusal")
    idx = lensteer.equal_length_pairs(model, ds.prompts, ds.paired_prompts)[: args.n_pairs]
    clean = torch.stack([lensteer.tokenize_prompt(model, ds.prompts[i]).tokens for i in idx])
    corrupted = torch.stack([lensteer.tokenize_prompt(model, ds.paired_prompts[i]).tokens for i in idx])
    metric = lensteer.logit_diff_metric(lensteer.first_token_id(model, "I"), lensteer.first_token_id(model, "Sure"))
    layers = [int(x) for x in args.layers.split(",")] if args.layers else list(range(model.cfg.n_layers))

    start = time.perf_counter()
    ours = lensteer.patch_residual(model, clean, corrupted, metric, layers=layers)
    t_ours = time.perf_counter() - start

    start = time.perf_counter()
    with torch.inference_mode():
        _, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_resid_pre"))
        index_df = tl_patching.make_df_from_ranges([model.cfg.n_layers, clean.shape[1]], ["layer", "pos"])
        index_df = index_df[index_df["layer"].isin(layers)].reset_index(drop=True)
        theirs = tl_patching.generic_activation_patch(
            model, corrupted, cache, lambda logits: metric(logits[:, -1]).mean(),
            tl_patching.layer_pos_patch_setter, "resid_pre", index_df=index_df,
        )
    t_tl = time.perf_counter() - start

    start = time.perf_counter()
    approx = lensteer.attribute_residual(model, clean, corrupted, metric, layers=layers)
    t_attr = time.perf_counter() - start
    diff = (ours.mean().flatten() - theirs.flatten()).abs().max()
    print(f"machine: {platform.machine()}, {args.threads} torch threads, torch {torch.__version__}")
    print(f"{len(idx)} pairs x {clean.shape[1]} tokens, {len(layers)} layers x {clean.shape[1]} positions "
          f"= {len(layers) * clean.shape[1]} cells")
    print("| implementation | seconds | speed-up |\n|---|---|---|")
    print(f"| TransformerLens generic_activation_patch (resid_pre) | {t_tl:.1f} | 1.00x |")
    print(f"| lensteer.patch_residual | {t_ours:.1f} | {t_tl / t_ours:.2f}x |")
    print(f"| lensteer.attribute_residual (estimate) | {t_attr:.1f} | {t_tl / t_attr:.1f}x |")
    print(f"max |difference| of the metric (exact): {float(diff):.2e}; attribution is {t_ours / t_attr:.0f}x "
          f"faster than our exact patching, correlation with it r = {approx.correlation(ours):.2f}")


if __name__ == "__main__":
    main()
