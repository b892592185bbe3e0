"""Tune the scorers on the audit set's **development** half (never the validation half).

Prints every bundled scorer's agreement with the readers on ``dev`` (the table ``data/README.md`` gives
for ``validation``), the disagreements of one verdict with the rule's reason (``--show refusal``), and,
for the compassion scorer, a grouped cross-validation over its L2 penalty: folds split by prompt, each
fold fitted on the other folds' dev answers plus the written training replies, kappa on the held-out
answers (the unreadable guard on). The chosen penalty is ``lensteer.evaluate.compassion.DEFAULT_L2``;
``--fit`` refits the bundled compassion scorer with it and writes its parameters to
``data/scoring/compassion_fitted.json`` (the scorer lensteer ships; nothing is fitted at run time).

Usage: ``python scripts/tune_scorers.py [--show refusal|compassion|honesty|unreadable] [--cv] [--fit]``
"""

import argparse
import sys

from lensteer.core.bundled import bundled_dir
from lensteer.core.io import write_json
from lensteer.core.stats import cohen_kappa
from lensteer.evaluate.coherence import coherence_verdict
from lensteer.evaluate.compassion import (
    FITTED_FILE,
    fit_bundled_compassion_scorer,
    fitted_params,
    load_compassion_labelled,
    train_compassion_scorer,
)
from lensteer.evaluate.honesty import honesty_verdict
from lensteer.evaluate.refusal import refusal_verdict
from lensteer.threats.audit import audit_markdown, audit_results, load_audit, scorer_predictions

L2_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def _reason(verdict: str, row: object) -> str:
    r = row  # AuditRow
    if verdict == "refusal":
        return refusal_verdict(r.response, prompt=r.prompt).reason  # type: ignore[attr-defined]
    if verdict == "honesty":
        v = honesty_verdict(r.response, r.true_answer, r.false_answer, question=r.prompt)  # type: ignore[attr-defined]
        return f"{v.category}, asserts_other={v.asserts_other}"
    return coherence_verdict(r.response).reason  # type: ignore[attr-defined]


def show(verdict: str) -> None:
    """Print the dev rows where the scorer and the reader disagree."""
    rows = load_audit("dev") if verdict == "unreadable" else load_audit("dev", verdict)
    predicted = scorer_predictions(verdict, rows)
    for r, p in zip(rows, predicted, strict=True):
        label = r.unreadable if verdict == "unreadable" else r.label
        if p != label:
            print(
                f"--- {r.id} [{r.condition}] reader={label} scorer={p} unreadable={r.unreadable} note={r.note!r}"
            )
            print(f"    prompt: {r.prompt[:150]!r}")
            print(f"    answer: {r.response[:400]!r}")
            if verdict != "compassion":
                print(f"    rule:   {_reason(verdict, r)}")


def compassion_cv(n_folds: int = 5) -> None:
    """Grouped (by prompt) cross-validation of the compassion scorer's L2 penalty on the dev half."""
    rows = load_audit("dev", "compassion")
    written = load_compassion_labelled("train")
    prompts = sorted({r.prompt for r in rows})
    fold_of = {p: i % n_folds for i, p in enumerate(prompts)}
    for l2 in L2_GRID:
        labels, predicted = [], []
        for k in range(n_folds):
            train = [r for r in rows if fold_of[r.prompt] != k]
            test = [r for r in rows if fold_of[r.prompt] == k]
            scorer = train_compassion_scorer(
                [r.response for r in train] + [w.response for w in written],
                [bool(r.label) for r in train] + [w.compassionate for w in written],
                l2=l2,
            )
            labels += [bool(r.label) for r in test]
            predicted += scorer.predict([r.response for r in test])
        acc = sum(a == b for a, b in zip(labels, predicted, strict=True)) / len(labels)
        print(f"l2={l2:<6} accuracy {acc:.3f} kappa {cohen_kappa(labels, predicted):.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show", choices=("refusal", "compassion", "honesty", "unreadable"))
    parser.add_argument("--cv", action="store_true", help="cross-validate the compassion scorer's L2 penalty")
    parser.add_argument(
        "--fit", action="store_true", help="refit the compassion scorer and store its parameters"
    )
    args = parser.parse_args()
    if args.fit:
        path = write_json(
            bundled_dir("scoring") / FITTED_FILE, fitted_params(fit_bundled_compassion_scorer())
        )
        print(f"wrote {path}")
    print(audit_markdown(audit_results("dev")))
    if args.show:
        show(args.show)
    if args.cv:
        compassion_cv()
    return 0


if __name__ == "__main__":
    sys.exit(main())
