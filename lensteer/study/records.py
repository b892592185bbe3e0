"""The study's records: one :class:`ConditionResult` per row of ``results.json`` and one :class:`StudyReport`
for ``report.json``, each with ``to_dict`` / ``from_dict`` and ``to_json`` / ``from_json``.

Rows and reports cross the study's boundaries (the runner's table, the Ray driver's merge, ``lensteer
report``, the figures) as these values instead of loose dicts. The fields every condition has are typed;
everything else a row or report holds (a threat model's extra metrics, keys a newer lensteer writes) is
kept as written in a mapping, so a record round-trips losslessly whatever produced it.

``report.json`` carries :data:`SCHEMA_VERSION`; a report written before the version was recorded (the
committed ``docs/study``) is migrated by :meth:`StudyReport.from_dict`, never rewritten by hand.
"""

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from lensteer.core.io import as_json, read_json, write_json
from lensteer.errors import DataError

SCHEMA_VERSION = 2  # 1: report.json before the version was recorded (no Holm-adjusted p-values)
ROW_KEY = ("threat_model", "method", "kl_budget", "layer")
# keys rows written by earlier lensteers carry instead of today's: read as today's (the old key is kept too)
LEGACY_ROW_KEYS = {"kl": "kl_heldout", "harmless_steered_share": "fired_share_harmless_generated"}


def _json_value(value: Any) -> Any:
    """Tuples as lists, as JSON has them."""
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True, kw_only=True)
class ConditionResult:
    """One condition's results on one threat model at one KL budget and layer: a row of ``results.json``.

    Attributes:
        threat_model, method, kl_budget, layer: The row's key (``kl_budget`` ``None``: unsteered or the
            paper regime; ``method`` ``random:<seed>`` for a random-direction control).
        n_eval: Test prompts answered.
        trait: The share of answers showing the aligned trait; ``trait_ci`` its Wilson interval and
            ``trait_flags`` the per-prompt flags the paired tests use.
        kl_heldout: KL on held-out harmless prompts (nats/token).
        scale, coefficient: The steering's calibrated scale and coefficient (``None``: no steering).
        same_as: The condition this one duplicates at matched KL (``StMP-push`` of ``StMP``).
        metrics: Every other key of the row, as written (threat-model-specific metrics included).
    """

    threat_model: str
    method: str
    kl_budget: float | None
    layer: int | None
    n_eval: int | None = None
    trait: float | None = None
    trait_ci: tuple[float, float] | None = None
    trait_flags: tuple[bool, ...] | None = None
    kl_heldout: float | None = None
    scale: float | None = None
    coefficient: float | None = None
    same_as: str | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clash = sorted(
            k
            for k in set(self.metrics) & _TYPED
            if k in ROW_KEY or self.metrics[k] is not None or getattr(self, k) is not None
        )
        if clash:
            raise DataError(f"metrics {clash} of {self.key} are typed fields of ConditionResult; set those")

    @property
    def key(self) -> tuple[str, str, float | None, int | None]:
        """The table's key: (threat model, method, KL budget, layer)."""
        return (self.threat_model, self.method, self.kl_budget, self.layer)

    def get(self, name: str, default: Any = None) -> Any:
        """The value the row has under JSON key ``name`` (a typed field or a metric), else ``default``."""
        if name in _TYPED and name not in ROW_KEY:
            value = getattr(self, name)
            if value is not None:
                return _json_value(value)
        elif name in ROW_KEY:
            return getattr(self, name)
        return self.metrics.get(name, default)

    def to_dict(self) -> dict[str, Any]:
        """The row as JSON: its key, the typed fields that are set, then the metrics."""
        out: dict[str, Any] = {k: getattr(self, k) for k in ROW_KEY}
        for name in _OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                out[name] = _json_value(value)
        return out | dict(self.metrics)

    @classmethod
    def from_dict(cls, row: Mapping[str, Any], *, where: str = "a results row") -> "ConditionResult":
        """The row written by :meth:`to_dict` (or by any earlier lensteer): a typed field that is missing or
        ``null`` stays ``None`` (an explicit ``null`` is kept among the metrics, so it round-trips). A row
        with only an earlier name of a key (:data:`LEGACY_ROW_KEYS`) also gets today's name."""
        if not isinstance(row, Mapping):
            raise DataError(f"{where} is a {type(row).__name__}, not an object")
        renamed = {new: row[old] for old, new in LEGACY_ROW_KEYS.items() if old in row and new not in row}
        row = {**row, **renamed}
        missing = [k for k in ("threat_model", "method") if not isinstance(row.get(k), str)]
        if missing:
            raise DataError(f"{where} lacks {missing} (a results row has {list(ROW_KEY)})")
        typed = {k: row[k] for k in _OPTIONAL if row.get(k) is not None}
        for name in ("trait_ci", "trait_flags"):
            if name in typed:
                typed[name] = tuple(typed[name])
        metrics = {k: v for k, v in row.items() if k not in ROW_KEY and k not in typed}
        key: dict[str, Any] = {k: row.get(k) for k in ROW_KEY}
        return cls(**key, **typed, metrics=metrics)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "ConditionResult":
        return cls.from_dict(json.loads(text))


_OPTIONAL = tuple(f.name for f in fields(ConditionResult) if f.name not in (*ROW_KEY, "metrics"))
_TYPED = frozenset((*ROW_KEY, *_OPTIONAL))


