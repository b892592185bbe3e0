"""The scorer audit: lensteer's scorers (or any judge) against answers labelled by careful readers.

The audit set (``data/scoring/audit_v2/``, guide and provenance in ``data/README.md``) holds real answers
of the embedded model, each labelled by reading; it is split once, by id, into a **development** half,
which scorer authors read and tune on, and a **validation** half, which only the audit test
(``tests/unit/evaluate/test_scorer_audit.py``) and the table generator (``scripts/audit_table.py``) read.

:func:`measure` compares predictions with labels: accuracy (Wilson interval), Cohen's kappa over all
classes (bootstrap interval) and, per class, recall and precision (Wilson intervals).
:func:`scorer_predictions` runs the bundled scorers; :func:`judge_predictions` runs any judge callable.
"""

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from lensteer.core.bridge import Bridge
from lensteer.core.bundled import bundled_dir, read_jsonl
from lensteer.core.stats import Agreement, agreement, wilson_interval
from lensteer.errors import ConfigError, DataError
from lensteer.evaluate.coherence import COHERENCE_SCORER, is_unreadable
from lensteer.evaluate.compassion import compassion_scorer
from lensteer.evaluate.fitted import (
    fitted_compassion,
    fitted_honesty,
    fitted_refusal,
    fitted_verdict,
    slot_honesty,
)
from lensteer.evaluate.honesty import HONESTY_LABELS, honesty_verdict
from lensteer.evaluate.judges import CallableJudge, HttpJudge
from lensteer.evaluate.provenance import ScorerId, rules_digest
from lensteer.evaluate.reading import asked_refusal, reading_refusal
from lensteer.evaluate.refusal import REFUSAL_LABELS, refusal_verdict

# dev and validation: audit set v2 (data/scoring/audit_v2/), both used to fit and tune the scorers since the
# 2026-12-07 revision read validation once; validation_v3: the fresh validation set (data/scoring/audit_v3/),
# labelled before any scorer ran on it, that the table of data/README.md is measured on; dev_round5: more
# development answers (refusal and honesty, 2026-12-07) to prompts no other set asks; validation_v4: the next
# fresh validation set (refusal and honesty), read by no scorer author, for the lead's one-time evaluation
AUDIT_SPLITS = ("dev", "validation", "validation_v3", "dev_round5", "validation_v4")
_SPLIT_FILES = {
    "dev": ("audit_v2", "dev.jsonl"),
    "validation": ("audit_v2", "validation.jsonl"),
    "validation_v3": ("audit_v3", "validation.jsonl"),
    "dev_round5": ("audit_v2", "dev_round5.jsonl"),
    "validation_v4": ("audit_v4", "validation.jsonl"),
}
# the classes of each audited verdict, positive (aligned) class first
AUDIT_CLASSES: dict[str, tuple[Hashable, ...]] = {
    "refusal": REFUSAL_LABELS,
    "compassion": (True, False),
    "honesty": HONESTY_LABELS,
    "unreadable": (True, False),
}
# how a class is named in the table, where its value is not a word
CLASS_NAMES: dict[str, dict[Hashable, str]] = {
    "compassion": {True: "compassionate", False: "not compassionate"},
    "unreadable": {True: "unreadable", False: "readable"},
}
_FIELDS = ("id", "threat_model", "condition", "prompt", "response", "label", "unreadable")


@dataclass(frozen=True, kw_only=True)
class AuditRow:
    """One labelled answer: what was asked, what the model answered, and what the reader decided.

    ``label`` is ``refuses`` / ``complies`` / ``neither`` (refusal), ``True`` / ``False`` (compassion) or
    ``true`` / ``false`` / ``no_answer`` (honesty); ``unreadable`` is the reader's coherence label.
    """

    id: str
    threat_model: str
    condition: str
    prompt: str
    response: str
    label: Hashable
    unreadable: bool
    prefill: str | None = None
    true_answer: str | None = None
    false_answer: str | None = None
    note: str = ""


def _row(raw: dict[str, Any], where: str) -> AuditRow:
    missing = [f for f in _FIELDS if f not in raw]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}")
    tm = raw["threat_model"]
    if tm not in ("refusal", "compassion", "honesty"):
        raise DataError(f"{where}: threat_model {tm!r} is not one of refusal, compassion, honesty")
    label = bool(raw["label"]) if tm == "compassion" and raw["label"] in (0, 1) else raw["label"]
    if label not in AUDIT_CLASSES[tm]:
        raise DataError(f"{where}: label {raw['label']!r} is not one of {list(AUDIT_CLASSES[tm])} for {tm}")
    if tm == "honesty" and not (raw.get("true_answer") and raw.get("false_answer")):
        raise DataError(f"{where}: an honesty row needs true_answer and false_answer")
    return AuditRow(
        id=str(raw["id"]),
        threat_model=tm,
        condition=str(raw["condition"]),
        prompt=raw["prompt"],
        response=raw["response"],
        label=label,
        unreadable=bool(raw["unreadable"]),
        prefill=raw.get("prefill") or None,
        true_answer=raw.get("true_answer") or None,
        false_answer=raw.get("false_answer") or None,
        note=raw.get("note") or "",
    )


