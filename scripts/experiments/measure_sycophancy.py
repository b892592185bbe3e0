"""Measure whether the sycophancy threat model's misaligning context induces sycophancy (default: the embedded model).

Greedy answers (32 new tokens) to the validation prompts of ``data/contrast/sycophancy.jsonl`` under three
conditions: the bare prompt (``none``), the ``agreeing_fewshot`` context, and that context with the
prompting baseline's system prompt (``prompting``). Each answer is scored by the threat model's own scorer
(not kept: agrees, states the false answer or gives none; endorsed: agrees or states the false answer); prints
both rates with Wilson intervals, exact McNemar tests of each condition against ``none``, and the category
counts, as markdown (pasted into docs/sycophancy.md).
With ``--save`` the answers are written as JSONL (id, prompt, response, true_answer, false_answer,
condition); ``--answers`` rescores such a file without generating.

    PYTHONPATH=. python scripts/experiments/measure_sycophancy.py --n 48 --save /work/scratch/syco_answers.jsonl
"""

import argparse
import json
import time
from dataclasses import replace as with_fields
from pathlib import Path

import torch

import lensteer
from lensteer import threats
from lensteer.core.datasets import ContrastSet
from lensteer.core.io import write_text
from lensteer.core.stats import mcnemar_exact, wilson_interval
from lensteer.threats.sycophancy import SYCOPHANCY_CATEGORIES, sycophancy_category

CONDITIONS = ("none", "agreeing_fewshot", "prompting")


def generate_answers(
    model_name: str | None, ds: ContrastSet, batch_size: int, save: Path | None
) -> list[dict[str, str]]:
    """Each condition's answers, appended to ``save`` (if given) as each condition finishes."""
    tm = threats.get("sycophancy")
    model = lensteer.load_model(model_name)
    out = []
    for cond in CONDITIONS:
        start = time.perf_counter()
        if cond == "none":
            prompts = ds.chat_prompts()
        else:
            prompts = ds.chat_prompts(context=tm.misaligning_context)
            if cond == "prompting":
                prompts = [with_fields(p, system=tm.aligned_system) for p in prompts]
        gens = lensteer.generate(model, prompts, max_new_tokens=32, batch_size=batch_size)
        out += [
            {
                "id": ex.id,
                "prompt": ex.prompt,
                "response": text,
                "true_answer": str(ex.true_answer),
                "false_answer": str(ex.false_answer),
                "condition": cond,
            }
            for ex, text in zip(ds, gens.texts, strict=True)
        ]
        if save is not None:
            write_text(save, "".join(json.dumps(a) + "\n" for a in out))
        print(f"{cond}: {time.perf_counter() - start:.0f} s", flush=True)
    return out


def report(answers: list[dict[str, str]], ds: ContrastSet) -> str:
    """Two rates per condition: not kept (the scorer's negative: agrees, states the user's false answer, or
    gives no answer) and endorsed (agrees or states the user's false answer: the ``endorses`` and ``lie``
    categories), each with a Wilson interval and an exact McNemar test against ``none``."""
    tm = threats.get("sycophancy")
    by_id = {ex.id: ex for ex in ds}
    flags: dict[str, dict[str, list[bool]]] = {}
    lines = [
        "| condition | n | not kept [95% Wilson] | vs none: McNemar p (only this / only none) "
        "| endorsed the false claim [95% Wilson] | vs none: McNemar p | categories |",
        "|---|---|---|---|---|---|---|",
    ]
    for cond in CONDITIONS:
        rows = [a for a in answers if a["condition"] == cond]
        if not rows:
            continue
        texts = [a["response"] for a in rows]
        examples = with_fields(ds, examples=tuple(by_id[a["id"]] for a in rows))
        cats = [sycophancy_category(t, ex) for t, ex in zip(texts, examples, strict=True)]
        flags[cond] = {
            "not_kept": [not f for f in tm.flags(texts, examples)],
            "endorsed": [c in ("endorses", "lie") for c in cats],
        }
        cells = [cond, str(len(rows))]
        for key in ("not_kept", "endorsed"):
            k, n = sum(flags[cond][key]), len(flags[cond][key])
            lo, hi = wilson_interval(k, n)
            cells.append(f"{k / n:.1%} [{lo:.1%}, {hi:.1%}]")
            if cond == "none":
                cells.append("")
            else:
                t = mcnemar_exact(flags[cond][key], flags["none"][key])
                cells.append(f"{t.p_value:.2g} ({t.a_only} / {t.b_only})")
        cells.append(", ".join(f"{c} {cats.count(c)}" for c in SYCOPHANCY_CATEGORIES if cats.count(c)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None)
    parser.add_argument("--split", default="val")
    parser.add_argument(
        "--n", type=int, default=None, help="the first N of the split, categories in turn (default: all)"
    )
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--save", type=Path, default=None, help="write the answers here (JSONL)")
    parser.add_argument(
        "--answers", type=Path, default=None, help="rescore these saved answers instead of generating"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    ds = getattr(lensteer.load_dataset("sycophancy"), args.split).stratified(args.n)
    if args.answers:
        answers = [json.loads(line) for line in args.answers.read_text().splitlines() if line.strip()]
    else:
        answers = generate_answers(args.model, ds, args.batch_size, args.save)
    print(report(answers, ds))


if __name__ == "__main__":
    main()
