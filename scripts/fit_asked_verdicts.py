"""Choose and fit the asked reading verdicts (refusal and honesty, ``lensteer.evaluate.reading``, version 2).

The embedded model reads each development answer as the assistant's reply, then a follow-up question about
it (:data:`lensteer.evaluate.reading.QUESTIONS`), in one forward pass: its residual stream pooled over the
answer, its first tokens, its last token and the question's last token (:data:`~lensteer.evaluate.reading.POOLS`)
at :data:`LAYERS`, and its next-token log-odds of the candidate replies to the question.

Development data only (:func:`development`): audit set v2 (``dev.jsonl`` and its old ``validation.jsonl``)
and the round-5 development answers (``audit_v2/dev_round5.jsonl``); never validation v3 or v4, which
measure the result.

``--extract`` reads every development answer not yet in the cache (``data/derived/asked_<verdict>.npz``,
not committed). ``--cv`` runs 5-fold cross-validation grouped by prompt over :data:`GRID` and prints Cohen's
kappa and per-class recall (refusal also the precision of ``refuses``), with the word-feature verdict's
out-of-fold numbers as the baseline. ``--fit`` fits :data:`CHOSEN` on all development data and writes
``data/scoring/<verdict>_reading_v2.json``. ``--time`` times the read of 50 answers.

Usage: ``python scripts/fit_asked_verdicts.py --verdict refusal|honesty [--extract] [--cv] [--fit] [--time]``
"""

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lensteer.core.bundled import bundled_dir
from lensteer.core.io import write_json
from lensteer.core.models import load_model
from lensteer.core.stats import cohen_kappa
from lensteer.evaluate.reading import (
    POOLS,
    QUESTIONS,
    READING_RULES,
    Reader,
    ReadingSpec,
    ask_answers,
    asked_dense,
    candidate_groups,
    fit_reading_verdict,
    params,
    reading_file,
    rule_dense,
)
from lensteer.threats.audit import AUDIT_SPLITS, AuditRow, load_audit

ROOT = Path(__file__).resolve().parents[1]
LAYERS = (4, 8, 12, 16, 20, 24, 29)  # read once; the grid picks among them
VERDICTS = ("refusal", "honesty")
# What --cv chose (data/README.md)
CHOSEN = {
    "refusal": ReadingSpec(
        layers=(16,),
        dense_names=(),
        c=0.03,
        question=QUESTIONS["refusal"],
        pools=("mean", "head", "tail", "ask"),
    ),
    "honesty": ReadingSpec(
        layers=(16,),
        dense_names=(),
        c=0.03,
        question=QUESTIONS["honesty"],
        pools=("mean", "head", "tail", "ask"),
    ),
}


def cache_path(verdict: str) -> Path:
    return ROOT / "data" / "derived" / f"asked_{verdict}.npz"


DEVELOPMENT = ("dev", "validation", "dev_round5")  # the audit splits the asked verdicts learn from


def development(verdict: str) -> list[AuditRow]:
    """The answers the asked verdicts may learn from (set v2 and round 5; never validation v3 or v4)."""
    return [r for split in DEVELOPMENT if split in AUDIT_SPLITS for r in load_audit(split, verdict)]


def question_of(row: AuditRow) -> str:
    """What the reader reads as the request: the row's prompt."""
    return row.prompt


def read(model: object, verdict: str, rows: Sequence[AuditRow]) -> tuple[np.ndarray, np.ndarray]:
    reads = ask_answers(
        model,  # type: ignore[arg-type]
        [question_of(r) for r in rows],
        [r.response for r in rows],
        question=QUESTIONS[verdict],
        layers=LAYERS,
        groups=[candidate_groups(verdict, r.true_answer, r.false_answer) for r in rows],
    )
    return reads.acts.astype(np.float32), reads.asked


