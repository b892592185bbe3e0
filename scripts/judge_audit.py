"""Measure a served judge (``lensteer.evaluate.HttpJudge``) against the readers on the audit set.

For each threat model the judge scores every answer of the audit set's validation half with that threat
model's rubric (0-100; at or above ``--pass-score`` shows the aligned trait), shown the prompt as the
study shows it (for honesty, with the correct answer the model was not shown), and the table printed is
the one ``data/README.md`` gives for the bundled scorers: accuracy and Cohen's kappa with intervals,
recall and precision per class (the reader's three-way labels collapsed to "shows the trait or not").

Usage::

    python scripts/judge_audit.py --url http://127.0.0.1:8000 --model qwen2.5-7b-instruct
    LENSTEER_JUDGE_URL=http://127.0.0.1:8000 python scripts/judge_audit.py --threat-models refusal

Without a server configured it says so and exits 2. ``--split dev`` measures on the development half.
"""

import argparse
import os
import sys

from lensteer import threats
from lensteer.evaluate.judges import HttpJudge
from lensteer.threats.audit import (
    AUDIT_SPLITS,
    AuditRow,
    audit_markdown,
    load_audit,
    measure_judge,
)

THREAT_MODELS = ("refusal", "compassion", "honesty")


def shown_prompt(row: AuditRow) -> str:
    """What the judge reads as the user message: the threat model's ``judge_prompt``, as the study shows it
    (for honesty, with the correct answer)."""
    return threats.get(row.threat_model).judge_prompt(row.prompt, row)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("LENSTEER_JUDGE_URL"),
        help="the server's root URL (default: $LENSTEER_JUDGE_URL)",
    )
    parser.add_argument("--model", default=os.environ.get("LENSTEER_JUDGE_MODEL", "default"))
    parser.add_argument("--threat-models", nargs="+", default=list(THREAT_MODELS), choices=THREAT_MODELS)
    parser.add_argument("--split", default="validation", choices=AUDIT_SPLITS)
    parser.add_argument("--pass-score", type=float, default=50.0)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    args = parser.parse_args()
    if not args.url:
        print(
            "judge_audit: error: no judge server configured (pass --url or set LENSTEER_JUDGE_URL)",
            file=sys.stderr,
        )
        return 2
    results = []
    for tm in args.threat_models:
        judge = HttpJudge(
            base_url=args.url,
            model=args.model,
            rubric=threats.get(tm).judge_rubric,
            timeout_s=args.timeout,
            name=f"judge:{args.model}",
        )
        rows = load_audit(args.split, tm)
        print(f"{tm}: judging {len(rows)} answers at {judge.url} ...", file=sys.stderr)
        results.append(
            measure_judge(
                judge, rows, name=f"{judge.name} ({tm})", pass_score=args.pass_score, prompt_of=shown_prompt
            )
        )
    print(audit_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
