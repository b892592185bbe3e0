"""Generate the scorer audit set: real answers of a model, unsteered and steered, for hand labelling.

For each threat model, test prompts (every category in turn, under the study's misaligning context)
are answered unsteered and under the study's steerings found in ``--steerings`` (SwFC and StTP at the
matched budget), so both classes of each scoring rule occur. The rows go to ``--out`` with an empty
``label``; people (or careful readers following the guide in ``data/README.md``) fill it in.
``tests/unit/evaluate/test_scorer_audit.py`` then measures each scorer against the labels.

    python scripts/make_audit_set.py --steerings results/steerings --out data/scoring/audit_unlabelled.jsonl
"""

import argparse
import json
from pathlib import Path

import lensteer
from lensteer.core.io import write_text
from lensteer.study.evaluation import eval_prompts

SIZES = {"refusal": 40, "compassion": 30, "honesty": 30}
CONDITIONS = {"refusal": ("SwFC", "StTP"), "compassion": ("StTP",), "honesty": ("StTP",)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steerings", required=True, help="a study's steerings folder")
    parser.add_argument("--out", required=True)
    parser.add_argument("--budget", default="0.5")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    model = lensteer.load_model()
    rows = []
    for tm, n in SIZES.items():
        prompts = eval_prompts(tm, n)
        examples = lensteer.load_dataset(tm).test.stratified(n)
        steerings = [None] + [lensteer.load_steering(Path(args.steerings) / f"{tm}_{m}_kl{args.budget}", model=model)
                              for m in CONDITIONS[tm]]
        names = ["unsteered", *CONDITIONS[tm]]
        out = lensteer.generate(model, [p for _ in steerings for p in prompts],
                                prompt_steerings=[s for s in steerings for _ in prompts],
                                max_new_tokens=args.max_new_tokens, batch_size=64)
        for k, name in enumerate(names):
            for i, (prompt, ex) in enumerate(zip(prompts, examples, strict=True)):
                rows.append({"id": f"audit-{tm}-{name}-{i:02d}", "threat_model": tm, "condition": name,
                             "prompt": prompt.user, "response": out.texts[k * len(prompts) + i],
                             "true_answer": ex.true_answer, "false_answer": ex.false_answer, "label": None})
        print(f"{tm}: {len(prompts) * len(names)} answers")
    write_text(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
