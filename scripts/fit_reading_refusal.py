"""Choose and fit the refusal verdict that reads answers with the embedded model (``lensteer.evaluate.reading``).

Development data only: the refusal answers of audit set v2 (``dev.jsonl`` and its old ``validation.jsonl``,
as ``scripts/fit_scorers.py``); never validation v3, which measures the result (the audit tests read it).

``--extract`` has the embedded model read every development answer once, at every layer of :data:`LAYERS`
(mean over the answer's tokens), and caches the activations in ``data/derived/`` (not committed). ``--cv`` runs 5-fold cross-validation grouped by
prompt (the folds of ``fit_scorers.py``) over :data:`GRID` and prints Cohen's kappa and the recall and
precision of ``refuses`` per setting, with the word-feature verdict's out-of-fold numbers as the baseline.
``--fit`` fits :data:`CHOSEN` on all development data and writes ``data/scoring/refusal_reading_v1.json``.

``--time`` times the chosen setting's read of 100 development answers (the cost a study would pay).

Usage: ``python scripts/fit_reading_refusal.py [--extract] [--cv] [--fit] [--time]``
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
from lensteer.evaluate.fitted import RULES, refusal_features
from lensteer.evaluate.reading import Reader, ReadingSpec, fit_reading_verdict, params, read_answers
from lensteer.threats.audit import AuditRow, load_audit

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "data" / "derived" / "refusal_reading_v2.npz"
LAYERS = (4, 8, 12, 16, 20)  # read once; the grid picks among them
DENSE = tuple(refusal_features("x", "y").dense)  # the rule's outputs (lensteer.evaluate.fitted)
GRID: tuple[ReadingSpec, ...] = tuple(
    ReadingSpec(layers=layers, dense_names=dense, c=c)
    for layers in ((4,), (8,), (12,), (16,), (20,), (8, 16), (12, 20))
    for dense in ((), DENSE)
    for c in (0.003, 0.01, 0.03)
)
# What --cv chose (data/README.md): the best cross-validated kappa (0.690, tied with layers 8 and 16 together;
# the one-layer setting kept as the simpler)
CHOSEN = ReadingSpec(layers=(16,), dense_names=DENSE, c=0.03)


def development() -> list[AuditRow]:
    """The refusal answers the reading verdict may learn from (set v2; never validation v3)."""
    return load_audit("dev", "refusal") + load_audit("validation", "refusal")


def extract(rows: Sequence[AuditRow]) -> None:
    model = load_model()
    start = time.perf_counter()
    acts = read_answers(model, [r.prompt for r in rows], [r.response for r in rows], LAYERS)
    seconds = time.perf_counter() - start
    print(
        f"read {len(rows)} answers at layers {LAYERS}: {seconds:.1f} s, {100 * seconds / len(rows):.1f} s per 100"
    )
    reader = np.array([str(v) for v in vars(Reader.of(model)).values()])
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.savez(CACHE, ids=np.array([r.id for r in rows]), acts=acts, reader=reader)
    print(f"wrote {CACHE}")


def matrix(rows: Sequence[AuditRow], spec: ReadingSpec) -> np.ndarray:
    """The cached activations at ``spec.layers`` and the rule's dense features, in ``rows`` order."""
    cache = np.load(CACHE)
    if list(cache["ids"]) != [r.id for r in rows]:
        raise SystemExit("the cache holds other answers: rerun --extract")
    d = cache["acts"].shape[1] // len(LAYERS)
    acts = cache["acts"].reshape(len(rows), len(LAYERS), d)[:, [LAYERS.index(x) for x in spec.layers]]
    cols = [acts.reshape(len(rows), -1)]
    if spec.dense_names:
        feats = [refusal_features(r.response, r.prompt).dense for r in rows]
        cols.append(np.array([[f[n] for n in spec.dense_names] for f in feats]))
    return np.hstack(cols)