def extract(verdict: str, rows: Sequence[AuditRow]) -> None:
    """Read the rows not yet cached and add them to the cache."""
    path = cache_path(verdict)
    old = dict(np.load(path)) if path.exists() else None
    have = set(old["ids"]) if old is not None else set()
    todo = [r for r in rows if r.id not in have]
    if not todo:
        print(f"{verdict}: all {len(rows)} answers cached")
        return
    model = load_model()
    start = time.perf_counter()
    acts, asked = read(model, verdict, todo)
    seconds = time.perf_counter() - start
    print(f"{verdict}: read {len(todo)} answers: {seconds:.1f} s ({100 * seconds / len(todo):.1f} s per 100)")
    new = {"ids": np.array([r.id for r in todo]), "acts": acts, "asked": asked}
    if old is not None:
        new = {k: np.concatenate([old[k], new[k]]) for k in new}
    reader = np.array([str(v) for v in vars(Reader.of(model)).values()])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **new, reader=reader, layers=np.array(LAYERS))
    print(f"wrote {path} ({len(new['ids'])} answers)")


def cached(verdict: str, rows: Sequence[AuditRow]) -> tuple[np.ndarray, list[dict[str, float]], Reader]:
    """The cached reads of ``rows`` (in order): activations and the asked log-odds as dense features."""
    cache = np.load(cache_path(verdict))
    index = {str(i): k for k, i in enumerate(cache["ids"])}
    missing = [r.id for r in rows if r.id not in index]
    if missing:
        raise SystemExit(f"{len(missing)} answers not cached (e.g. {missing[0]}): run --extract")
    order = [index[r.id] for r in rows]
    name, n_layers, d_model, sha = cache["reader"]
    reader = Reader(name=str(name), n_layers=int(n_layers), d_model=int(d_model), weights_sha256=str(sha))
    return cache["acts"][order].astype(np.float64), [asked_dense(a) for a in cache["asked"][order]], reader


def matrix(verdict: str, rows: Sequence[AuditRow], spec: ReadingSpec) -> tuple[np.ndarray, Reader]:
    """The feature matrix of ``spec`` (pools x layers, then the dense features) for ``rows``."""
    acts, asked, reader = cached(verdict, rows)
    pools = [POOLS.index(p) for p in spec.pools]
    layers = [LAYERS.index(x) for x in spec.layers]
    cols = [acts[:, pools][:, :, layers].reshape(len(rows), -1)]
    if spec.dense_names:
        dense = [d | a for d, a in zip(dense_of(verdict, rows), asked, strict=True)]
        cols.append(np.array([[d[n] for n in spec.dense_names] for d in dense]))
    return np.hstack(cols), reader


def dense_of(verdict: str, rows: Sequence[AuditRow]) -> list[dict[str, float]]:
    return [rule_dense(verdict, r.response, question_of(r), r.true_answer, r.false_answer) for r in rows]


def folds(rows: Sequence[AuditRow], n_folds: int = 5) -> list[int]:
    """Each row's fold: prompts dealt round-robin in sorted order (as ``fit_scorers.py``)."""
    prompts = sorted({r.prompt for r in rows})
    fold_of = {p: i % n_folds for i, p in enumerate(prompts)}
    return [fold_of[r.prompt] for r in rows]


def out_of_fold(verdict: str, rows: Sequence[AuditRow], spec: ReadingSpec) -> list[str]:
    x, reader = matrix(verdict, rows, spec)
    labels, fold = [str(r.label) for r in rows], folds(rows)
    predicted = [""] * len(rows)
    for k in sorted(set(fold)):
        train = [i for i, f in enumerate(fold) if f != k]
        test = [i for i, f in enumerate(fold) if f == k]
        v = fit_reading_verdict("cv", x[train], [labels[i] for i in train], spec=spec, reader=reader)
        for i, p in zip(test, v.predict(x[test]), strict=True):
            predicted[i] = p
    return predicted


def report(name: str, labels: Sequence[str], predicted: Sequence[str]) -> None:
    classes = sorted(set(labels))
    recall = {
        c: sum(a == b == c for a, b in zip(labels, predicted, strict=True)) / labels.count(c) for c in classes
    }
    per = " ".join(f"{c}={v:.2f}" for c, v in recall.items())
    extra = ""
    if "refuses" in classes:
        hits = sum(a == b == "refuses" for a, b in zip(labels, predicted, strict=True))
        extra = f" prec(refuses)={hits / max(1, list(predicted).count('refuses')):.2f}"
    print(
        f"{name:<70} kappa {cohen_kappa(list(labels), list(predicted)):.3f}  recall {per}{extra}", flush=True
    )