def load_audit(split: str, threat_model: str | None = None) -> list[AuditRow]:
    """The labelled answers of one part of the audit set, optionally of one threat model: ``dev`` and
    ``validation`` (set v2; both fit and tune the scorers now), ``dev_round5`` (development answers to
    fresh prompts), ``validation_v3`` (the fresh validation set that measures them; only the audit test and
    ``scripts/audit_table.py`` read it) or ``validation_v4`` (the next one, for a one-time evaluation)."""
    if split not in AUDIT_SPLITS:
        raise ConfigError(f"audit split must be one of {list(AUDIT_SPLITS)}, got {split!r}")
    folder, name = _SPLIT_FILES[split]
    path = bundled_dir("scoring") / folder / name
    rows = [_row(raw, f"{path.name} line {i}") for i, raw in enumerate(read_jsonl(path), start=1)]
    return [r for r in rows if threat_model is None or r.threat_model == threat_model]


@dataclass(frozen=True, kw_only=True)
class ClassAgreement:
    """One class of a verdict: how many answers the reader and the scorer put in it, recall (of the
    reader's, the share the scorer found) and precision (of the scorer's, the share the reader agrees
    with), each with a Wilson interval (``None`` where nothing was labelled or scored that class)."""

    label: Hashable
    name: str
    labelled: int
    scored: int
    recall: float | None
    recall_ci: tuple[float, float] | None
    precision: float | None
    precision_ci: tuple[float, float] | None


@dataclass(frozen=True, kw_only=True)
class AuditResult:
    """A scorer against the readers on one set of answers."""

    scorer: str
    agreement: Agreement
    classes: tuple[ClassAgreement, ...]

    def of(self, label: Hashable) -> ClassAgreement:
        """The per-class numbers of ``label``."""
        return next(c for c in self.classes if c.label == label)


def _share(k: int, n: int) -> tuple[float | None, tuple[float, float] | None]:
    return (None, None) if n == 0 else (k / n, wilson_interval(k, n))


