"""Public benchmark files, read as their projects publish them, as lensteer evaluation sets.

A researcher arrives with a benchmark on disk; :func:`load_public_set` reads it in the layout its project
publishes (the data is never bundled with lensteer: pass the path of your own copy). Each row becomes a
:class:`PublicRow` of one of two kinds:

* ``trait``: a prompt on which the threat model's aligned trait is measured (a harmful request that
  should be refused; a TruthfulQA question that should be answered truthfully);
* ``safe``: a prompt that only sounds harmful, on which refusing is over-refusal (XSTest's safe types,
  OR-Bench's seemingly toxic prompts, JailbreakBench's benign behaviours).

Which threat model a format measures is said by the threat model itself (``ThreatModel.benchmarks``,
looked up with :func:`lensteer.threats.for_benchmark`); this module knows only the files. The layouts,
with where each was read (repository and path of the published file):

* ``harmbench``: centerforaisafety/HarmBench
  ``data/behavior_datasets/harmbench_behaviors_text_all.csv``, columns ``Behavior, FunctionalCategory,
  SemanticCategory, Tags, ContextString, BehaviorID`` (a contextual behaviour's prompt is its
  ``ContextString``, a ``---`` line, then the ``Behavior``, as HarmBench builds its test cases).
* ``jailbreakbench``: JailbreakBench/JBB-Behaviors ``data/harmful-behaviors.csv``, columns ``Index, Goal,
  Target, Behavior, Category, Source`` (the prompt is ``Goal``); ``jailbreakbench-benign``: the same
  dataset's ``data/benign-behaviors.csv`` (same columns; safe rows).
* ``advbench``: llm-attacks/llm-attacks ``data/advbench/harmful_behaviors.csv``, columns ``goal, target``.
* ``xstest``: paul-rottger/exaggerated-safety ``xstest_prompts.csv``, columns ``id, prompt, type, label,
  focus, note``; ``label`` is ``safe`` or ``unsafe`` (the unsafe types are the ``contrast_*`` ones; a file
  without ``label``, such as the earlier ``xstest_v2_prompts.csv``, is classed by its ``type``).
* ``strongreject``: alexandrasouly/strongreject ``strongreject_dataset/strongreject_dataset.csv`` (and
  ``strongreject_small_dataset.csv``), columns ``category, source, forbidden_prompt``.
* ``orbench``: bench-llm/or-bench ``or-bench-hard-1k.csv`` / ``or-bench-80k.csv``, columns ``prompt,
  category`` (seemingly toxic but safe: safe rows); ``orbench-toxic``: the same dataset's
  ``or-bench-toxic.csv`` (same columns; harmful rows).
* ``truthfulqa``: sylinrl/TruthfulQA ``TruthfulQA.csv``, columns ``Type, Category, Question, Best Answer,
  Correct Answers, Incorrect Answers, Source`` (``;``-separated answer lists; the 2025 file adds ``Best
  Incorrect Answer``); scored as a multiple choice between the best answer and the incorrect ones
  (MC1-style), teacher-forced.

A file that does not match its format is refused with the columns expected and those found.
"""

import csv
import hashlib
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from lensteer.core.datasets import ContrastExample, ContrastSet
from lensteer.core.splits import in_turn
from lensteer.errors import ConfigError, DataError
from lensteer.evaluate.capability import MCItem

Kind = Literal["trait", "safe"]
KINDS: tuple[Kind, ...] = ("trait", "safe")


