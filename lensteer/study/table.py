"""The study's results table: one row per (threat model, method, KL budget, layer), written after every
cell, so an interrupted sweep resumes where it stopped and never loses a finished cell.
"""

from pathlib import Path
from typing import Any

from lensteer.core.io import rows_of, write_json, write_with

ROW_KEY = ("threat_model", "method", "kl_budget", "layer")


class SweepTable:
    """The tidy results table on disk (``results.json`` rows + ``results.csv``), resumable.

    Every finished cell is written at once (atomically), so an interrupted sweep loses nothing;
    :meth:`has` tells the runner which cells to skip on the next run.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / "results.json"
        self.rows: list[dict[str, Any]] = rows_of(self.path, "results file") if self.path.exists() else []

    @staticmethod
    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(row[k] for k in ROW_KEY)

    def has(self, threat_model: str, method: str, kl_budget: float | None, layer: int | None) -> bool:
        return any(self.key(r) == (threat_model, method, kl_budget, layer) for r in self.rows)

    def get(
        self, threat_model: str, method: str, kl_budget: float | None, layer: int | None
    ) -> dict[str, Any]:
        return next(r for r in self.rows if self.key(r) == (threat_model, method, kl_budget, layer))

    def add(self, row: dict[str, Any]) -> None:
        self.rows = [r for r in self.rows if self.key(r) != self.key(row)] + [row]
        write_json(self.path, {"rows": self.rows})
        write_with(self.folder / "results.csv", lambda tmp: self.to_frame().to_csv(tmp, index=False))

    def to_frame(self) -> Any:
        """The table as a pandas DataFrame (flat columns; CIs as ``*_lo`` / ``*_hi``)."""
        import pandas as pd

        flat = []
        for r in self.rows:
            row = {k: v for k, v in r.items() if not isinstance(v, (list, dict))}
            for k, v in r.items():
                if isinstance(v, list) and len(v) == 2 and k.endswith("_ci"):
                    row[f"{k[:-3]}_lo"], row[f"{k[:-3]}_hi"] = v
            flat.append(row)
        return pd.DataFrame(flat)
