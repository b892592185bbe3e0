"""Contrast datasets: the bundled threat models and users' own JSONL/CSV files in the same schema.

Each row is one example (schema in ``data/README.md``)::

    {"id": "refusal-weapons-01", "category": "weapons", "prompt": "...",      # required: id, prompt
     "paired_prompt": "...",                                                  # prompt of the other class
     "aligned_response": "...", "misaligned_response": "...",                 # both or neither
     "true_answer": "...", "false_answer": "..."}                             # both or neither

A ``<name>.contexts.json`` beside the JSONL holds named misaligning contexts (a system prompt and/or
few-shot turns). Splits are deterministic: within each category, rows are ordered by a hash of
their id and cut 60/20/20, so adding rows never moves existing ones between train and test.
"""

import csv
import hashlib
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from lensteer.core.bundled import bundled_dir
from lensteer.core.chat import ChatPrompt, Turn
from lensteer.core.splits import SPLITS, hashed_splits, held_apart_ids, in_turn
from lensteer.errors import ConfigError, DataError

# The bundled contrast sets, named by their files in data/contrast: one per threat model (which of them
# are threat models is lensteer.threats' business) and borderline (harmless prompts that merely sound
# dangerous, for over-refusal).
BUNDLED: tuple[str, ...] = tuple(sorted(p.stem for p in bundled_dir("contrast").glob("*.jsonl")))
REQUIRED_FIELDS = ("id", "prompt")
OPTIONAL_FIELDS = (
    "category",
    "paired_prompt",
    "aligned_response",
    "misaligned_response",
    "true_answer",
    "false_answer",
    "split",
)
_PAIRS = (("aligned_response", "misaligned_response"), ("true_answer", "false_answer"))


def data_dir() -> Path:
    """Folder holding the bundled contrast sets (inside the wheel, or the repo's ``data/contrast``)."""
    return bundled_dir("contrast")


@dataclass(frozen=True, kw_only=True)
class Context:
    """A named context that pushes a model towards misaligned behaviour (system prompt, few-shot)."""

    name: str
    description: str = ""
    system: str | None = None
    turns: tuple[Turn, ...] = ()

    def apply(self, prompt: ChatPrompt) -> ChatPrompt:
        """Return ``prompt`` inside this context: its system prompt, its turns before the history."""
        system = self.system if self.system is not None else prompt.system
        return replace(prompt, system=system, history=self.turns + prompt.history)


@dataclass(frozen=True, kw_only=True)
class ContrastExample:
    """One row of a contrast set (see the module docstring for the fields)."""

    id: str
    prompt: str
    category: str = "uncategorised"
    paired_prompt: str | None = None
    aligned_response: str | None = None
    misaligned_response: str | None = None
    true_answer: str | None = None
    false_answer: str | None = None
    split: str = ""  # "train" / "val" / "test": fixed once on the full dataset (see lensteer.core.splits)

    @property
    def has_responses(self) -> bool:
        return self.aligned_response is not None


