"""The study on Ray: ``lensteer run --executor ray``, on a laptop, a multi-GPU box or a Ray cluster.

The study runs as **cells** (:mod:`lensteer.study.cells`): per threat model, one cell locates it and
builds its steerings; then each block of its conditions is a cell (calibrate their steerings, evaluate
them), so N workers share a sweep of layers, budgets and seeds instead of three threat models; last, one
cell computes its robustness rows. Each Ray actor loads the model once (one actor per GPU where the
cluster has GPUs) and runs cells in a scratch folder on its own node. Each finished cell's files,
rows and examples come back to the driver, which merges them into OUT (``cells/<tm>/`` keeps what was
located and the built steerings; the rows go into ``results.json`` in a serial run's order, the
calibrated steerings into ``steerings/``) as each cell arrives, marks a threat model finished once its
last cell is in, then writes ``report.json`` as the serial runner does.

* A cell finished on any worker is never recomputed: it is merged into OUT on arrival, and a rerun
  into the same OUT runs only what is missing (a threat model not located, conditions without a row,
  robustness settings not there), reloading the calibrated steerings that are.
* A killed worker loses no finished cell: Ray restarts the actor (which loads the model again) and
  retries its cell, which resumes from what it had written to that node's scratch folder.
* The merged table equals a serial run's: a cell's numbers depend on the config, the model and what it
  is sent only (the evaluation sets and every seed are the same whichever cells run beside it, and the
  grouping of conditions into blocks changes no number).

Ray is an optional extra (``pip install 'lensteer[ray]'``); nothing else imports this module.
"""

import hashlib
import json
import math
import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypedDict, Unpack

import torch
from tqdm.auto import tqdm

from lensteer.core.models import load_model
from lensteer.core.options import settings_from
from lensteer.core.outdir import claim_folder
from lensteer.errors import ConfigError, DataError, LensteerError
from lensteer.study.cells import Task, TaskResult, run_task
from lensteer.study.config import StudyConfig
from lensteer.study.folder import RunFolder
from lensteer.study.identity import (
    STUDY_COMPANIONS,
    STUDY_MARKERS,
    claim_identity,
    read_identity,
    study_identity,
)
from lensteer.study.merging import Merger, _cell_finished, _read_files, _write_files, confined, merge_cell
from lensteer.study.plan import plan_conditions
from lensteer.study.runner import CONDITIONS_PER_BLOCK, StudyResult, write_report

__all__ = ["CellError", "CellWorker", "WorkerSpec", "confined", "run_study_distributed"]

CELL_TIMEOUT_S = 24 * 3600.0  # default longest wait for the next cell (a paper cell is hours on CPUs)
RAY_MISSING = "--executor ray needs Ray, an optional extra: pip install 'lensteer[ray]'"


class CellError(LensteerError, RuntimeError):
    """Cells that failed on their workers (every other cell is merged; a rerun retries these)."""


@dataclass(frozen=True, kw_only=True)
class WorkerSpec:
    """How a worker loads the model itself (sent by value: it may be on another machine).

    Attributes:
        model: What :func:`~lensteer.core.models.load_model` takes, as the workers see it: a Hugging
            Face id, a model folder or a ``.gguf`` path; ``None``: the embedded model.
        threads: Torch threads per worker.
        gpu: Load the model on the worker's GPU (Ray gives each worker one).
    """

    model: str | None
    threads: int = 1
    gpu: bool = False


def _worker_log(line: str) -> None:
    print(line, flush=True)  # noqa: T201  (Ray forwards a worker's stdout to the driver)