@dataclass(frozen=True, kw_only=True)
class PublicRow:
    """One prompt of a public benchmark.

    Attributes:
        id: The row's id in the file (its own id column, else its 1-based row number).
        prompt: What the model is asked.
        category: The benchmark's category of the row (``uncategorised`` if it has none).
        kind: ``trait`` (the threat model's trait is measured on it) or ``safe`` (refusing it is
            over-refusal).
        choices: For a multiple-choice row, the answers with the correct one first (empty: generated
            answers are scored).
    """

    id: str
    prompt: str
    category: str = "uncategorised"
    kind: Kind = "trait"
    choices: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class PublicFormat:
    """How one benchmark's published file is laid out, and how a row of it becomes a :class:`PublicRow`.

    Attributes:
        name: The format's name on the command line (``--eval-set NAME=PATH``).
        title: The benchmark's name in messages.
        source: Where the layout was read: repository and path of the published file.
        columns: Columns the file must have.
        row: ``row(fields, number)`` -> the row (``number`` is 1-based, for ids and messages).
        wrong_file: A word in a file name that says another format of the same columns is meant
            (``toxic`` for ``orbench``), with the format to use instead.
    """

    name: str
    title: str
    source: str
    columns: tuple[str, ...]
    row: Callable[[Mapping[str, str], int], PublicRow]
    wrong_file: tuple[str, str] | None = None


@dataclass(frozen=True, kw_only=True)
class PublicSet:
    """A public benchmark file read into rows (see the module docstring).

    Attributes:
        format: The :class:`PublicFormat` name it was read as.
        path: The file.
        sha256: The file's SHA-256 (results name the exact file they were measured on).
        rows: Its rows, in file order.
    """

    format: str
    path: str
    sha256: str
    rows: tuple[PublicRow, ...]

    def __len__(self) -> int:
        return len(self.rows)

    def of_kind(self, kind: Kind) -> list[PublicRow]:
        """The rows of one kind, in file order."""
        if kind not in KINDS:
            raise ConfigError(f"kind must be one of {KINDS}, got {kind!r}")
        return [r for r in self.rows if r.kind == kind]

    def stratified(self, n: int | None) -> "PublicSet":
        """At most ``n`` rows of each kind (all: ``None``), taken in turn from every category."""
        rows: list[PublicRow] = []
        for kind in KINDS:
            order = in_turn(self.of_kind(kind), key=lambda r: r.category)
            rows += order if n is None else order[:n]
        return replace(self, rows=tuple(rows))

    def contrast_set(self, kind: Kind = "trait") -> ContrastSet:
        """The rows of one kind as a :class:`~lensteer.core.datasets.ContrastSet` (what a threat model's
        scorer reads beside the answers)."""
        examples = tuple(
            ContrastExample(id=r.id, prompt=r.prompt, category=r.category, split="test")
            for r in self.of_kind(kind)
        )
        return ContrastSet(name=f"{self.format}:{Path(self.path).name}", examples=examples, source=self.path)

    def mc_items(self) -> list[MCItem]:
        """The multiple-choice trait rows as items (the correct choice first)."""
        return [
            MCItem(id=r.id, category=r.category, question=r.prompt, options=r.choices, answer=0)
            for r in self.of_kind("trait")
            if r.choices
        ]


def _need(fields: Mapping[str, str], column: str, number: int) -> str:
    value = (fields.get(column) or "").strip()
    if not value:
        raise DataError(f"row {number} has an empty {column!r}; every row needs one")
    return value


def _get(fields: Mapping[str, str], column: str) -> str:
    return (fields.get(column) or "").strip()


def _harmbench(f: Mapping[str, str], n: int) -> PublicRow:
    behavior, context = _need(f, "Behavior", n), _get(f, "ContextString")
    return PublicRow(
        id=_get(f, "BehaviorID") or str(n),
        prompt=f"{context}\n\n---\n\n{behavior}" if context else behavior,
        category=_get(f, "SemanticCategory") or "uncategorised",
    )


def _jailbreakbench(kind: Kind) -> Callable[[Mapping[str, str], int], PublicRow]:
    def row(f: Mapping[str, str], n: int) -> PublicRow:
        return PublicRow(
            id=_get(f, "Index") or str(n),
            prompt=_need(f, "Goal", n),
            category=_get(f, "Category") or "uncategorised",
            kind=kind,
        )

    return row


def _advbench(f: Mapping[str, str], n: int) -> PublicRow:
    return PublicRow(id=str(n), prompt=_need(f, "goal", n))


XSTEST_LABELS = ("safe", "unsafe")


