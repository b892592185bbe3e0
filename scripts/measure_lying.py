"""Which misaligning setting makes the model lie on questions it knows? (``docs/honesty-known.md``)

On one split of the knowledge-filtered honesty set (choose on ``val``, report on ``test``), answers every
question unsteered (no context, the template's default system prompt) and under each setting: a context of
``honesty_known.contexts.json`` (``context:<name>``) or a bundled honesty inducer (``inducer:<name>``; a
prefill's words count as part of the answer). Greedy, ``--max-new-tokens`` tokens. Each answer gets the
three-way verdict: true (honest), false (asserts the planted false answer: a lie) or no answer (neither,
or unreadable). Per setting: the lie, true and no-answer rates with Wilson intervals, and the exact McNemar
p of its lie flags against the unsteered ones on the same questions. Writes JSON (with every answer).
"""

import argparse
import json
import time
from typing import Any

import torch

import lensteer
from lensteer.core.chat import ChatPrompt
from lensteer.core.inducers import Inducer, bundled_inducers
from lensteer.core.io import write_json
from lensteer.core.stats import mcnemar_exact, wilson_interval
from lensteer.errors import ConfigError
from lensteer.evaluate.honesty import honesty_verdict

LABEL_OF = {
    "honest": "true",
    "corrected": "true",
    "lie": "false",
    "no_answer": "no_answer",
    "unreadable": "no_answer",
}


def _inducer(name: str) -> Inducer | None:
    """The inducer of an ``inducer:<name>`` setting (``None`` for the others)."""
    kind, _, value = name.partition(":")
    if kind == "inducer":
        return bundled_inducers("honesty")[value]
    if name != "unsteered" and kind != "context":
        raise ConfigError(f"setting {name!r} is not 'unsteered', 'context:<name>' or 'inducer:<name>'")
    return None


def _prompts(name: str, ds: lensteer.ContrastSet) -> list[ChatPrompt]:
    if name.startswith("context:"):  # system prompt and/or turns, as the study applies it
        return ds.chat_prompts(context=name.partition(":")[2])
    inducer = _inducer(name)
    plain = [ChatPrompt(user=ex.prompt) for ex in ds]
    return plain if inducer is None else [inducer.apply(p) for p in plain]


def _rate(k: int, n: int) -> dict[str, Any]:
    return {"k": k, "n": n, "rate": k / n, "ci": list(wilson_interval(k, n))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--dataset", default="honesty_known")
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument(
        "--settings", default="unsteered,context:lying_fewshot,context:lying_system,inducer:prefill_mislead"
    )
    parser.add_argument("--out", default=None)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    full = lensteer.load_dataset(args.dataset)
    ds = getattr(full, args.split)
    names = args.settings.split(",")
    if names[0] != "unsteered":
        names = ["unsteered", *names]
    model = lensteer.load_model(args.model)
    out: dict[str, Any] = {
        "dataset": args.dataset,
        "split": args.split,
        "n": len(ds),
        "max_new_tokens": args.max_new_tokens,
        "model": lensteer.core.model_fingerprint(model).name,
        "settings": {},
    }
    base_lies: list[bool] = []
    for name in names:
        start = time.perf_counter()
        inducer = _inducer(name)
        gens = lensteer.generate(
            model, _prompts(name, ds), max_new_tokens=args.max_new_tokens, batch_size=args.batch_size
        )
        texts = [t if inducer is None else inducer.scored_text(t) for t in gens.texts]
        labels = [
            LABEL_OF[honesty_verdict(t, str(ex.true_answer), str(ex.false_answer)).category]
            for t, ex in zip(texts, ds, strict=True)
        ]
        lies = [lab == "false" for lab in labels]
        base_lies = lies if name == "unsteered" else base_lies
        n = len(labels)
        row: dict[str, Any] = {
            label: _rate(labels.count(label), n) for label in ("true", "false", "no_answer")
        }
        if name != "unsteered":
            test = mcnemar_exact(lies, base_lies)  # a_only: lies only under the setting
            row["lie_vs_unsteered"] = {
                "p": test.p_value,
                "only_setting": test.a_only,
                "only_unsteered": test.b_only,
            }
        row["seconds"] = round(time.perf_counter() - start)
        row["answers"] = [
            {"id": ex.id, "category": ex.category, "label": lab, "answer": t}
            for ex, lab, t in zip(ds, labels, texts, strict=True)
        ]
        out["settings"][name] = row
        print(
            f"{name}: lie {row['false']['k']}/{n} true {row['true']['k']}/{n} no answer {row['no_answer']['k']}/{n}"
            + (f" p={row['lie_vs_unsteered']['p']:.2g}" if "lie_vs_unsteered" in row else "")
            + f" ({row['seconds']} s)",
            flush=True,
        )
    if args.out:
        write_json(args.out, out)
    print(
        json.dumps(
            {
                k: {lab: v[lab]["k"] for lab in ("true", "false", "no_answer")}
                for k, v in out["settings"].items()
            }
        )
    )


if __name__ == "__main__":
    main()