class CellWorker:
    """A Ray actor: loads the model once, then runs cells with ``run_cell``
    (:func:`~lensteer.study.cells.run_task`), keeping the evaluation sets between them."""

    def __init__(self, spec: WorkerSpec, run_cell: Callable[..., Any]) -> None:
        torch.set_num_threads(spec.threads)
        self.model = load_model(spec.model, device="cuda" if spec.gpu else None)
        self.run_cell = run_cell
        self.cache: dict[str, Any] = {}

    def run(
        self, config: StudyConfig, task: Task, scratch: str | None, key: str, seed: dict[str, bytes]
    ) -> TaskResult:
        """Run one cell in ``<scratch or the node's temp dir>/lensteer-cells/<cell>-<key>``, seeded with
        ``seed`` (the files of OUT it needs), and return its result with every file it wrote or changed.
        The folder is kept until the cell finishes, so a restarted worker on the same node resumes it."""
        work = Path(scratch or tempfile.gettempdir()) / "lensteer-cells" / f"{task.slug}-{key}"
        _write_files(work, seed)
        result: TaskResult = self.run_cell(self.model, config, task, work, cache=self.cache, log=_worker_log)
        files = {name: data for name, data in _read_files(work).items() if seed.get(name) != data}
        shutil.rmtree(work, ignore_errors=True)
        return replace(result, files=files, host=socket.gethostname())