def _xstest(f: Mapping[str, str], n: int) -> PublicRow:
    kind_of_type: Kind = "trait" if _need(f, "type", n).startswith("contrast_") else "safe"
    label = _get(f, "label")
    if label and label not in XSTEST_LABELS:
        raise DataError(f"row {n}: XSTest label must be one of {list(XSTEST_LABELS)}, got {label!r}")
    kind: Kind = "trait" if label == "unsafe" else "safe" if label == "safe" else kind_of_type
    return PublicRow(id=_get(f, "id") or str(n), prompt=_need(f, "prompt", n), category=f["type"], kind=kind)


def _strongreject(f: Mapping[str, str], n: int) -> PublicRow:
    return PublicRow(
        id=str(n), prompt=_need(f, "forbidden_prompt", n), category=_get(f, "category") or "uncategorised"
    )


def _orbench(kind: Kind) -> Callable[[Mapping[str, str], int], PublicRow]:
    def row(f: Mapping[str, str], n: int) -> PublicRow:
        return PublicRow(
            id=str(n),
            prompt=_need(f, "prompt", n),
            category=_get(f, "category") or "uncategorised",
            kind=kind,
        )

    return row


def _answers(text: str) -> list[str]:
    return [a.strip() for a in text.split(";") if a.strip()]


def _truthfulqa(f: Mapping[str, str], n: int) -> PublicRow:
    best = _need(f, "Best Answer", n)
    wrong = _answers(_need(f, "Incorrect Answers", n))
    best_wrong = _get(f, "Best Incorrect Answer")
    if best_wrong and best_wrong not in wrong:
        wrong.insert(0, best_wrong)
    wrong = [w for w in dict.fromkeys(wrong) if w != best]
    if not wrong:
        raise DataError(f"row {n}: 'Incorrect Answers' holds no answer other than the best one")
    return PublicRow(
        id=str(n),
        prompt=_need(f, "Question", n),
        category=_get(f, "Category") or "uncategorised",
        choices=(best, *wrong),
    )


FORMATS: dict[str, PublicFormat] = {
    f.name: f
    for f in (
        PublicFormat(
            name="harmbench",
            title="HarmBench behaviours",
            source="centerforaisafety/HarmBench data/behavior_datasets/harmbench_behaviors_text_all.csv",
            columns=("Behavior", "FunctionalCategory", "SemanticCategory", "BehaviorID"),
            row=_harmbench,
        ),
        PublicFormat(
            name="jailbreakbench",
            title="JailbreakBench harmful behaviours",
            source="JailbreakBench/JBB-Behaviors data/harmful-behaviors.csv",
            columns=("Index", "Goal", "Target", "Behavior", "Category", "Source"),
            row=_jailbreakbench("trait"),
            wrong_file=("benign", "jailbreakbench-benign"),
        ),
        PublicFormat(
            name="jailbreakbench-benign",
            title="JailbreakBench benign behaviours",
            source="JailbreakBench/JBB-Behaviors data/benign-behaviors.csv",
            columns=("Index", "Goal", "Target", "Behavior", "Category", "Source"),
            row=_jailbreakbench("safe"),
            wrong_file=("harmful", "jailbreakbench"),
        ),
        PublicFormat(
            name="advbench",
            title="AdvBench harmful behaviours",
            source="llm-attacks/llm-attacks data/advbench/harmful_behaviors.csv",
            columns=("goal", "target"),
            row=_advbench,
        ),
        PublicFormat(
            name="xstest",
            title="XSTest prompts",
            source="paul-rottger/exaggerated-safety xstest_prompts.csv",
            columns=("prompt", "type"),
            row=_xstest,
        ),
        PublicFormat(
            name="strongreject",
            title="StrongREJECT forbidden prompts",
            source="alexandrasouly/strongreject strongreject_dataset/strongreject_dataset.csv",
            columns=("category", "source", "forbidden_prompt"),
            row=_strongreject,
        ),
        PublicFormat(
            name="orbench",
            title="OR-Bench seemingly toxic prompts",
            source="bench-llm/or-bench or-bench-hard-1k.csv (or or-bench-80k.csv)",
            columns=("prompt", "category"),
            row=_orbench("safe"),
            wrong_file=("toxic", "orbench-toxic"),
        ),
        PublicFormat(
            name="orbench-toxic",
            title="OR-Bench toxic prompts",
            source="bench-llm/or-bench or-bench-toxic.csv",
            columns=("prompt", "category"),
            row=_orbench("trait"),
        ),
        PublicFormat(
            name="truthfulqa",
            title="TruthfulQA",
            source="sylinrl/TruthfulQA TruthfulQA.csv",
            columns=("Question", "Best Answer", "Incorrect Answers", "Category"),
            row=_truthfulqa,
        ),
    )
}


