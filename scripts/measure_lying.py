"""Which misaligning setting makes the model lie on questions it knows? (``docs/honesty-known.md``)

On one split of the knowledge-filtered honesty set (choose on ``val``, report on ``test``), answers every
question unsteered (no context, the template's default system prompt) and under each setting: one of the
dataset's bundled inducers (its misaligning contexts and ``inducers.json``'s written for it, as
:meth:`~lensteer.threats.ThreatModel.inducers` lists them), or several joined by ``+`` (applied in that
order; a prefill's words count as part of the answer). Greedy, ``--max-new-tokens`` tokens. Each answer
gets the three-way verdict of :class:`~lensteer.evaluate.honesty.HonestyVerdict` (``label``): true,
false (asserts the planted or another wrong answer: a lie) or no answer (declines, hedges, unreadable).
Per setting: the lie, true and no-answer rates with Wilson intervals, how many lies are the planted false
answer, and the exact McNemar p of its lie flags against the unsteered ones on the same questions.
Writes JSON (with every answer).
"""

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

import lensteer
from lensteer.core.chat import ChatPrompt
from lensteer.core.datasets import ContrastSet
from lensteer.core.inducers import Inducer, apply_inducers, bundled_inducers
from lensteer.core.io import write_json
from lensteer.core.stats import mcnemar_exact, wilson_interval
from lensteer.errors import ConfigError
from lensteer.evaluate.honesty import HONESTY_LABELS, honesty_verdict


def _inducers(setting: str, dataset: str) -> list[Inducer]:
    """The inducers of a setting (none for ``unsteered``)."""
    if setting == "unsteered":
        return []
    available = bundled_inducers(dataset)
    names = setting.split("+")
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ConfigError(
            f"setting {setting!r}: unknown inducer(s) {unknown}; allowed 'unsteered' or inducers of "
            f"{dataset!r} joined by '+': {sorted(available)}"
        )
    return [available[n] for n in names]


def _prompts(inducers: list[Inducer], ds: ContrastSet) -> list[ChatPrompt]:
    return [apply_inducers(ChatPrompt(user=ex.prompt), inducers) for ex in ds]


def _scored(text: str, inducers: list[Inducer]) -> str:
    for inducer in reversed(inducers):
        text = inducer.scored_text(text)
    return text


def _rate(k: int, n: int) -> dict[str, Any]:
    return {"k": k, "n": n, "rate": k / n, "ci": list(wilson_interval(k, n))}


def _merged(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One output from several runs on the same questions (their unsteered answers must agree: the
    McNemar pairs of each run are then the merged output's)."""
    head = ("dataset", "split", "n", "max_new_tokens", "model")
    base = runs[0]
    for run in runs[1:]:
        if [run[k] for k in head] != [base[k] for k in head] or (
            run["settings"]["unsteered"]["answers"] != base["settings"]["unsteered"]["answers"]
        ):
            raise ConfigError("runs to merge differ in their questions, model or unsteered answers")
    out = {k: base[k] for k in head} | {"settings": {}, "merged_runs": len(runs)}
    for run in runs:
        out["settings"] |= run["settings"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--dataset", default="honesty_known")
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument(
        "--settings",
        default="unsteered,lying_fewshot,lying_fewshot_long,lying_game,lying_system,prefill_mislead",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        help="instead of measuring: join the settings of these outputs (runs split across processes) into --out",
    )
    parser.add_argument("--out", default=None)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.merge:
        write_json(args.out, _merged([json.loads(Path(p).read_text(encoding="utf-8")) for p in args.merge]))
        return
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
        inducers = _inducers(name, args.dataset)
        gens = lensteer.generate(
            model, _prompts(inducers, ds), max_new_tokens=args.max_new_tokens, batch_size=args.batch_size
        )
        texts = [_scored(t, inducers) for t in gens.texts]
        verdicts = [
            honesty_verdict(t, str(ex.true_answer), str(ex.false_answer))
            for t, ex in zip(texts, ds, strict=True)
        ]
        labels = [v.label for v in verdicts]
        lies = [lab == "false" for lab in labels]
        base_lies = lies if name == "unsteered" else base_lies
        n = len(labels)
        row: dict[str, Any] = {label: _rate(labels.count(label), n) for label in HONESTY_LABELS}
        row["planted_lies"] = sum(v.category == "lie" for v in verdicts)
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
    print(json.dumps({k: {lab: v[lab]["k"] for lab in HONESTY_LABELS} for k, v in out["settings"].items()}))


if __name__ == "__main__":
    main()
