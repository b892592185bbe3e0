"""Choose and fit the fitted verdicts (``lensteer.evaluate.fitted``) on the audit set's development data.

Development data: both halves of audit set v2 (``dev.jsonl`` and the old ``validation.jsonl``, which was
read once for the table of 2026-12-07 and is now used for fitting); never ``validation_v3.jsonl``, the
fresh validation set that measures the result. ``--cv`` runs a 5-fold cross-validation grouped by prompt
(no prompt in two folds) over a grid of text features and penalties and prints, per setting, Cohen's kappa
and per-class recall on the held-out folds, with the rule alone as the baseline. ``--fit`` fits the
chosen setting (:data:`CHOSEN`) on all development data and writes ``data/scoring/<verdict>_fitted_v1.json``.

``--oof`` prints the chosen settings' out-of-fold agreement with the readers in the audit table's form.

Usage: ``python scripts/fit_scorers.py [--verdict refusal|honesty|compassion] [--cv] [--fit] [--oof]``
"""

import argparse
import sys
from collections.abc import Callable, Sequence

from lensteer.core.bundled import bundled_dir
from lensteer.core.io import write_json
from lensteer.core.stats import cohen_kappa
from lensteer.evaluate.fitted import (
    RULES,
    Features,
    FittedVerdict,
    TextSpec,
    compassion_features,
    fit_verdict,
    fitted_file,
    honesty_features,
    params,
    refusal_features,
)
from lensteer.threats.audit import AUDIT_CLASSES, CLASS_NAMES, AuditRow, audit_markdown, load_audit, measure

VERDICTS = ("refusal", "honesty", "compassion")
# Settings tried by --cv: (text features, inverse L2 penalty)
GRID: tuple[tuple[TextSpec, float], ...] = tuple(
    (spec, c)
    for spec in (
        TextSpec(word=None, char=None),
        TextSpec(word=(1, 2), char=None),
        TextSpec(word=None, char=(2, 5)),
        TextSpec(word=(1, 2), char=(2, 5)),
    )
    for c in (0.3, 1.0, 3.0)
)
# What --cv chose (see data/README.md): the setting with the best cross-validated kappa
CHOSEN: dict[str, tuple[TextSpec, float]] = {
    "refusal": (TextSpec(word=(1, 2), char=(2, 5)), 1.0),
    "honesty": (TextSpec(word=(1, 2), char=(2, 5)), 1.0),
    "compassion": (TextSpec(word=(1, 2), char=(2, 5)), 1.0),
}


def features(verdict: str, rows: Sequence[AuditRow]) -> list[Features]:
    """Each row's :class:`Features` for ``verdict``."""
    if verdict == "refusal":
        return [refusal_features(r.response, r.prompt) for r in rows]
    if verdict == "honesty":
        return [honesty_features(r.response, str(r.true_answer), str(r.false_answer), r.prompt) for r in rows]
    return [compassion_features(r.response) for r in rows]


def label_of(verdict: str) -> Callable[[AuditRow], str]:
    return (lambda r: "1" if r.label else "0") if verdict == "compassion" else (lambda r: str(r.label))


def development(verdict: str) -> list[AuditRow]:
    """Every labelled answer of ``verdict`` the fitted scorers may learn from (never validation_v3)."""
    return load_audit("dev", verdict) + load_audit("validation", verdict)


def rule_label(verdict: str, f: Features) -> str:
    if verdict == "compassion":  # no rule: the lexicon's net cue count, as a baseline
        d = f.dense
        net = d["lex_validation"] + d["lex_empathy"] + d["lex_support"] - d["lex_dismissive"]
        return "1" if net > 0 and not d["unreadable"] else "0"
    return next(k.removeprefix("rule_") for k, v in f.dense.items() if k.startswith("rule_") and v)