def _cell_key(folder: Path, model: str | None, config: StudyConfig) -> str:
    """Names a cell's scratch folder: the same study into the same OUT resumes there, any other does not."""
    study = {k: v for k, v in config.to_dict().items() if k != "threat_models"}
    text = json.dumps([str(folder.resolve()), model, study], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise ConfigError(RAY_MISSING) from err
    return ray


class DistributedOptions(TypedDict, total=False):
    """The keyword options of :func:`run_study_distributed` (see :class:`DriverSettings`)."""

    address: str | None
    workers: int | None
    threads: int | None
    retries: int
    scratch: str | None
    progress: bool
    log: Callable[[str], None]
    run_cell: Callable[..., Any]
    force: bool
    cell_timeout_s: float
    block_size: int | None


@dataclass(frozen=True, kw_only=True)
class DriverSettings:
    """How the driver runs the cells: :class:`DistributedOptions` with their defaults."""

    address: str | None = None
    workers: int | None = None
    threads: int | None = None
    retries: int = 3
    scratch: str | None = None
    progress: bool = True
    log: Callable[[str], None] = print
    run_cell: Callable[..., Any] = run_task
    force: bool = False
    cell_timeout_s: float = CELL_TIMEOUT_S
    block_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("workers", "threads", "block_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1 (or absent: {_DEFAULTS[name]}), got {value}")
        if not self.cell_timeout_s > 0:
            raise ConfigError(f"cell_timeout_s must be > 0 seconds, got {self.cell_timeout_s!r}")


_DEFAULTS = {
    "workers": "one per GPU, else per CPU",
    "threads": "the CPUs shared among the workers",
    "block_size": "about two blocks per worker",
}


def run_study_distributed(
    model: str | None, config: StudyConfig, out: "str | Path", **options: Unpack[DistributedOptions]
) -> StudyResult:
    """Run the study as cells on Ray workers (:mod:`lensteer.study.cells`: locate each threat model,
    then blocks of its conditions, then its robustness rows) and merge each into ``out`` as it arrives;
    the files are those of :func:`~lensteer.study.runner.run_study` (plus ``cells/``), and so is resuming.

    Args:
        model: The model as every worker can load it (HF id, folder or ``.gguf`` on a shared path;
            ``None``: the embedded model); the driver never loads it.
        **options: The driver's options (:class:`DriverSettings`):
            address: A running Ray cluster (``ray start --head`` prints it; ``"auto"``: the local node's);
                ``None``: the Ray this process already joined, ``RAY_ADDRESS``, or a new local one.
            workers: Actors to start (each loads the model once); default one per GPU where the cluster
                has GPUs, else one per CPU (``threads`` each); never more than there are conditions to run.
            threads: Torch threads per worker (default: the cluster's CPUs shared among the workers).
            retries: How often Ray restarts a dead worker and retries its cell.
            scratch: Where workers keep unfinished cells (default: each node's temp dir).
            run_cell: What a worker runs for one cell (tests wrap :func:`~lensteer.study.cells.run_task`).
            force: Start afresh in an OUT of another study identity (its results moved aside).
            cell_timeout_s: The longest wait for the next cell to finish; past it the run stops with a
                :class:`CellError` (finished cells stay merged).
            block_size: Conditions per block cell (default: about two blocks per worker, at most
                :data:`~lensteer.study.runner.CONDITIONS_PER_BLOCK`); the rows do not depend on it.

    OUT is guarded and locked as :func:`run_study`'s is. The driver never loads the model, so it checks
    the identity in two steps: config, data and version before any cell runs, the model (with its
    weights hash) as each cell's ``study.json`` comes back.

    Raises:
        ConfigError: Ray is not installed (``pip install 'lensteer[ray]'``), an argument is out of range,
            or OUT holds another study.
        CellError: Some cells failed on their workers (the others are merged and a rerun retries these),
            or no cell finished within ``cell_timeout_s``.
    """
    driver = settings_from(DriverSettings, options, what="run_study_distributed")
    with claim_folder(out, STUDY_MARKERS, "study", STUDY_COMPANIONS) as folder:
        claim_identity(
            folder, study_identity(config, {}), force=driver.force, log=driver.log, skip=("model",)
        )
        return _run_distributed(model, config, RunFolder(folder), driver)


def _run_distributed(
    model: str | None, config: StudyConfig, run: RunFolder, driver: DriverSettings
) -> StudyResult:
    log = driver.log
    earlier = run.timing()
    merger = Merger(
        run=run,
        config=config,
        log=log,
        stages=dict(earlier.get("stages", {})),
        earlier_seconds=float(earlier["seconds"]),
    )
    pending = []
    for tm in config.threat_models:
        kept = run.kept(tm, config)
        if kept is None and _cell_finished(run, tm, config):
            log(f"[{tm}] finished on its own in an earlier run (OUT/cells/{tm}); merged")
            kept = merge_cell(run, tm, config, merger.table, merger.robust)
        if kept is None:
            pending.append(tm)
        else:
            log(f"[{tm}] finished in an earlier run with this config; kept")
            merger.finished[tm] = kept
    # a local folder or file goes to the workers as an absolute path (their working directory may differ)
    spec = WorkerSpec(
        model=str(Path(model).resolve()) if model is not None and Path(model).exists() else model
    )
    if pending:
        spec, failed = _run_cells(spec, pending, merger, driver)
        if failed:
            raise CellError(
                f"cell(s) {sorted(failed)} failed on their workers: "
                + "; ".join(f"{name}: {err}" for name, err in sorted(failed.items()))
                + f". Every other cell is merged into {run.root}; rerun the same command to retry these."
            )
    merger.threads = spec.threads
    seconds = merger.write_timing()
    identity = read_identity(run.root)
    report = write_report(
        run,
        merger.table.rows,
        merger.robust.rows,
        config,
        {tm: merger.finished[tm] for tm in config.threat_models},
        dict(identity["model"]) if identity is not None else {"name": spec.model},
        seconds=seconds,
    )
    return StudyResult(folder=run.root, report=report, table=merger.table.to_frame())


def _plan(
    ray: Any, spec: WorkerSpec, cells: int, workers: int | None, threads: int | None
) -> tuple[int, WorkerSpec]:
    """How many workers, each with what: one GPU where the cluster has GPUs, else its share of the CPUs."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    n = min(cells, workers or gpus or max(1, cpus // (threads or 1)))
    spec = replace(spec, gpu=gpus > 0, threads=threads or (1 if gpus else max(1, cpus // n)))
    widest = max(
        (int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node.get("Alive")), default=0
    )
    if spec.threads > widest:
        raise ConfigError(
            f"threads {spec.threads} per worker: no node of this Ray cluster has that many CPUs "
            f"(the largest has {widest}), so no worker could start; ask for at most {widest}"
        )
    return n, spec


def default_block_size(conditions: int, workers: int) -> int:
    """About two blocks per worker (a worker that finishes early takes another), never more conditions
    than the serial runner decodes together (:data:`~lensteer.study.runner.CONDITIONS_PER_BLOCK`)."""
    return max(1, min(CONDITIONS_PER_BLOCK, math.ceil(conditions / (2 * workers))))


def _conditions_to_run(config: StudyConfig, pending: list[str]) -> int:
    """An upper bound on the evaluated conditions of ``pending`` (before they are located)."""
    per_tm = [p for p in plan_conditions(config, 0, 1 << 20) if p.twin_of is None]
    return max(1, len(per_tm) * len(pending))


def _run_cells(
    spec: WorkerSpec, pending: list[str], merger: "Merger", driver: DriverSettings
) -> tuple[WorkerSpec, dict[str, str]]:
    """Start (or join) Ray, run the cells of ``pending`` on fresh workers, merge each as it arrives;
    returns the workers' spec and the error of each failed cell."""
    ray = _import_ray()
    own_ray = not ray.is_initialized()
    if own_ray:
        ray.init(address=driver.address)
    actors: list[Any] = []
    bar = tqdm(total=0, desc="cells", disable=not driver.progress, unit="cell")
    try:
        conditions = _conditions_to_run(merger.config, pending)
        n, spec = _plan(ray, spec, conditions, driver.workers, driver.threads)
        merger.threads = spec.threads
        merger.block_size = driver.block_size or default_block_size(conditions, n)
        driver.log(
            f"ray: {n} worker(s) for {len(pending)} threat model(s) ({', '.join(pending)}), "
            f"{merger.block_size} condition(s) per block, "
            f"{'one GPU' if spec.gpu else f'{spec.threads} CPU thread(s)'} each"
        )
        actor_class = ray.remote(CellWorker).options(
            num_cpus=spec.threads,
            num_gpus=1 if spec.gpu else 0,
            max_restarts=driver.retries,
            max_task_retries=driver.retries,
        )
        actors += [actor_class.remote(spec, driver.run_cell) for _ in range(n)]
        queue = [task for tm in pending for task in merger.next_cells(tm)]
        bar.total = len(queue)
        key = _cell_key(merger.run.root, spec.model, merger.config)
        failed = _Loop(ray=ray, merger=merger, driver=driver, bar=bar, key=key).run(actors, queue)
    finally:
        bar.close()
        for actor in actors:
            ray.kill(actor)
        if own_ray:
            ray.shutdown()
    return spec, failed


@dataclass(kw_only=True)
class _Loop:
    """Hands queued cells to idle workers and merges each finished one (which may queue more)."""

    ray: Any
    merger: "Merger"
    driver: DriverSettings
    bar: Any
    key: str  # names the cells' scratch folders (:func:`_cell_key`)

    def run(self, actors: list[Any], queue: list[Task]) -> dict[str, str]:
        """Run ``queue`` (and what finishing its cells queues) on ``actors``; each failed cell's error."""
        ray, merger, driver = self.ray, self.merger, self.driver
        key = self.key
        alive, idle = list(actors), list(actors)
        running: dict[Any, tuple[Any, Task]] = {}
        failed: dict[str, str] = {}
        while queue or running:
            while queue and idle:
                actor, task = idle.pop(0), queue.pop(0)
                seed = merger.seed(task)
                running[actor.run.remote(merger.config, task, driver.scratch, key, seed)] = (actor, task)
            if not running:  # cells left and no worker alive
                failed |= {task.name: "no worker left" for task in queue}
                break
            ready, _ = ray.wait(list(running), num_returns=1, timeout=driver.cell_timeout_s)
            if not ready:
                raise CellError(
                    f"no cell finished within {driver.cell_timeout_s:g} s (still running: "
                    f"{', '.join(sorted(t.name for _, t in running.values()))}); the finished cells are "
                    f"merged into {merger.run.root}. Check the workers (`ray status`), then rerun, with a "
                    "larger cell_timeout_s if the cells are that slow"
                )
            actor, task = running.pop(ready[0])
            try:
                result: TaskResult = ray.get(ready[0])
            except ray.exceptions.RayActorError as err:  # the worker died more often than ``retries``
                failed[task.name] = f"worker died: {err}".splitlines()[0]
                merger.give_up(task)
                alive.remove(actor)
                continue
            except ray.exceptions.RayError as err:  # the cell raised
                failed[task.name] = str(err).strip().splitlines()[-1]
                merger.give_up(task)
            else:
                if result.task != task:
                    raise DataError(f"the worker running cell {task.name!r} returned {result.task.name!r}")
                more = merger.merge(result)
                driver.log(f"[{task.name}] finished on {result.host}; merged into {merger.run.root}")
                self.bar.total += len(more)
                self.bar.update(1)
                # locating and robustness unblock or finish a threat model: before the blocks queued
                queue[:0] = [t for t in more if t.kind != "block"]
                queue += [t for t in more if t.kind == "block"]
            idle.append(actor)
        return failed