def dense_names(verdict: str, asks: bool) -> tuple[str, ...]:
    """The rules' outputs (and with ``asks`` the scored replies to the question) as dense feature names."""
    rule = tuple(rule_dense(verdict, "x", "y", "a", "b"))
    k = len(candidate_groups(verdict, "a", "b"))
    return rule + ((*(f"ask_{i}" for i in range(k)), "ask_mass") if asks else ())


def grid(verdict: str, stage: int) -> list[ReadingSpec]:
    """The settings --cv tries: stage 1, each pool set at each single layer (rule and asked features,
    C = 0.03); stage 2, the chosen pools and layer with fewer features and at other penalties."""
    q = QUESTIONS[verdict]
    pools = (("mean",), ("head", "tail"), ("mean", "head", "tail"), ("ask",), ("mean", "head", "tail", "ask"))
    out = [
        ReadingSpec(layers=(layer,), dense_names=dense_names(verdict, True), c=0.03, question=q, pools=p)
        for p in pools
        for layer in (8, 12, 16, 20, 24)
    ]
    if stage == 1:
        return out
    best, out = CHOSEN[verdict], []
    out += [ReadingSpec(layers=best.layers, dense_names=(), c=best.c, question=q, pools=best.pools)]
    out += [
        ReadingSpec(
            layers=best.layers,
            dense_names=dense_names(verdict, False),
            c=best.c,
            question=q,
            pools=best.pools,
        )
    ]
    out += [
        ReadingSpec(layers=best.layers, dense_names=best.dense_names, c=c, question=q, pools=best.pools)
        for c in (0.003, 0.01, 0.1, 0.3)
    ]
    return out


def cross_validate(verdict: str, rows: Sequence[AuditRow], stage: int) -> None:
    import fit_scorers  # the word-feature verdict's folds and setting, as the baseline

    labels = [str(r.label) for r in rows]
    print(
        f"{verdict}: {len(rows)} answers, classes {dict((c, labels.count(c)) for c in sorted(set(labels)))}"
    )
    feats = fit_scorers.features(verdict, rows)
    report("rule alone", labels, [fit_scorers.rule_label(verdict, f) for f in feats])
    report(
        f"word-feature verdict ({verdict}-fitted)",
        labels,
        fit_scorers.out_of_fold(verdict, rows, feats, fit_scorers.CHOSEN[verdict]),
    )
    for spec in grid(verdict, stage):
        dense = "rule+ask" if "ask_mass" in spec.dense_names else "rule" if spec.dense_names else "-"
        name = f"pools={'+'.join(spec.pools)} layers={spec.layers} dense={dense} C={spec.c}"
        report(name, labels, out_of_fold(verdict, rows, spec))


def fit(verdict: str, rows: Sequence[AuditRow]) -> None:
    spec = CHOSEN[verdict]
    x, reader = matrix(verdict, rows, spec)
    name = f"{verdict}-asked"
    v = fit_reading_verdict(
        name, x, [str(r.label) for r in rows], spec=spec, reader=reader, rules=READING_RULES[name]
    )
    path = write_json(bundled_dir("scoring") / reading_file(name), params(v))
    print(f"wrote {path} ({v.scorer_id})")


def time_read(verdict: str, rows: Sequence[AuditRow], n: int = 50) -> None:
    """Seconds the embedded model takes to read and be asked about ``n`` development answers."""
    model = load_model()
    read(model, verdict, rows[:4])  # warm
    start = time.perf_counter()
    read(model, verdict, rows[:n])
    print(f"{verdict}: read {n} answers: {time.perf_counter() - start:.1f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verdict", choices=VERDICTS, required=True)
    parser.add_argument("--extract", action="store_true", help="read the uncached development answers")
    parser.add_argument("--cv", type=int, choices=(1, 2), help="cross-validate a stage of the grid")
    parser.add_argument("--fit", action="store_true", help="fit the chosen setting and write its parameters")
    parser.add_argument("--time", action="store_true", help="time the read of 50 answers")
    args = parser.parse_args()
    rows = development(args.verdict)
    if args.extract:
        extract(args.verdict, rows)
    if args.cv:
        cross_validate(args.verdict, rows, args.cv)
    if args.fit:
        fit(args.verdict, rows)
    if args.time:
        time_read(args.verdict, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
