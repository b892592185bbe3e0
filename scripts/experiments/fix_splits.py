"""Fix every bundled example's split once, by id, in the data file itself (kept for provenance).

Rows that already have a ``split`` keep it. In a file without any, each row first gets the split it
had when splits were computed at load time (:func:`lensteer.core.splits.hashed_splits`), which is
the split every earlier result used. Rows added later (no ``split``) go, in SHA-256 order, to the
splits short of 60/20/20 of their category's new total. Finally near-duplicate prompts
(:func:`lensteer.core.splits.near_duplicate`) are pulled into the split of the earlier row, so no
prompt has a paraphrase on the other side of a split.

    python scripts/experiments/fix_splits.py data/contrast/refusal.jsonl [...]
"""

import hashlib
import json
import sys
from dataclasses import fields
from pathlib import Path

from lensteer.core.datasets import ContrastExample
from lensteer.core.splits import SPLIT_FRACTIONS, SPLITS, hashed_splits, near_duplicate

FIELDS = {f.name for f in fields(ContrastExample)}


def example(row: dict) -> ContrastExample:
    return ContrastExample(**{k: v for k, v in row.items() if k in FIELDS and v is not None})


def fill_new_rows(rows: list[dict]) -> None:
    for cat in {r.get("category") or "uncategorised" for r in rows}:
        group = [r for r in rows if (r.get("category") or "uncategorised") == cat]
        want = {
            "train": round(len(group) * SPLIT_FRACTIONS[0]),
            "val": round(len(group) * SPLIT_FRACTIONS[1]),
        }
        want["test"] = len(group) - want["train"] - want["val"]
        have = {s: sum(1 for r in group if r.get("split") == s) for s in SPLITS}
        for r in sorted(
            (r for r in group if not r.get("split")),
            key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest(),
        ):
            short = [s for s in SPLITS if have[s] < want[s]]
            r["split"] = short[0] if short else "train"
            have[r["split"]] += 1


def join_near_duplicates(rows: list[dict]) -> list[str]:
    moved, examples = [], [example(r) for r in rows]
    for i, a in enumerate(examples):
        for j in range(i + 1, len(rows)):
            if rows[i]["split"] != rows[j]["split"] and near_duplicate(a, examples[j]):
                moved.append(
                    f"{rows[j]['id']}: {rows[j]['split']} -> {rows[i]['split']} (near-duplicate of {rows[i]['id']})"
                )
                rows[j]["split"] = rows[i]["split"]
    return moved


def main(paths: list[str]) -> None:
    for name in paths:
        path = Path(name)
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not any(r.get("split") for r in rows):
            legacy = hashed_splits([example(r) for r in rows])
            for r in rows:
                r["split"] = legacy[r["id"]]
        fill_new_rows(rows)
        for line in join_near_duplicates(rows):
            print(f"{path.name}: {line}")
        counts = {s: sum(1 for r in rows if r["split"] == s) for s in SPLITS}
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"{path.name}: {len(rows)} rows, {counts}")


if __name__ == "__main__":
    main(sys.argv[1:])