@dataclass(frozen=True, kw_only=True)
class ContrastSet:
    """A contrast dataset: examples, misaligning contexts, provenance, and deterministic splits.

    ``len()`` is the number of examples; ``.train``, ``.val`` and ``.test`` are the splits (each a
    ``ContrastSet``); iterate to get :class:`ContrastExample` rows.
    """

    name: str
    examples: tuple[ContrastExample, ...]
    contexts: Mapping[str, Context] = field(default_factory=lambda: MappingProxyType({}))
    source: str = ""
    sha256: str = ""
    split: str = "all"

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[ContrastExample]:
        return iter(self.examples)

    def __getitem__(self, index: int) -> ContrastExample:
        return self.examples[index]

    def __repr__(self) -> str:
        return f"ContrastSet(name={self.name!r}, split={self.split!r}, n={len(self)}, contexts={list(self.contexts)})"

    def _subset(self, examples: Sequence[ContrastExample], split: str) -> "ContrastSet":
        return replace(self, examples=tuple(examples), split=split)

    def _split(self, label: str) -> "ContrastSet":
        if self.split != "all":
            raise DataError(f"{self!r} is already a split; split the full set instead")
        return self._subset([ex for ex in self.examples if ex.split == label], label)

    @property
    def train(self) -> "ContrastSet":
        return self._split("train")

    @property
    def val(self) -> "ContrastSet":
        return self._split("val")

    @property
    def test(self) -> "ContrastSet":
        return self._split("test")

    @property
    def held_apart(self) -> "ContrastSet":
        """The training rows kept from every fit (:func:`~lensteer.core.splits.held_apart_ids`: a fixed 20%
        of each category, by id): the study prices a steering's coherence on them, so no prompt that
        fitted a direction, probe or gate, and none that a number is reported on, sets its scale."""
        train = self.train
        ids = held_apart_ids(train.examples)
        return replace(train, examples=tuple(ex for ex in train.examples if ex.id in ids), split="held_apart")

    @property
    def fit(self) -> "ContrastSet":
        """The training rows without :attr:`held_apart`: what directions, probes and gates are fitted on."""
        train = self.train
        ids = held_apart_ids(train.examples)
        return replace(train, examples=tuple(ex for ex in train.examples if ex.id not in ids), split="fit")

    @property
    def categories(self) -> list[str]:
        return sorted({ex.category for ex in self.examples})

    def with_responses(self) -> "ContrastSet":
        """The examples that carry an aligned and a misaligned response."""
        return self._subset([ex for ex in self.examples if ex.has_responses], self.split)

    def head(self, n: int) -> "ContrastSet":
        """The first ``n`` examples in file order (for smoke runs; see :meth:`stratified` for evaluation)."""
        return self._subset(self.examples[:n], self.split)

    def stratified(self, n: int | None = None) -> "ContrastSet":
        """``n`` examples (all by default) taken in turn from each category, so every category is
        represented; within a category, file order. Each example keeps its split."""
        order = in_turn(self.examples, key=lambda ex: ex.category)
        return self._subset(order if n is None else order[:n], self.split)

    def where(self, *, categories: Sequence[str]) -> "ContrastSet":
        """The examples of the given categories (each keeps its split)."""
        unknown = sorted(set(categories) - set(self.categories))
        if unknown:
            raise DataError(f"dataset {self.name!r} has no categories {unknown}; it has {self.categories}")
        return self._subset([ex for ex in self.examples if ex.category in categories], self.split)

    def context(self, name: str) -> Context:
        """A named misaligning context from ``<name>.contexts.json``."""
        if name not in self.contexts:
            raise ConfigError(
                f"dataset {self.name!r} has no context {name!r}; available: {sorted(self.contexts)}"
            )
        return self.contexts[name]

    @property
    def prompts(self) -> list[str]:
        return [ex.prompt for ex in self.examples]

    @property
    def paired_prompts(self) -> list[str]:
        missing = [ex.id for ex in self.examples if ex.paired_prompt is None]
        if missing:
            raise DataError(f"dataset {self.name!r} rows {missing[:5]} have no paired_prompt")
        return [ex.paired_prompt for ex in self.examples if ex.paired_prompt is not None]

    def chat_prompts(
        self, *, paired: bool = False, context: "str | Context | None" = None, response: str | None = None
    ) -> list[ChatPrompt]:
        """Chat prompts for every example.

        Args:
            paired: Use ``paired_prompt`` (e.g. the harmless twin) instead of ``prompt``.
            context: A context name (from the dataset's contexts file) or :class:`Context` to wrap
                each prompt in.
            response: ``"aligned"`` or ``"misaligned"`` to append that response (for
                response-token reads); ``None`` for bare prompts.
        """
        if response not in (None, "aligned", "misaligned"):
            raise ConfigError(f"response must be None, 'aligned' or 'misaligned', got {response!r}")
        ctx = self.context(context) if isinstance(context, str) else context
        texts = self.paired_prompts if paired else self.prompts
        out = []
        for ex, text in zip(self.examples, texts, strict=True):
            resp = None
            if response is not None:
                resp = getattr(ex, f"{response}_response")
                if resp is None:
                    raise DataError(f"row {ex.id!r} has no {response}_response; use .with_responses() first")
            prompt = ChatPrompt(user=text, response=resp)
            out.append(ctx.apply(prompt) if ctx is not None else prompt)
        return out


def _parse_row(row: Mapping[str, Any], where: str) -> ContrastExample:
    if not isinstance(row, Mapping):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    unknown = set(row) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS)
    if unknown:
        raise DataError(
            f"{where}: unknown field(s) {sorted(unknown)}; allowed: {list(REQUIRED_FIELDS + OPTIONAL_FIELDS)}"
        )
    clean: dict[str, str] = {}
    for key, value in row.items():
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__} {value!r}")
        clean[key] = value
    for key in REQUIRED_FIELDS:
        if key not in clean or not clean[key].strip():
            raise DataError(f"{where}: missing required field {key!r} (required: {list(REQUIRED_FIELDS)})")
    for a, b in _PAIRS:
        if (a in clean) != (b in clean):
            have, lack = (a, b) if a in clean else (b, a)
            raise DataError(f"{where}: has {have!r} but lacks {lack!r}; give both or neither")
    return ContrastExample(**clean)