def out_of_fold(
    verdict: str,
    rows: Sequence[AuditRow],
    feats: Sequence[Features],
    setting: tuple[TextSpec, float],
    n_folds: int = 5,
) -> list[str]:
    """Each row's prediction by a model fitted on the other folds (folds split by prompt)."""
    labels = [label_of(verdict)(r) for r in rows]
    prompts = sorted({r.prompt for r in rows})
    fold_of = {p: i % n_folds for i, p in enumerate(prompts)}
    predicted = [""] * len(rows)
    for k in range(n_folds):
        train = [i for i, r in enumerate(rows) if fold_of[r.prompt] != k]
        test = [i for i, r in enumerate(rows) if fold_of[r.prompt] == k]
        model = fit_verdict(
            verdict,
            [feats[i] for i in train],
            [labels[i] for i in train],
            spec=setting[0],
            c=setting[1],
            rules=RULES[f"{verdict}-fitted"],
        )
        for i, p in zip(test, model.predict([feats[i] for i in test]), strict=True):
            guarded = verdict == "compassion" and feats[i].dense["unreadable"]  # fitted_compassion's guard
            predicted[i] = "0" if guarded else p
    return predicted


def cross_validate(verdict: str) -> None:
    """Print the grid's cross-validated kappa and per-class recall, and the rule's, on the development data."""
    rows = development(verdict)
    feats = features(verdict, rows)
    labels = [label_of(verdict)(r) for r in rows]
    classes = sorted(set(labels))

    def report(name: str, predicted: list[str]) -> None:
        recall = {
            c: sum(a == b == c for a, b in zip(labels, predicted, strict=True)) / labels.count(c)
            for c in classes
        }
        per = " ".join(f"{c}={v:.2f}" for c, v in recall.items())
        print(f"{name:<60} kappa {cohen_kappa(labels, predicted):.3f}  recall {per}", flush=True)

    print(f"{verdict}: {len(rows)} answers, classes {dict((c, labels.count(c)) for c in classes)}")
    report("rule alone", [rule_label(verdict, f) for f in feats])
    for spec, c in GRID:
        report(f"word={spec.word} char={spec.char} C={c}", out_of_fold(verdict, rows, feats, (spec, c)))


def chosen_table(verdicts: Sequence[str]) -> str:
    """The chosen settings' out-of-fold agreement with the readers on the development data (audit table form)."""
    results = []
    for verdict in verdicts:
        rows = development(verdict)
        predicted = out_of_fold(verdict, rows, features(verdict, rows), CHOSEN[verdict])
        labels = [label_of(verdict)(r) for r in rows]
        classes = AUDIT_CLASSES[verdict]
        if verdict == "compassion":  # labels "1" / "0" -> the audit's True / False
            labels, predicted = [v == "1" for v in labels], [v == "1" for v in predicted]
        results.append(
            measure(
                f"{verdict} (out of fold)", labels, predicted, classes, class_names=CLASS_NAMES.get(verdict)
            )
        )
    return audit_markdown(results)


def fit_chosen(verdict: str) -> FittedVerdict:
    """The chosen setting of ``verdict`` fitted on all development data (what the bundled file stores)."""
    rows = development(verdict)
    spec, c = CHOSEN[verdict]
    return fit_verdict(
        f"{verdict}-fitted",
        features(verdict, rows),
        [label_of(verdict)(r) for r in rows],
        spec=spec,
        c=c,
        rules=RULES[f"{verdict}-fitted"],
    )


def fit(verdict: str) -> None:
    model = fit_chosen(verdict)
    path = write_json(bundled_dir("scoring") / fitted_file(f"{verdict}-fitted"), params(model))
    print(f"wrote {path} ({model.scorer_id})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verdict", choices=VERDICTS, action="append")
    parser.add_argument("--cv", action="store_true", help="cross-validate the grid on the development data")
    parser.add_argument(
        "--fit", action="store_true", help="fit the chosen settings and write their parameters"
    )
    parser.add_argument("--oof", action="store_true", help="the chosen settings' out-of-fold table on dev")
    args = parser.parse_args()
    for verdict in args.verdict or VERDICTS:
        if args.cv:
            cross_validate(verdict)
        if args.fit:
            fit(verdict)
    if args.oof:
        print(chosen_table(args.verdict or VERDICTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
