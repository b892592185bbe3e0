"""A study's run folder: the one place that knows its layout.

``lensteer run --out OUT`` (serial or on Ray), ``lensteer report`` and the figures all read and write
OUT through a :class:`RunFolder`::

    OUT/study.json          the study's identity (lensteer.study.identity)
    OUT/results.json|.csv   one row per condition (ConditionResult), written as each block finishes
    OUT/robustness.json     the robustness rows
    OUT/finished.json       the resume markers: threat models finished, with the config and what was located
    OUT/examples.json       example answers per threat model and condition
    OUT/timing.json         wall seconds summed over every (resumed) run into the folder (on Ray, rewritten
                            as each cell merges: a run cut short keeps the time up to its last merge)
    OUT/report.json         the report (StudyReport)
    OUT/steerings/          the calibrated steerings (safetensors + JSON), named by cell and identity
    OUT/cells/<tm>/         on Ray, per threat model: located.json (located, steerings built), built/ (those
                            uncalibrated steerings), held.json (rows waiting for the baseline's row), study.json
                            (the workers' identity); or a whole threat model run serially into it, a run folder

Every write is atomic (:mod:`lensteer.core.io`), so an interrupted run leaves whole files only.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lensteer.core.io import read_json, write_json
from lensteer.study.config import StudyConfig
from lensteer.study.identity import config_key
from lensteer.study.records import StudyReport

if TYPE_CHECKING:  # the tables import this module's file names
    from lensteer.study.robustness import RobustnessTable
    from lensteer.study.table import SweepTable

REPORT_FILE = "report.json"
RESULTS_FILE = "results.json"
RESULTS_CSV = "results.csv"
ROBUSTNESS_FILE = "robustness.json"
FINISHED_FILE = "finished.json"  # threat models done, with the config they were done under
EXAMPLES_FILE = "examples.json"
TIMING_FILE = "timing.json"  # wall seconds summed over every (resumed) run into a folder
STEERINGS_DIR = "steerings"
CELLS_DIR = "cells"
LOCATED_FILE = "located.json"  # on Ray, in OUT/cells/<tm>/: located under this config, steerings built
BUILT_DIR = "built"  # on Ray, in OUT/cells/<tm>/: the uncalibrated steerings locate built, per layer
HELD_FILE = "held.json"  # on Ray, in OUT/cells/<tm>/: evaluated rows waiting for the baseline's row
MARKER_FILES = (FINISHED_FILE, LOCATED_FILE)  # say that what they describe is complete: written last


@dataclass(frozen=True)
class RunFolder:
    """The files of one study run in ``root`` (see the module docstring for the layout)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # -- paths ------------------------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        """``root / name`` for one of the folder's files (``REPORT_FILE`` ...)."""
        return self.root / name

    @property
    def report_path(self) -> Path:
        return self.root / REPORT_FILE

    @property
    def results_path(self) -> Path:
        return self.root / RESULTS_FILE

    @property
    def steerings(self) -> Path:
        return self.root / STEERINGS_DIR

    def cell(self, threat_model: str) -> "RunFolder":
        """The run folder of a Ray cell of ``threat_model`` (``OUT/cells/<tm>``)."""
        return RunFolder(self.root / CELLS_DIR / threat_model)

    def steering_path(
        self, threat_model: str, method: str, kl_budget: float | None, layer: int, identity: str
    ) -> Path:
        """Where the study saves a steering (a stem for :func:`~lensteer.save_steering`): its threat model,
        method, KL budget (``None``: the paper regime, uncalibrated), layer and the study identity's hash
        (:mod:`lensteer.study.identity`) in the name, so a rerun reloads a file only for the same cell of
        the same study."""
        budget = "paper" if kl_budget is None else f"kl{kl_budget:g}"
        return self.steerings / f"{threat_model}_{method}_{budget}_L{layer}_{identity}"

    def legacy_steering_path(self, threat_model: str, method: str, kl_budget: float | None) -> Path:
        """Where a folder written before ``study.json`` existed saved a steering."""
        name = (
            f"{threat_model}_{method}_paper"
            if kl_budget is None
            else f"{threat_model}_{method}_kl{kl_budget:g}"
        )
        return self.steerings / name

    def built_path(self, threat_model: str, layer: int, method: str) -> Path:
        """Where the Ray executor keeps the uncalibrated steering of ``method`` that locate built at
        ``layer`` (a stem for :func:`~lensteer.save_steering`)."""
        return self.root / CELLS_DIR / threat_model / BUILT_DIR / f"L{layer}_{method}"

    # -- reading and writing ----------------------------------------------------------------------------
    def read(self, name: str, default: Any) -> Any:
        """The JSON object in ``name``, or ``default`` if there is no such file (a fresh folder); a
        half-written or foreign file is a :class:`~lensteer.errors.DataError` naming it."""
        path = self.path(name)
        return read_json(path, what="study file") if path.exists() else default

    def write(self, name: str, payload: Any) -> Path:
        """Write ``payload`` as JSON to ``name`` atomically."""
        return write_json(self.path(name), payload)

    def read_report(self) -> StudyReport:
        """``report.json`` (migrated if an older lensteer wrote it)."""
        return StudyReport.from_json(self.report_path)

    def write_report(self, report: StudyReport) -> StudyReport:
        report.to_json(self.report_path)
        return report

    def table(self) -> "SweepTable":
        """The results table (``results.json`` + ``results.csv``)."""
        from lensteer.study.table import SweepTable

        return SweepTable(self.root)

    def robustness(self) -> "RobustnessTable":
        """The robustness table (``robustness.json``)."""
        from lensteer.study.robustness import RobustnessTable

        return RobustnessTable(self.root)

    # -- resume markers ---------------------------------------------------------------------------------
    def finished(self) -> dict[str, Any]:
        """``finished.json``: per finished threat model, the config it finished under and what was located."""
        done: dict[str, Any] = self.read(FINISHED_FILE, {})
        return done

    def finished_under(self, threat_model: str, config: StudyConfig) -> dict[str, Any] | None:
        """What was located for ``threat_model`` if a run finished it under this config, else ``None``."""
        done = self.finished().get(threat_model)
        if done is None or done["config"] != config_key(config):
            return None
        located: dict[str, Any] = done["located"]
        return located

    def kept(self, threat_model: str, config: StudyConfig) -> dict[str, Any] | None:
        """What was located for ``threat_model`` if a run finished it under this config and every robustness
        setting of it is on disk, so it is kept whole; ``None`` if it must (still) run."""
        from lensteer.study.robustness import settings_for

        located = self.finished_under(threat_model, config)
        if located is None:
            return None
        robust, layer = self.robustness(), located.get("layer")
        settings = settings_for(threat_model, config.robustness)
        if not all(robust.has(s, threat_model, layer, config.kl_budgets[0]) for s in settings):
            return None
        return located

    def mark_finished(self, threat_model: str, config: StudyConfig, located: dict[str, Any]) -> None:
        """Record ``threat_model`` as finished under this config (a resume keeps it); other entries stay."""
        finished = self.finished()
        finished[threat_model] = {"config": config_key(config), "located": located}
        self.write(FINISHED_FILE, finished)

    def located(self, threat_model: str, config: StudyConfig) -> dict[str, Any] | None:
        """On Ray: ``{"located": ..., "n_layers": ...}`` if ``threat_model`` was located under this config
        and its steerings built (``OUT/cells/<tm>/located.json``), else ``None``."""
        done = self.cell(threat_model).read(LOCATED_FILE, None)
        if done is None or done["config"] != config_key(config):
            return None
        return {"located": done["located"], "n_layers": int(done["n_layers"])}

    def mark_located(
        self, threat_model: str, config: StudyConfig, located: dict[str, Any], n_layers: int
    ) -> None:
        """Record ``threat_model`` as located under this config, its steerings built (:meth:`built_path`)."""
        record = {"config": config_key(config), "located": located, "n_layers": n_layers}
        self.cell(threat_model).write(LOCATED_FILE, record)

    def timing(self) -> dict[str, Any]:
        """``timing.json``: wall seconds of the earlier runs into this folder (and per stage; 0 if fresh)."""
        found: dict[str, Any] = self.read(TIMING_FILE, {"seconds": 0.0})
        return found

    def seconds(self) -> float:
        """Wall seconds of the earlier runs into this folder (``timing.json``; 0 in a fresh folder)."""
        return float(self.timing()["seconds"])

    def write_timing(self, seconds: float, threads: int, **extra: Any) -> None:
        self.write(TIMING_FILE, {"seconds": seconds, "threads": threads, **extra})

    def examples(self) -> dict[str, Any]:
        found: dict[str, Any] = self.read(EXAMPLES_FILE, {})
        return found

    def add_examples(self, threat_model: str, examples: dict[str, Any]) -> None:
        """Merge one threat model's examples into ``examples.json`` (re-read first: one writer at a time)."""
        everything = self.examples()
        everything.setdefault(threat_model, {}).update(examples)
        self.write(EXAMPLES_FILE, everything)