def public_format(name: str) -> PublicFormat:
    """The format called ``name``; a :class:`ConfigError` lists the known ones."""
    if name not in FORMATS:
        raise ConfigError(f"unknown benchmark format {name!r}; known: {sorted(FORMATS)}")
    return FORMATS[name]


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"benchmark file {str(path)!r} does not exist") from None
    except UnicodeDecodeError as e:
        raise DataError(f"benchmark file {str(path)!r} is not UTF-8 text ({e})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [c.strip() for c in (reader.fieldnames or [])]
    rows = [{(k or "").strip(): v or "" for k, v in r.items()} for r in reader]
    return header, rows


def load_public_set(name: str, path: "str | Path") -> PublicSet:
    """Read a public benchmark's published CSV file as the format ``name`` (see :data:`FORMATS`).

    Raises:
        ConfigError: ``name`` is no known format.
        DataError: The file is missing, has none of the rows or not the columns the format expects (the
            message names the expected and the found columns), or a row lacks its prompt.
    """
    fmt = public_format(name)
    file = Path(path)
    if file.suffix.lower() != ".csv":
        raise DataError(f"{fmt.title} is read from its published .csv file; got {str(file)!r}")
    if fmt.wrong_file is not None and fmt.wrong_file[0] in file.name.lower():
        raise DataError(
            f"{file.name!r} looks like a {fmt.wrong_file[1]!r} file (its name says {fmt.wrong_file[0]!r}), "
            f"read as {name!r}; pass it as {fmt.wrong_file[1]}={file}"
        )
    header, raw = _read_csv(file)
    missing = [c for c in fmt.columns if c not in header]
    if missing:
        raise DataError(
            f"{str(file)!r} does not match the {fmt.title} layout: it lacks the columns {missing}. Expected the "
            f"columns {list(fmt.columns)} (as published in {fmt.source}); found {header}"
        )
    rows: list[PublicRow] = []
    for number, fields in enumerate(raw, start=1):
        try:
            rows.append(fmt.row(fields, number))
        except DataError as e:
            raise DataError(f"{file.name}: {e}") from None
    if not rows:
        raise DataError(f"{str(file)!r} has the {fmt.title} columns but no rows")
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    return PublicSet(format=name, path=str(file), sha256=digest, rows=tuple(rows))


def parse_eval_set(text: str) -> tuple[str, str]:
    """``harmbench=PATH`` as ``("harmbench", "PATH")``; a :class:`ConfigError` names the known formats."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise ConfigError(
            f"--eval-set takes FORMAT=PATH (e.g. harmbench=harmbench_behaviors_text_all.csv), got {text!r}; "
            f"formats: {sorted(FORMATS)}"
        )
    public_format(name.strip())
    return name.strip(), path.strip()


def load_eval_sets(specs: Sequence[str]) -> dict[str, PublicSet]:
    """Every ``FORMAT=PATH`` read, keyed ``FORMAT:FILE NAME`` (checked before a model loads)."""
    out: dict[str, PublicSet] = {}
    for spec in specs:
        name, path = parse_eval_set(spec)
        key = f"{name}:{Path(path).name}"
        if key in out:
            raise ConfigError(f"--eval-set {spec!r} is given twice")
        out[key] = load_public_set(name, path)
    return out
