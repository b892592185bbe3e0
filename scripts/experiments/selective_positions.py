"""Does steering the first token (the attention sink) spoil StTP / StMP? (docs/guides/study.md, step 2.)

Builds the study's refusal steerings (response difference of means at layer 13, thresholds from the
two classes' projections), once steering every token and once every token but the first, calibrates
each to the same KL budget on harmless prompts, and counts refusals and redirecting refusals on 16
validation harmful requests (no gate, 64 new tokens). Also prints the first token's residual norm
and projection next to the other tokens'.

Usage: ``python scripts/experiments/selective_positions.py [--layer 13] [--kl 0.5] [--n 16]`` (about 2 min on 2 CPU cores).
"""

import argparse

import lensteer
from lensteer.core.chat import tokenize_prompt
from lensteer.locate.probing import contrast_prompts
from lensteer.steering.calibration import calibrate, kl_probe
from lensteer.study.config import STUDY_POSITIONS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--layer", type=int, default=13)
    parser.add_argument("--kl", type=float, default=0.5)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    model = lensteer.load_model()
    refusal = lensteer.load_dataset("refusal")
    aligned, misaligned, position = contrast_prompts(
        refusal.with_responses().train.head(48), "response"
    )  # as the study
    acts = lensteer.collect_activations(model, aligned + misaligned, layers=[args.layer], position=position)
    pos, neg = acts[: len(aligned), 0], acts[len(aligned) :, 0]
    direction = lensteer.diff_of_means(pos, neg, layer=args.layer, position=position)
    unit = direction.unit

    hook = f"blocks.{args.layer}.hook_resid_post"
    _, cache = model.run_with_cache(
        tokenize_prompt(model, refusal.val[0].prompt).tokens[None], names_filter=[hook]
    )
    resid = cache[hook][0]
    print(
        f"layer {args.layer}: first token norm {resid[0].norm():.0f}, projection {resid[0] @ unit:.0f}; "
        f"other tokens norm {resid[1:].norm(dim=-1).mean():.0f}, projection {(resid[1:] @ unit).mean():.1f}"
    )

    kl = kl_probe(model, refusal.val.paired_prompts[:6])
    prompts = refusal.val.head(args.n).chat_prompts()
    for mode in ("sttp", "stmp"):
        for name in ("all", "after_first"):  # every token vs every token but the first (the study's default)
            steering = lensteer.Steering.from_contrast(
                direction, pos, neg, mode=mode, positions=STUDY_POSITIONS[name]
            )
            cal = calibrate(model, steering, kl, args.kl)
            out = lensteer.generate(model, prompts, steering=cal.steering, max_new_tokens=args.max_new_tokens)
            verdicts = [lensteer.evaluate.refusal_verdict(t) for t in out.texts]
            print(
                f"{mode} {name:>11}: scale {cal.steering.scale:.3f} (KL {cal.kl:.3f}), refusals "
                f"{sum(v.refused for v in verdicts)}/{args.n}, redirecting {sum(v.redirects for v in verdicts)}/{args.n}, "
                f"fired on {out.steered_share():.0%} of tokens"
            )


if __name__ == "__main__":
    main()