def as_result(row: "ConditionResult | Mapping[str, Any]") -> ConditionResult:
    """``row`` as a :class:`ConditionResult` (a dict row, e.g. from an older caller, is read)."""
    return row if isinstance(row, ConditionResult) else ConditionResult.from_dict(row)


def results_of(rows: Sequence[Mapping[str, Any]], where: str) -> list[ConditionResult]:
    """Rows read from ``where`` (a file) as results; a bad row is a :class:`DataError` naming it."""
    return [ConditionResult.from_dict(r, where=f"row {i} of {where}") for i, r in enumerate(rows)]


@dataclass(frozen=True, kw_only=True)
class StudyReport(Mapping[str, Any]):
    """``report.json``: the study's config, model and, per threat model, the baselines, controls and methods
    at the matched KL budget with their paired tests (:func:`~lensteer.study.report.build_report`).

    The threat-model entries stay JSON objects (each threat model and stage adds its own keys); the report
    also reads like the JSON object (``report["threat_models"]``) for code written against the file.

    Attributes:
        schema_version: :data:`SCHEMA_VERSION` for a report this lensteer writes.
        lensteer_version: The lensteer that built it.
        model: The model's fingerprint.
        config: The study config (``StudyConfig.to_dict()``).
        matched_kl_budget: The KL budget the methods are compared at.
        seconds: Wall time of the run (summed over resumed runs).
        alpha: The significance level of the findings.
        threat_models: Per threat model, its entry.
        robustness: The robustness rows (``None``: the study ran without ``--robustness``).
        extra: Any other top-level keys, as written.
    """

    schema_version: int = SCHEMA_VERSION
    lensteer_version: str
    model: Mapping[str, Any]
    config: Mapping[str, Any]
    matched_kl_budget: float
    seconds: float
    alpha: float
    threat_models: Mapping[str, Mapping[str, Any]]
    robustness: tuple[Mapping[str, Any], ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON (``report.json``)."""
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "lensteer_version": self.lensteer_version,
            "model": dict(self.model),
            "config": dict(self.config),
            "matched_kl_budget": self.matched_kl_budget,
            "seconds": self.seconds,
            "alpha": self.alpha,
            "threat_models": {tm: dict(e) for tm, e in self.threat_models.items()},
        }
        if self.robustness is not None:
            out["robustness"] = [dict(r) for r in self.robustness]
        return out | dict(self.extra)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "the report") -> "StudyReport":
        """A report of any schema version up to :data:`SCHEMA_VERSION` (an older one is migrated)."""
        if not isinstance(data, Mapping):
            raise DataError(f"{where} is a {type(data).__name__}, not a study report object")
        data = as_json(data)  # as report.json holds it, so a report built in memory equals the one read back
        version = data.get("schema_version", 1)
        if not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
            raise DataError(
                f"{where} has schema_version {version!r}; this lensteer reads 1 to {SCHEMA_VERSION} "
                "(upgrade lensteer to read a newer report)"
            )
        if version == 1:
            data = migrate_v1(data)
        missing = [k for k in _REPORT_KEYS if k not in data]
        if missing:
            raise DataError(f"{where} lacks {missing}; it is not a study report")
        robustness = data.get("robustness")
        return cls(
            **{k: data[k] for k in _REPORT_KEYS},
            robustness=None if robustness is None else tuple(robustness),
            extra={k: v for k, v in data.items() if k not in _REPORT_KEYS and k != "robustness"},
        )

    def to_json(self, path: "str | Path | None" = None) -> str:
        """The report as JSON text; with ``path``, also written there atomically."""
        if path is not None:
            write_json(path, self.to_dict())
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, source: "str | Path") -> "StudyReport":
        """The report in the file ``source`` (a :class:`~pathlib.Path`) or in the JSON text ``source``."""
        if isinstance(source, Path):
            return cls.from_dict(read_json(source, what="study report"), where=str(source))
        try:
            data = json.loads(source)
        except json.JSONDecodeError as err:
            raise DataError(f"the study report text is not JSON: {err}") from err
        return cls.from_dict(data)

    def entry(self, threat_model: str) -> Mapping[str, Any]:
        """One threat model's entry; a :class:`DataError` naming the threat models the report has."""
        if threat_model not in self.threat_models:
            raise DataError(
                f"the report has no threat model {threat_model!r}; it has {list(self.threat_models)}"
            )
        return self.threat_models[threat_model]

    def chosen_layers(self) -> dict[str, int | None]:
        """Each threat model's chosen (steering) layer."""
        return {tm: e.get("layer") for tm, e in self.threat_models.items()}

    def with_robustness(self, rows: Sequence[Mapping[str, Any]]) -> "StudyReport":
        return replace(self, robustness=tuple(rows))

    # read access like the JSON object, for code written against report.json
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


_REPORT_KEYS = (
    "schema_version",
    "lensteer_version",
    "model",
    "config",
    "matched_kl_budget",
    "seconds",
    "alpha",
    "threat_models",
)


def migrate_v1(data: Mapping[str, Any]) -> dict[str, Any]:
    """A report written before schema 2 as a schema-2 report: the Holm-adjusted p-values are added beside
    the raw ones (from the raw ones, within each threat model, as :func:`~lensteer.study.report.build_report`
    does); nothing that was written changes."""
    from lensteer.study.families import add_holm  # the family of tests the report adjusts

    out = as_json(dict(data))  # a deep copy, plain JSON
    out["schema_version"] = SCHEMA_VERSION
    out["threat_models"] = {tm: add_holm(e) for tm, e in out.get("threat_models", {}).items()}
    return out
