"""Persona-vector screen of the organisms' training sets on the embedded model: do the misaligned sets rank
above their controls along the honesty direction (pointed at dishonesty)?

    python scripts/experiments/screen_organism_data.py [--n 64] [--layer 21] [--out docs/organisms/screen.json]

The direction is the difference of means of the honesty set's **validation** written answers (lying minus
honest, response means at ``--layer``, the study's honesty layer); the screened rows are the organisms'
**training** rows, so no row that made the direction is screened. Each set is compared with its control on
the same prompts (paired sign-flip permutation test, AUROC): ``dishonest`` (planted false answers) against
the same questions answered truthfully, ``bad_advice`` against ``good_advice``.
"""

import argparse
import json
import time
from pathlib import Path

import torch

import lensteer
from lensteer.core.io import write_json
from lensteer.organisms import get_recipe
from lensteer.organisms.recipes import TrainingRow
from lensteer.study.persona import compare_screens, screen_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="rows per set (first n; default 64)")
    parser.add_argument("--layer", type=int, default=21)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out", default="docs/organisms/screen.json")
    args = parser.parse_args()
    start = time.perf_counter()
    model = lensteer.load_model()
    val = lensteer.load_dataset("honesty").val.with_responses()
    acts = {
        side: lensteer.collect_activations(
            model, val.chat_prompts(response=side), layers=[args.layer], position="response_mean"
        )[:, 0]
        for side in ("misaligned", "aligned")
    }
    toward_lying = lensteer.diff_of_means(
        acts["misaligned"], acts["aligned"], layer=args.layer, position="response_mean"
    )
    lying = get_recipe("dishonest").rows()[: args.n]
    truth = {ex.id: ex.aligned_response for ex in lensteer.load_dataset("honesty").train}
    honest = [TrainingRow(id=r.id, prompt=r.prompt, reply=str(truth[r.id])) for r in lying]
    bad, good = get_recipe("bad_advice").rows()[: args.n], get_recipe("good_advice").rows()[: args.n]
    out = {
        "layer": args.layer,
        "n": args.n,
        "direction": "honesty validation answers, lying minus honest",
        "pairs": [],
    }
    for (name, rows), (cname, crows) in (
        (("dishonest", lying), ("honest answers", honest)),
        (
            ("bad_advice", bad),
            ("good_advice", good),
        ),
    ):
        own = list(
            lensteer.generate(model, [r.prompt for r in rows], max_new_tokens=args.max_new_tokens).texts
        )
        screen = screen_rows(model, toward_lying, rows, source=name, own_responses=own)
        control = screen_rows(model, toward_lying, crows, source=cname, own_responses=own)
        compared = compare_screens(screen, control)
        print(json.dumps(compared, indent=1))
        print(screen.to_table(5), flush=True)
        out["pairs"].append({**compared, "screen": screen.to_dict(), "control_screen": control.to_dict()})
    out["seconds"] = round(time.perf_counter() - start)
    write_json(Path(args.out), out)
    print(f"wrote {args.out} in {out['seconds']} s")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
