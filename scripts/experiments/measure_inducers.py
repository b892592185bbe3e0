"""Measure what each bundled inducer does to a model (default: the embedded one).

For every threat model and inducer: the paired change of the teacher-forced preference for the
written aligned over the misaligned reply (lensteer.evaluate.inducer_effect), on the training
prompts, from two starting points: the template's default system prompt ("none") and the system
prompt that asks for the aligned behaviour (the study's prompting baseline; does the inducer undo
it?). Prints a markdown table (pasted into data/README.md between the inducers markers).
"""

import argparse
import time

import torch

import lensteer
from lensteer import threats
from lensteer.core.inducers import bundled_inducers
from lensteer.evaluate.inducers import inducer_effect


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--n", type=int, default=48, help="training prompts per threat model (stratified)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = lensteer.load_model(args.model)
    start = time.perf_counter()
    print(
        "| threat model | inducer | kind | from | n | margin before | change [95% CI] | fell / rose | sign test p |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for tm in ("refusal", "compassion", "honesty"):
        data = lensteer.load_dataset(tm).with_responses().train.stratified(args.n)
        for name, inducer in bundled_inducers(tm).items():
            for label, system in (("none", None), ("aligned system", threats.get(tm).aligned_system)):
                if inducer.kind == "system" and system is not None:
                    continue  # a system inducer replaces the system prompt: the same condition twice
                e = inducer_effect(model, data, inducer, base_system=system)
                print(
                    f"| {tm} | {name} | {inducer.kind} | {label} | {e.n} | {e.margin_base:+.3f} | "
                    f"{e.delta:+.3f} [{e.delta_ci[0]:+.3f}, {e.delta_ci[1]:+.3f}] | {e.lower} / {e.higher} | "
                    f"{e.p_value:.2g}{' (pushes)' if e.pushes else ''} |"
                )
    print(f"\n({time.perf_counter() - start:.0f} s, model {lensteer.core.model_fingerprint(model).name})")


if __name__ == "__main__":
    main()
