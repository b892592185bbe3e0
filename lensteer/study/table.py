"""The study's results table: one :class:`~lensteer.study.records.ConditionResult` per (threat model, method,
KL budget, layer), written after every cell, so an interrupted sweep resumes where it stopped and never
loses a finished cell.
"""

from pathlib import Path
from typing import Any

from lensteer.core.io import rows_of, write_json, write_with
from lensteer.study.folder import RESULTS_CSV, RESULTS_FILE
from lensteer.study.records import ROW_KEY, ConditionResult, results_of

__all__ = ["ROW_KEY", "SweepTable"]


class SweepTable:
    """The tidy results table on disk (``results.json`` rows + ``results.csv``), resumable.

    Every finished cell is written at once (atomically), so an interrupted sweep loses nothing;
    :meth:`has` tells the runner which cells to skip on the next run.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / RESULTS_FILE
        self.rows: list[ConditionResult] = (
            results_of(rows_of(self.path, "results file"), str(self.path)) if self.path.exists() else []
        )

    def has(self, threat_model: str, method: str, kl_budget: float | None, layer: int | None) -> bool:
        return any(r.key == (threat_model, method, kl_budget, layer) for r in self.rows)

    def get(
        self, threat_model: str, method: str, kl_budget: float | None, layer: int | None
    ) -> ConditionResult:
        return next(r for r in self.rows if r.key == (threat_model, method, kl_budget, layer))

    def add(self, row: ConditionResult) -> None:
        """Add (or replace) one row and write the table."""
        self.set_rows([r for r in self.rows if r.key != row.key] + [row])

    def set_rows(self, rows: list[ConditionResult]) -> None:
        """Replace every row and write the table once (the Ray driver's merge)."""
        self.rows = list(rows)
        write_json(self.path, {"rows": [r.to_dict() for r in self.rows]})
        write_with(self.folder / RESULTS_CSV, lambda tmp: self.to_frame().to_csv(tmp, index=False))

    def to_frame(self) -> Any:
        """The table as a pandas DataFrame (flat columns; CIs as ``*_lo`` / ``*_hi``)."""
        import pandas as pd

        flat = []
        for r in (row.to_dict() for row in self.rows):
            row = {k: v for k, v in r.items() if not isinstance(v, (list, dict))}
            for k, v in r.items():
                if isinstance(v, list) and len(v) == 2 and k.endswith("_ci"):
                    row[f"{k[:-3]}_lo"], row[f"{k[:-3]}_hi"] = v
            flat.append(row)
        return pd.DataFrame(flat)