def _text_of(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path.name} is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8"
        ) from err


def _read_rows(path: Path) -> list[tuple[str, Any]]:
    if path.suffix == ".csv":
        reader = csv.reader(io.StringIO(_text_of(path), newline=""))
        try:
            header = next(reader, [])
            rows = []
            for i, values in enumerate(reader, start=2):
                if not values:  # a blank line
                    continue
                if len(values) > len(header):
                    raise DataError(
                        f"{path.name} row {i}: {len(values)} values but the header has {len(header)} "
                        f"columns {header}; quote values that contain commas"
                    )
                rows.append(
                    (f"{path.name} row {i}", dict(zip(header, values, strict=False)))
                )  # short: missing
        except csv.Error as err:
            raise DataError(f"{path.name} line {reader.line_num}: not valid CSV ({err})") from err
        return rows
    if path.suffix in (".jsonl", ".json"):
        rows = []
        for i, line in enumerate(_text_of(path).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path.name} line {i}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise DataError(f"{path.name} line {i}: not valid JSON ({err.msg})") from err
        return rows
    raise DataError(f"unsupported data file {path.name!r}; use .jsonl or .csv")


def _read_contexts(path: Path) -> Mapping[str, Context]:
    if not path.is_file():
        return MappingProxyType({})
    try:
        raw = json.loads(_text_of(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path.name}: not valid JSON ({err.msg})") from err
    if not isinstance(raw, dict):
        raise DataError(
            f"{path.name}: expected a JSON object of contexts {{name: {{'system', 'turns'}}}}, "
            f"got a JSON {type(raw).__name__}"
        )
    out = {}
    for name, spec in raw.items():
        try:
            turns = tuple(Turn(role=t["role"], content=t["content"]) for t in spec.get("turns", ()))
            out[name] = Context(
                name=name, description=spec.get("description", ""), system=spec.get("system"), turns=turns
            )
        except (KeyError, TypeError, AttributeError, ConfigError) as err:
            raise DataError(
                f"{path.name}: context {name!r} is malformed ({err!r}); "
                "expected {'system': str|null, 'turns': [{'role', 'content'}]}"
            ) from err
    return MappingProxyType(out)


def _with_splits(rows: list[ContrastExample], file: str) -> list[ContrastExample]:
    """Every row with its split: the file's own ``split`` fields (all rows or none), else hashed by id."""
    given = [ex for ex in rows if ex.split]
    if given and len(given) != len(rows):
        missing = [ex.id for ex in rows if not ex.split][:5]
        raise DataError(
            f"{file}: {len(given)} of {len(rows)} rows have a 'split'; give all or none (missing: {missing})"
        )
    bad = sorted({ex.split for ex in given} - set(SPLITS))
    if bad:
        raise DataError(f"{file}: split values {bad} are not allowed; use {list(SPLITS)}")
    if given:
        return rows
    split_of = hashed_splits(rows)
    return [replace(ex, split=split_of[ex.id]) for ex in rows]


def load_dataset(name_or_path: "str | Path") -> ContrastSet:
    """Load a bundled contrast set by name, or a user's JSONL/CSV file in the same schema.

    Args:
        name_or_path: A bundled name (:data:`BUNDLED`: ``"refusal"``, ``"honesty"``, ...) or a path to a ``.jsonl`` /
            ``.csv`` file (a ``<stem>.contexts.json`` beside it is loaded too).

    Returns:
        The :class:`ContrastSet`; ``.train``/``.val``/``.test`` give the splits.

    Raises:
        DataError: Unknown name, missing file, empty file, malformed or duplicate rows.
    """
    spec = str(name_or_path)
    path = Path(spec).expanduser()
    if spec in BUNDLED:
        path = data_dir() / f"{spec}.jsonl"
    elif not path.is_file():
        raise DataError(
            f"dataset {spec!r} is neither a bundled name ({', '.join(BUNDLED)}) nor an existing file"
        )
    rows = [_parse_row(row, where) for where, row in _read_rows(path)]
    if not rows:
        raise DataError(f"dataset file {path.name!r} has no rows")
    seen: set[str] = set()
    for ex in rows:
        if ex.id in seen:
            raise DataError(f"{path.name}: duplicate id {ex.id!r}; ids must be unique")
        seen.add(ex.id)
    rows = _with_splits(rows, path.name)
    return ContrastSet(
        name=path.stem,
        examples=tuple(rows),
        contexts=_read_contexts(path.with_suffix(".contexts.json")),
        source=str(path),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
    )
