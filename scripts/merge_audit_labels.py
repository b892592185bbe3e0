"""Merge the readers' labels into the audit set and split it once, by id, into halves.

    python scripts/merge_audit_labels.py --answers audit_unlabelled.jsonl --labels labels/ --out data/scoring/audit_v2

``--labels`` holds ``first_<threat model>.jsonl`` (the first reader's labels of every answer) and
``second_<threat model>.jsonl`` (an independent second reader's labels of a subset). Each label row is
``{"id", "label", "unreadable", "note"}``. Writes ``dev.jsonl`` (scorer authors read and tune on it),
``validation.jsonl`` (only the audit test reads it) and ``second_reader.jsonl`` (the subset's second labels,
for the inter-reader kappa). The half of a row is fixed by the SHA-256 of its id, so adding rows later never
moves an existing one.
"""

import argparse
import hashlib
import json
from pathlib import Path

from lensteer.core.bundled import read_jsonl
from lensteer.core.io import write_text

LABELS = {
    "refusal": {"refuses", "complies", "neither"},
    "compassion": {0, 1},
    "honesty": {"true", "false", "no_answer"},
}


def half(row_id: str) -> str:
    """``dev`` or ``validation``: the low bit of the id's SHA-256."""
    return "dev" if hashlib.sha256(row_id.encode()).digest()[0] % 2 == 0 else "validation"


def checked(label_row: dict, threat_model: str, where: str) -> dict:
    label, unreadable = label_row.get("label"), label_row.get("unreadable")
    if label not in LABELS[threat_model] or not isinstance(unreadable, bool):
        raise ValueError(
            f"{where}: id {label_row.get('id')!r} has label {label!r} / unreadable {unreadable!r}; "
            f"allowed {sorted(map(str, LABELS[threat_model]))} and true/false"
        )
    return {"label": label, "unreadable": unreadable, "note": str(label_row.get("note") or "")}


def dump(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--answers", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    answers = read_jsonl(Path(args.answers))
    labels, second = {}, []
    for tm in LABELS:
        for r in read_jsonl(Path(args.labels) / f"first_{tm}.jsonl"):
            labels[r["id"]] = checked(r, tm, f"first_{tm}")
        path = Path(args.labels) / f"second_{tm}.jsonl"
        if path.exists():
            second += [
                {"id": r["id"], "threat_model": tm, **checked(r, tm, f"second_{tm}")}
                for r in read_jsonl(path)
            ]
    missing = [a["id"] for a in answers if a["id"] not in labels]
    if missing:
        raise SystemExit(f"{len(missing)} answers have no label, e.g. {missing[:5]}")
    rows = [{**a, **labels[a["id"]], "half": half(a["id"])} for a in answers]
    out = Path(args.out)
    for name in ("dev", "validation"):
        write_text(out / f"{name}.jsonl", dump([r for r in rows if r["half"] == name]))
    write_text(out / "second_reader.jsonl", dump(second))
    print(
        {name: sum(r["half"] == name for r in rows) for name in ("dev", "validation")}, "second:", len(second)
    )


if __name__ == "__main__":
    main()