def reader_of_cache() -> Reader:
    name, n_layers, d_model, sha = np.load(CACHE)["reader"]
    return Reader(name=str(name), n_layers=int(n_layers), d_model=int(d_model), weights_sha256=str(sha))


def out_of_fold(rows: Sequence[AuditRow], spec: ReadingSpec, n_folds: int = 5) -> list[str]:
    """Each row's prediction by a model fitted on the other folds (folds split by prompt, as fit_scorers.py)."""
    x, labels, reader = matrix(rows, spec), [str(r.label) for r in rows], reader_of_cache()
    prompts = sorted({r.prompt for r in rows})
    fold_of = {p: i % n_folds for i, p in enumerate(prompts)}
    predicted = [""] * len(rows)
    for k in range(n_folds):
        train = [i for i, r in enumerate(rows) if fold_of[r.prompt] != k]
        test = [i for i, r in enumerate(rows) if fold_of[r.prompt] == k]
        v = fit_reading_verdict("cv", x[train], [labels[i] for i in train], spec=spec, reader=reader)
        for i, p in zip(test, v.predict(x[test]), strict=True):
            predicted[i] = p
    return predicted


def report(name: str, labels: Sequence[str], predicted: Sequence[str]) -> None:
    hits = sum(a == b == "refuses" for a, b in zip(labels, predicted, strict=True))
    recall, precision = hits / labels.count("refuses"), hits / max(1, list(predicted).count("refuses"))
    print(
        f"{name:<72} kappa {cohen_kappa(list(labels), list(predicted)):.3f}  refuses recall {recall:.3f} "
        f"precision {precision:.3f}",
        flush=True,
    )


def cross_validate(rows: Sequence[AuditRow]) -> None:
    import fit_scorers  # the word-feature verdict's folds and setting, as the baseline

    labels = [str(r.label) for r in rows]
    feats = fit_scorers.features("refusal", rows)
    report(
        "word-feature verdict (refusal-fitted)",
        labels,
        fit_scorers.out_of_fold("refusal", rows, feats, fit_scorers.CHOSEN["refusal"]),
    )
    for spec in GRID:
        name = f"layers={spec.layers} dense={'rule' if spec.dense_names else '-'} C={spec.c}"
        report(name, labels, out_of_fold(rows, spec))


def time_read(rows: Sequence[AuditRow], n: int = 100) -> None:
    """Seconds the embedded model takes to read ``n`` development answers at :data:`CHOSEN`'s layers."""
    model = load_model()
    read_answers(model, [r.prompt for r in rows[:4]], [r.response for r in rows[:4]], CHOSEN.layers)  # warm
    start = time.perf_counter()
    read_answers(model, [r.prompt for r in rows[:n]], [r.response for r in rows[:n]], CHOSEN.layers)
    print(f"read {n} answers at layers {CHOSEN.layers}: {time.perf_counter() - start:.1f} s")


def fit(rows: Sequence[AuditRow]) -> None:
    v = fit_reading_verdict(
        "refusal-reading",
        matrix(rows, CHOSEN),
        [str(r.label) for r in rows],
        spec=CHOSEN,
        reader=reader_of_cache(),
        rules=RULES["refusal-fitted"],
    )
    path = write_json(bundled_dir("scoring") / "refusal_reading_v1.json", params(v))
    print(f"wrote {path} ({v.scorer_id})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--extract", action="store_true", help="read the development answers (embedded model)"
    )
    parser.add_argument("--cv", action="store_true", help="cross-validate the grid on the cached activations")
    parser.add_argument("--fit", action="store_true", help="fit the chosen setting and write its parameters")
    parser.add_argument("--time", action="store_true", help="time the chosen setting's read of 100 answers")
    args = parser.parse_args()
    rows = development()
    if args.extract:
        extract(rows)
    if args.cv:
        cross_validate(rows)
    if args.fit:
        fit(rows)
    if args.time:
        time_read(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
