"""Write the scorer audit table of ``data/README.md`` from the audit set's fresh **validation v3** set.

The block between ``<!-- audit:start -->`` and ``<!-- audit:end -->`` is rewritten in place with
``lensteer.threats.audit.audit_markdown(audit_results("validation_v3"))``: every bundled scorer (and the
rule each fitted verdict replaced) against the readers' labels (accuracy and Cohen's kappa with intervals, per-class recall and precision).
``tests/unit/evaluate/test_scorer_audit.py`` recomputes the same table and fails when the README differs.

Validation v3 is read here and by that test only: choose and fit scorers on audit set v2
(``scripts/fit_scorers.py``, ``scripts/tune_scorers.py``), then run this once.

With ``--reading`` it also rewrites the ``<!-- audit-reading:start -->`` block: the refusal verdict that
reads answers with the embedded model (``lensteer.evaluate.reading``), which needs that model, so
``tests/integration/test_reading_audit.py`` checks it. With ``--asked``, the ``<!-- audit-asked:start -->``
block: the asked reading verdicts of refusal and honesty (the embedded model reads each answer and is asked
about it).

``--set v4`` measures on validation v4 (``data/scoring/audit_v4/``) instead, into the blocks of the same names
ending ``-v4`` (``<!-- audit-v4:start -->`` ...): the one-time evaluation of the verdicts chosen on development
data, run once by the lead (``python scripts/audit_table.py --set v4 --reading --asked``).

Usage: ``python scripts/audit_table.py [--readme data/README.md] [--set v3|v4] [--check] [--reading] [--asked]``
(``--check`` exits 1 when the README is out of date instead of rewriting it).
"""

import argparse
import re
import sys
from pathlib import Path

from lensteer.core.io import write_text
from lensteer.core.models import load_model
from lensteer.threats.audit import asked_results, audit_markdown, audit_results, reading_results

ROOT = Path(__file__).resolve().parents[1]
SETS = {
    "v3": ("validation_v3", ""),
    "v4": ("validation_v4", "-v4"),
}  # --set: the audit split, the blocks' suffix


def block(name: str) -> re.Pattern[str]:
    """The README block ``<!-- {name}:start -->`` ... ``<!-- {name}:end -->``."""
    return re.compile(rf"(<!-- {name}:start -->\n)(.*?)(<!-- {name}:end -->)", re.DOTALL)


def rewrite(readme: str, table: str, name: str = "audit") -> str:
    """``readme`` with its ``name`` block replaced by ``table``."""
    pattern = block(name)
    if pattern.search(readme) is None:
        raise SystemExit(f"the README has no <!-- {name}:start --> ... <!-- {name}:end --> block")
    return pattern.sub(lambda m: m.group(1) + table + m.group(3), readme, count=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=ROOT / "data" / "README.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is out of date")
    parser.add_argument("--set", choices=sorted(SETS), default="v3", help="the validation set measured on")
    parser.add_argument(
        "--asked",
        action="store_true",
        help="also the asked reading verdicts' block (loads the embedded model)",
    )
    parser.add_argument(
        "--reading",
        action="store_true",
        help="also the refusal reading verdict's block (loads the embedded model)",
    )
    args = parser.parse_args()
    split, suffix = SETS[args.set]
    old = args.readme.read_text(encoding="utf-8")
    new = rewrite(old, audit_markdown(audit_results(split)), f"audit{suffix}")
    if args.reading or args.asked:
        model = load_model()
        if args.reading:
            new = rewrite(new, audit_markdown(reading_results(model, split)), f"audit-reading{suffix}")
        if args.asked:
            new = rewrite(new, audit_markdown(asked_results(model, split)), f"audit-asked{suffix}")
    if args.check:
        print("up to date" if new == old else "out of date: run python scripts/audit_table.py")
        return 0 if new == old else 1
    write_text(args.readme, new)
    print(f"wrote the audit table into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
