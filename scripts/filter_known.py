"""Write the knowledge-filtered honesty set (``data/contrast/honesty_known.jsonl``): kept for provenance.

Every question of ``honesty.jsonl`` and ``honesty_easy.jsonl`` is answered by the unsteered model (the
embedded one by default) with no context and the chat template's default system prompt, greedy; the
rows it answers correctly (``honesty_verdict(...).honest``: states the true answer, asserts no false
one, readable) are kept unchanged, ids and stored splits included. Under a lying context, a question
the model does not know gives a non-answer or a wrong guess whatever the context does, so only the
known questions measure honesty rather than knowledge.

Also writes ``honesty_known.contexts.json`` (a copy of ``honesty.contexts.json``: the same misaligning
contexts apply) and ``--stats`` (the filter's numbers: kept per source, split and category), and, with
``--answers``, every answer and its verdict (for re-scoring; answers already in that file are reused, so
``--splits val,test`` then a run over all splits spends no time twice). With ``--sources``, only those
sources are answered; the other sources' kept rows and numbers are carried over from the previous run's
``<out>.jsonl`` and ``--stats`` (greedy decoding of the same model gives the same answers).
"""

import argparse
import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

import lensteer
from lensteer.core.chat import ChatPrompt
from lensteer.core.io import write_json, write_text
from lensteer.evaluate.honesty import honesty_verdict

SOURCES = ("honesty.jsonl", "honesty_easy.jsonl", "honesty_own.jsonl")


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _counts(rows: list[dict[str, Any]], keep: list[bool], key: str) -> dict[str, dict[str, int]]:
    total, kept = Counter(r[key] for r in rows), Counter(r[key] for r, k in zip(rows, keep, strict=True) if k)
    return {name: {"n": total[name], "known": kept[name]} for name in sorted(total)}


def _carried(args: argparse.Namespace, sources: list[str]) -> tuple[list[str], dict[str, Any]]:
    """The kept rows and numbers of ``sources`` from the previous run (not answered again)."""
    if not sources:
        return [], {}
    old = json.loads(args.stats.read_text(encoding="utf-8"))["sources"]
    ids = {r["id"] for s in sources for r in _rows(args.data / s)}
    lines = [line for line in (args.data / f"{args.out}.jsonl").read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line.strip() and json.loads(line)["id"] in ids], {
        s: old[s] for s in sources
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--data", type=Path, default=Path("data/contrast"))
    parser.add_argument("--out", default="honesty_known")
    parser.add_argument("--stats", type=Path, default=Path("docs/honesty-known/filter.json"))
    parser.add_argument("--answers", type=Path, default=None)
    parser.add_argument(
        "--splits", default="train,val,test", help="splits to answer (the others are left out)"
    )
    parser.add_argument(
        "--sources", default=",".join(SOURCES), help="sources to answer (the others are carried over)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = lensteer.load_model(args.model)
    start = time.perf_counter()
    splits = args.splits.split(",")
    stats: dict[str, Any] = {
        "model": lensteer.core.model_fingerprint(model).name,
        "max_new_tokens": args.max_new_tokens,
        "decoding": "greedy, no context, default system prompt",
        "splits": splits,
        "sources": {},
    }
    cached = (
        {a["id"]: a["answer"] for a in json.loads(args.answers.read_text())}
        if args.answers and args.answers.is_file()
        else {}
    )
    answer = args.sources.split(",")
    kept_lines, stats["sources"] = _carried(args, [s for s in SOURCES if s not in answer])
    for source in answer:
        rows = [r for r in _rows(args.data / source) if r["split"] in splits]
        todo = [r for r in rows if r["id"] not in cached]
        if todo:
            gens = lensteer.generate(
                model,
                [ChatPrompt(user=r["prompt"]) for r in todo],
                max_new_tokens=args.max_new_tokens,
                batch_size=args.batch_size,
            )
            cached |= {r["id"]: t for r, t in zip(todo, gens.texts, strict=True)}
            if args.answers is not None:
                write_json(args.answers, [{"id": i, "answer": t} for i, t in cached.items()])
        texts = [cached[r["id"]] for r in rows]
        verdicts = [
            honesty_verdict(t, r["true_answer"], r["false_answer"]) for t, r in zip(texts, rows, strict=True)
        ]
        keep = [v.honest for v in verdicts]
        kept_lines += [json.dumps(r, ensure_ascii=False) for r, k in zip(rows, keep, strict=True) if k]
        stats["sources"][source] = {
            "n": len(rows),
            "known": sum(keep),
            "verdicts": dict(Counter(v.category for v in verdicts)),
            "by_split": _counts(rows, keep, "split"),
            "by_category": _counts(rows, keep, "category"),
        }
    write_text(args.data / f"{args.out}.jsonl", "".join(line + "\n" for line in kept_lines))
    shutil.copyfile(args.data / "honesty.contexts.json", args.data / f"{args.out}.contexts.json")
    known = lensteer.load_dataset(args.data / f"{args.out}.jsonl")
    stats["known"] = {
        "n": len(known),
        "train": len(known.train),
        "val": len(known.val),
        "test": len(known.test),
    }
    stats["seconds"] = round(time.perf_counter() - start)
    write_json(args.stats, stats)
    print(json.dumps(stats["known"]), f"in {stats['seconds']} s")


if __name__ == "__main__":
    main()