def measure(
    scorer: str,
    labels: Sequence[Hashable],
    predictions: Sequence[Hashable],
    classes: Sequence[Hashable],
    *,
    class_names: dict[Hashable, str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> AuditResult:
    """Agreement of ``predictions`` with ``labels``: overall (accuracy, kappa) and per class of ``classes``
    (named in the table by ``class_names``, else by their value)."""
    if len(labels) != len(predictions) or not labels:
        raise DataError(f"need as many predictions as labels (> 0), got {len(predictions)} and {len(labels)}")
    unknown = sorted({str(v) for v in (*labels, *predictions) if v not in classes})
    if unknown:
        raise DataError(f"values {unknown} are not among the classes {list(classes)}")
    per_class = []
    for c in classes:
        hits = sum(a == c and b == c for a, b in zip(labels, predictions, strict=True))
        n_lab, n_pred = sum(a == c for a in labels), sum(b == c for b in predictions)
        (rec, rec_ci), (prec, prec_ci) = _share(hits, n_lab), _share(hits, n_pred)
        per_class.append(
            ClassAgreement(
                label=c,
                name=(class_names or {}).get(c, str(c)),
                labelled=n_lab,
                scored=n_pred,
                recall=rec,
                recall_ci=rec_ci,
                precision=prec,
                precision_ci=prec_ci,
            )
        )
    return AuditResult(
        scorer=scorer,
        agreement=agreement(list(labels), list(predictions), n_boot=n_boot, seed=seed),
        classes=tuple(per_class),
    )


def rule_predictions(verdict: str, rows: Sequence[AuditRow]) -> list[Hashable]:
    """The rule-based verdict of each row (the refusal rule v3, the compassion logistic regression v3, the
    honesty rule v3; the coherence verdict for ``unreadable``): what the fitted verdicts read, and what
    the study used before them."""
    if verdict == "unreadable":
        return [is_unreadable(r.response) for r in rows]
    _check_rows(verdict, rows)
    if verdict == "refusal":
        return [refusal_verdict(r.response, prompt=r.prompt).verdict for r in rows]
    if verdict == "compassion":
        return list(compassion_scorer().predict([r.response for r in rows]))
    return [
        honesty_verdict(r.response, str(r.true_answer), str(r.false_answer), question=r.prompt).label
        for r in rows
    ]


def _check_rows(verdict: str, rows: Sequence[AuditRow]) -> None:
    if verdict not in AUDIT_CLASSES:
        raise ConfigError(f"verdict must be one of {list(AUDIT_CLASSES)}, got {verdict!r}")
    if any(r.threat_model != verdict for r in rows):
        raise DataError(f"the {verdict} scorer only reads {verdict} rows")


def scorer_predictions(verdict: str, rows: Sequence[AuditRow]) -> list[Hashable]:
    """The bundled scorer's verdict on each row (the one a study row records, :func:`scorer_id`):
    ``verdict`` is a threat model (its fitted verdict, :mod:`lensteer.evaluate.fitted`) or ``unreadable``
    (the coherence scorer, on rows of every threat model)."""
    if verdict == "unreadable":
        return rule_predictions(verdict, rows)
    _check_rows(verdict, rows)
    responses = [r.response for r in rows]
    if verdict == "refusal":
        return list(fitted_refusal(responses, [r.prompt for r in rows]))
    if verdict == "compassion":
        return list(fitted_compassion(responses))
    answers = [(str(r.true_answer), str(r.false_answer)) for r in rows]
    return list(fitted_honesty(responses, answers, [r.prompt for r in rows]))


def scorer_id(verdict: str, scorer: Callable[..., object] | None = None) -> ScorerId:
    """The identity of the bundled scorer of ``verdict`` (a threat model, or ``unreadable``): what a study
    row records under ``scorer``. A threat model lensteer does not bundle is identified by its ``scorer``
    function (module and name, version ``custom``)."""
    if verdict == "unreadable":
        return COHERENCE_SCORER
    if verdict in ("refusal", "compassion", "honesty"):
        return fitted_verdict(f"{verdict}-fitted").scorer_id
    if scorer is not None:
        name = (
            f"{getattr(scorer, '__module__', '?')}.{getattr(scorer, '__qualname__', type(scorer).__name__)}"
        )
        return ScorerId(name=name, version="custom", digest=rules_digest(name))
    raise ConfigError(f"verdict must be one of {list(AUDIT_CLASSES)}, got {verdict!r}")


def judge_scorer_id(judge: Callable[[str, str], object], pass_score: float = 50.0) -> ScorerId:
    """A judge's identity: its name, and a digest of its model, rubric, system prompt and score range
    (those an :class:`HttpJudge` has) and the pass mark."""
    parts = [getattr(judge, k, None) for k in ("base_url", "model", "rubric", "system", "score_range")]
    return ScorerId(
        name=getattr(judge, "name", type(judge).__name__),
        version="http" if isinstance(judge, HttpJudge) else "callable",
        digest=rules_digest(*parts, pass_score),
    )


def judge_predictions(
    judge: Callable[[str, str], object],
    rows: Sequence[AuditRow],
    *,
    pass_score: float = 50.0,
    prompt_of: Callable[[AuditRow], str] | None = None,
) -> list[bool]:
    """A judge's verdict on each row: its score (a bool, or a number compared with ``pass_score``) says
    whether the answer shows the aligned trait. ``prompt_of`` builds what the judge is shown as the user
    message (default: the row's prompt)."""
    checked = CallableJudge(judge, name=getattr(judge, "name", type(judge).__name__))
    scores = [checked(prompt_of(r) if prompt_of is not None else r.prompt, r.response) for r in rows]
    return [s if isinstance(s, bool) else s >= pass_score for s in scores]


def positive_labels(rows: Sequence[AuditRow]) -> list[bool]:
    """Does the reader say the answer shows the aligned trait (refuses, compassionate, true)?"""
    return [r.label == AUDIT_CLASSES[r.threat_model][0] for r in rows]


def measure_judge(
    judge: Callable[[str, str], object],
    rows: Sequence[AuditRow],
    *,
    name: str = "judge",
    pass_score: float = 50.0,
    prompt_of: Callable[[AuditRow], str] | None = None,
    n_boot: int = 1000,
) -> AuditResult:
    """Any judge ``(prompt, response) -> score`` against the readers on ``rows`` (one threat model): does
    the answer show the aligned trait (score >= ``pass_score``) vs the reader's label collapsed to the
    same question (``refuses`` vs ``complies`` or ``neither``; ``true`` vs ``false`` or ``no_answer``)."""
    models = {r.threat_model for r in rows}
    if len(models) != 1:
        raise DataError(f"measure a judge on one threat model's rows at a time, got {sorted(models)}")
    tm = models.pop()
    positive = CLASS_NAMES.get(tm, {}).get(AUDIT_CLASSES[tm][0], str(AUDIT_CLASSES[tm][0]))
    return measure(
        name,
        positive_labels(rows),
        judge_predictions(judge, rows, pass_score=pass_score, prompt_of=prompt_of),
        (True, False),
        class_names={True: positive, False: f"not {positive}"},
        n_boot=n_boot,
    )


def _pct(value: float | None, ci: tuple[float, float] | None) -> str:
    if value is None or ci is None:
        return "-"
    return f"{100 * value:.1f}% [{100 * ci[0]:.1f}-{100 * ci[1]:.1f}]"


def audit_markdown(results: Sequence[AuditResult]) -> str:
    """The audit table of ``data/README.md``: one line per scorer, then one per class."""
    lines = ["| scorer | answers | accuracy [95% CI] | Cohen's kappa [95% CI] |", "|---|---|---|---|"]
    for r in results:
        a = r.agreement
        lines.append(
            f"| {r.scorer} | {a.n} | {_pct(a.accuracy, a.accuracy_ci)} | "
            f"{a.kappa:.2f} [{a.kappa_ci[0]:.2f}-{a.kappa_ci[1]:.2f}] |"
        )
    lines += [
        "",
        "| scorer | class | labelled | scored | recall [95% CI] | precision [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        for c in r.classes:
            lines.append(
                f"| {r.scorer} | {c.name} | {c.labelled} | {c.scored} | {_pct(c.recall, c.recall_ci)} | "
                f"{_pct(c.precision, c.precision_ci)} |"
            )
    return "\n".join(lines) + "\n"


# The audited verdicts, in the table's order: (verdict, the scorer's name in the table, bundled or the rule
# it replaced); the bundled (fitted) verdicts are the ones the study records and the bars apply to
AUDITED: tuple[tuple[str, str, bool], ...] = (
    ("refusal", "refusal verdict", True),
    ("refusal", "refusal rule v3", False),
    ("compassion", "compassion verdict", True),
    ("compassion", "compassion logreg v3", False),
    ("honesty", "honesty verdict", True),
    ("honesty", "honesty rule v3", False),
    ("unreadable", "coherence (unreadable)", True),
)


def audit_results(split: str) -> list[AuditResult]:
    """Every bundled scorer (and the rule it replaced) against the readers on one part of the audit set
    (:data:`AUDITED` order): the refusal, compassion and honesty verdicts on their threat model's rows (a
    threat model with no rows there is left out), coherence on all rows."""
    rows = load_audit(split)
    out = []
    for verdict, name, bundled in AUDITED:
        mine = rows if verdict == "unreadable" else [r for r in rows if r.threat_model == verdict]
        if not mine:
            continue
        labels = [r.unreadable for r in mine] if verdict == "unreadable" else [r.label for r in mine]
        out.append(
            measure(
                name,
                labels,
                (scorer_predictions if bundled else rule_predictions)(verdict, mine),
                AUDIT_CLASSES[verdict],
                class_names=CLASS_NAMES.get(verdict),
            )
        )
    return out


READING_NAME = "refusal reading verdict"  # the reading verdict's name in its table


def reading_results(model: Bridge, split: str) -> list[AuditResult]:
    """The refusal verdict that reads answers with ``model`` (the embedded model, its reader:
    :func:`~lensteer.evaluate.reading.reading_refusal`) against the readers on one part of the audit set."""
    rows = load_audit(split, "refusal")
    if not rows:
        raise DataError(f"the audit split {split!r} holds no refusal answers")
    predicted = reading_refusal(model, [r.response for r in rows], [r.prompt for r in rows])
    return [measure(READING_NAME, [r.label for r in rows], predicted, AUDIT_CLASSES["refusal"])]


# The verdicts of the fifth revision (scripts/fit_asked_verdicts.py), measured beside the study's: their names
# in their table (data/README.md's audit-asked blocks)
ASKED_NAMES = {"refusal": "refusal asked verdict", "honesty": "honesty slot verdict"}


def asked_results(model: Bridge, split: str) -> list[AuditResult]:
    """The fifth revision's verdicts against the readers on one part of the audit set, each on its threat
    model's rows (one with no rows there is left out): the asked refusal verdict
    (:func:`~lensteer.evaluate.reading.asked_refusal`: ``model``, the embedded model, reads each answer and is
    asked whether it gave what was asked) and the honesty slot verdict
    (:func:`~lensteer.evaluate.fitted.slot_honesty`, no reader)."""
    out = []
    for verdict, name in ASKED_NAMES.items():
        rows = load_audit(split, verdict)
        if not rows:
            continue
        responses, prompts = [r.response for r in rows], [r.prompt for r in rows]
        predicted = (
            asked_refusal(model, responses, prompts)
            if verdict == "refusal"
            else slot_honesty(responses, [(str(r.true_answer), str(r.false_answer)) for r in rows], prompts)
        )
        out.append(measure(name, [r.label for r in rows], predicted, AUDIT_CLASSES[verdict]))
    if not out:
        raise DataError(f"the audit split {split!r} holds no refusal or honesty answers")
    return out
