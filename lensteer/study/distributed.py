"""The study on Ray: ``lensteer run --executor ray``, on a laptop, a multi-GPU box or a Ray cluster.

A **cell** is one threat model, the unit the serial runner resumes on (located, calibrated and
evaluated together). Each Ray actor loads the model once (one actor per GPU where the cluster has
GPUs) and runs cells: :func:`~lensteer.study.runner.run_study` on a one-threat-model config, in a
scratch folder on its own node. The finished cell's files come back to the driver, which writes them
into ``OUT/cells/<threat model>/`` and merges them into OUT's tables (results, robustness, examples,
steerings, ``finished.json``) as each cell arrives, then writes ``report.json`` as the serial runner does.

* A cell finished on any worker is never recomputed: it is on the driver's disk before it is merged,
  and a rerun into the same OUT skips it (``finished.json``), or merges it first if the driver stopped
  in between.
* A killed worker loses no finished cell: Ray restarts the actor (which loads the model again) and
  retries its cell, which resumes from what it had written to that node's scratch folder.
* The merged table equals a serial run's: a threat model's rows depend on the config and the model
  only (the evaluation sets and every seed are the same whichever threat models run beside it).

Ray is an optional extra (``pip install 'lensteer[ray]'``); nothing else imports this module.
"""

import hashlib
import json
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lensteer.core.io import write_with
from lensteer.core.models import load_model
from lensteer.core.outdir import claim_folder
from lensteer.errors import ConfigError, DataError, LensteerError
from lensteer.study.config import StudyConfig
from lensteer.study.folder import FINISHED_FILE, REPORT_FILE, RunFolder
from lensteer.study.identity import (
    STUDY_COMPANIONS,
    STUDY_MARKERS,
    adopt_identity,
    claim_identity,
    study_identity,
)
from lensteer.study.robustness import RobustnessTable
from lensteer.study.runner import StudyResult, run_study, write_report
from lensteer.study.table import SweepTable

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


@dataclass(frozen=True, kw_only=True)
class CellFiles:
    """A finished cell: every file of its folder (relative POSIX path -> bytes) and where it ran."""

    threat_model: str
    files: dict[str, bytes]
    host: str


def _read_files(folder: Path) -> dict[str, bytes]:
    return (
        {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        if folder.is_dir()
        else {}
    )


def _write_bytes(path: Path, data: bytes) -> None:
    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    write_with(path, write)


def confined(folder: Path, name: str) -> Path:
    """``folder / name`` for a relative POSIX path that stays inside ``folder``; a :class:`DataError` for an
    absolute path, a ``..`` part or anything else that would leave it (a worker's file list is not trusted)."""
    parts = name.split("/")
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise DataError(
            f"a worker sent the file name {name!r} for {folder}: only relative paths inside the "
            "cell folder are allowed (no absolute paths, no '..')"
        )
    return folder / Path(*parts)


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` into ``folder`` atomically, ``finished.json`` last (it says the cell is complete);
    every name is checked first (:func:`confined`), so a bad one writes nothing."""
    paths = {name: confined(folder, name) for name in files}
    for name in sorted(files, key=lambda n: n == FINISHED_FILE):
        _write_bytes(paths[name], files[name])


def _worker_log(line: str) -> None:
    print(line, flush=True)  # noqa: T201  (Ray forwards a worker's stdout to the driver)


class CellWorker:
    """A Ray actor: loads the model once, then runs cells with ``run_cell`` (:func:`run_study`)."""

    def __init__(self, spec: WorkerSpec, run_cell: Callable[..., Any]) -> None:
        torch.set_num_threads(spec.threads)
        self.model = load_model(spec.model, device="cuda" if spec.gpu else None)
        self.run_cell = run_cell

    def run(
        self, config: StudyConfig, threat_model: str, scratch: str | None, key: str, seed: dict[str, bytes]
    ) -> CellFiles:
        """Run one cell in ``<scratch or the node's temp dir>/lensteer-cells/<tm>-<key>``, starting from
        ``seed`` (the driver's copy of the cell), and return its files. The folder is kept until the cell
        finishes, so a restarted worker on the same node resumes it."""
        work = Path(scratch or tempfile.gettempdir()) / "lensteer-cells" / f"{threat_model}-{key}"
        _write_files(work, seed)
        self.run_cell(
            self.model, replace(config, threat_models=(threat_model,)), work, progress=False, log=_worker_log
        )
        files = _read_files(work)
        shutil.rmtree(work, ignore_errors=True)
        return CellFiles(threat_model=threat_model, files=files, host=socket.gethostname())


def _cell_key(folder: Path, model: str | None, config: StudyConfig) -> str:
    """Names a cell's scratch folder: the same study into the same OUT resumes there, any other does not."""
    study = {k: v for k, v in config.to_dict().items() if k != "threat_models"}
    text = json.dumps([str(folder.resolve()), model, study], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _by_threat_model(rows: list[Any], config: StudyConfig, tm_of: Callable[[Any], str]) -> list[Any]:
    """Rows in the config's threat-model order (stable), as a serial run writes them."""
    order = {tm: i for i, tm in enumerate(config.threat_models)}
    return sorted(rows, key=lambda r: order.get(tm_of(r), len(order)))


def _robustness_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (
        r["setting"],
        r["threat_model"],
        r["method"],
        r["direction_from"],
        r.get("layer"),
        r.get("kl_budget"),
    )


def merge_cell(
    run: RunFolder, threat_model: str, config: StudyConfig, table: SweepTable, robust: RobustnessTable
) -> dict[str, Any]:
    """Merge the finished cell in ``OUT/cells/<tm>/`` into OUT (rows by key, robustness rows, examples,
    steerings; ``finished.json`` last) and return what was located for it. Merging twice changes nothing."""
    cell = run.cell(threat_model)
    adopt_identity(run.root, cell.root)
    merged = {r.key: r for r in table.rows} | {r.key: r for r in cell.table().rows}
    table.set_rows(_by_threat_model(list(merged.values()), config, lambda r: r.threat_model))
    mine = cell.robustness().rows
    if mine:
        new = {_robustness_key(r) for r in mine}
        kept, robust.rows = [r for r in robust.rows if _robustness_key(r) not in new], []
        robust.add(_by_threat_model(kept + mine, config, lambda r: r["threat_model"]))
    run.add_examples(threat_model, cell.examples().get(threat_model, {}))
    _write_files(run.steerings, _read_files(cell.steerings))
    located: dict[str, Any] = cell.finished()[threat_model]["located"]
    run.mark_finished(threat_model, config, located)
    return located


def _cell_finished(run: RunFolder, threat_model: str, config: StudyConfig) -> bool:
    """Is ``OUT/cells/<tm>/`` a finished cell of this config (written by a driver that stopped before merging)?"""
    return run.cell(threat_model).kept(threat_model, config) is not None


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise ConfigError(RAY_MISSING) from err
    return ray


def _model_info(run: RunFolder, config: StudyConfig, spec: WorkerSpec) -> dict[str, Any]:
    """The model's fingerprint as the cells recorded it (the driver never loads the model)."""
    for tm in config.threat_models:
        report = run.cell(tm).read(REPORT_FILE, None)
        if report is not None:
            return dict(report["model"])
    earlier = run.read(REPORT_FILE, None)
    return dict(earlier["model"]) if earlier is not None else {"name": spec.model}


def run_study_distributed(
    model: str | None,
    config: StudyConfig,
    out: "str | Path",
    *,
    address: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    retries: int = 3,
    scratch: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    run_cell: Callable[..., Any] = run_study,
    force: bool = False,
    cell_timeout_s: float = CELL_TIMEOUT_S,
) -> StudyResult:
    """Run the study's threat models as cells on Ray workers and merge them into ``out``; the files are
    those of :func:`~lensteer.study.runner.run_study` (plus ``cells/``), and so is resuming.

    Args:
        model: The model as every worker can load it (HF id, folder or ``.gguf`` on a shared path;
            ``None``: the embedded model); the driver never loads it.
        address: A running Ray cluster (``ray start --head`` prints it; ``"auto"``: the local node's);
            ``None``: the Ray this process already joined, ``RAY_ADDRESS``, or a new local one.
        workers: Actors to start (each loads the model once); default one per GPU where the cluster
            has GPUs, else one per CPU (``threads`` each); never more than there are cells to run.
        threads: Torch threads per worker (default: the cluster's CPUs shared among the workers).
        retries: How often Ray restarts a dead worker and retries its cell.
        scratch: Where workers keep unfinished cells (default: each node's temp dir).
        run_cell: What a worker runs for one cell (tests wrap :func:`run_study` to kill a worker).
        force: Start afresh in an OUT of another study identity (its results moved aside).
        cell_timeout_s: The longest wait for the next cell to finish; past it the run stops with a
            :class:`CellError` (finished cells stay merged).

    OUT is guarded and locked as :func:`run_study`'s is. The driver never loads the model, so it checks
    the identity in two steps: config, data and version before any cell runs, the model (with its
    weights hash) as each cell's ``study.json`` comes back.

    Raises:
        ConfigError: Ray is not installed (``pip install 'lensteer[ray]'``), an argument is out of range,
            or OUT holds another study.
        CellError: Some cells failed on their workers (the others are merged and a rerun retries these),
            or no cell finished within ``cell_timeout_s``.
    """
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be >= 1 (or absent: one per GPU, else per CPU), got {workers}")
    if threads is not None and threads < 1:
        raise ConfigError(
            f"threads must be >= 1 (or absent: the CPUs shared among the workers), got {threads}"
        )
    if not cell_timeout_s > 0:
        raise ConfigError(f"cell_timeout_s must be > 0 seconds, got {cell_timeout_s!r}")
    with claim_folder(out, STUDY_MARKERS, "study", STUDY_COMPANIONS) as folder:
        claim_identity(folder, study_identity(config, {}), force=force, log=log, skip=("model",))
        driver = _Driver(
            address=address,
            workers=workers,
            threads=threads,
            retries=retries,
            scratch=scratch,
            progress=progress,
            log=log,
            run_cell=run_cell,
            cell_timeout_s=cell_timeout_s,
        )
        return _run_distributed(model, config, RunFolder(folder), driver)


@dataclass(frozen=True, kw_only=True)
class _Driver:
    """How the driver runs the cells (:func:`run_study_distributed`'s arguments of that name)."""

    address: str | None
    workers: int | None
    threads: int | None
    retries: int
    scratch: str | None
    progress: bool
    log: Callable[[str], None]
    run_cell: Callable[..., Any]
    cell_timeout_s: float = CELL_TIMEOUT_S


def _run_distributed(model: str | None, config: StudyConfig, run: RunFolder, driver: _Driver) -> StudyResult:
    log = driver.log
    started = time.time()
    earlier_seconds = run.seconds()
    table, robust = run.table(), run.robustness()
    located: dict[str, Any] = {}
    pending = []
    for tm in config.threat_models:
        kept = run.kept(tm, config)
        if kept is None and _cell_finished(run, tm, config):
            log(f"[{tm}] finished on a worker in an earlier run; merged")
            kept = merge_cell(run, tm, config, table, robust)
        if kept is None:
            pending.append(tm)
        else:
            log(f"[{tm}] finished in an earlier run with this config; kept")
            located[tm] = kept
    # a local folder or file goes to the workers as an absolute path (their working directory may differ)
    spec = WorkerSpec(
        model=str(Path(model).resolve()) if model is not None and Path(model).exists() else model
    )
    if pending:
        spec, done, failed = _run_cells(spec, pending, config, run, table, robust, driver)
        located |= done
        if failed:
            raise CellError(
                f"threat model(s) {sorted(failed)} failed on their workers: "
                + "; ".join(f"{tm}: {err}" for tm, err in sorted(failed.items()))
                + f". Every other cell is merged into {run.root}; rerun the same command to retry these."
            )
    seconds = earlier_seconds + time.time() - started
    run.write_timing(seconds, spec.threads, executor="ray")
    report = write_report(
        run,
        table.rows,
        robust.rows,
        config,
        {tm: located[tm] for tm in config.threat_models},
        _model_info(run, config, spec),
        seconds=seconds,
    )
    return StudyResult(folder=run.root, report=report, table=table.to_frame())


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


def _run_cells(
    spec: WorkerSpec,
    pending: list[str],
    config: StudyConfig,
    run: RunFolder,
    table: SweepTable,
    robust: RobustnessTable,
    driver: _Driver,
) -> tuple[WorkerSpec, dict[str, Any], dict[str, str]]:
    """Start (or join) Ray, run ``pending`` on fresh workers, merge each cell as it arrives; returns the
    workers' spec, what was located per merged cell and the error of each failed one."""
    address, workers, threads, retries = driver.address, driver.workers, driver.threads, driver.retries
    scratch, progress, log, run_cell = driver.scratch, driver.progress, driver.log, driver.run_cell
    cell_timeout_s = driver.cell_timeout_s
    ray = _import_ray()
    own_ray = not ray.is_initialized()
    if own_ray:
        ray.init(address=address)
    actors: list[Any] = []
    bar = tqdm(total=len(pending), desc="cells", disable=not progress, unit="threat model")
    try:
        n, spec = _plan(ray, spec, len(pending), workers, threads)
        log(
            f"ray: {n} worker(s) for {len(pending)} cell(s) ({', '.join(pending)}), "
            f"{'one GPU' if spec.gpu else f'{spec.threads} CPU thread(s)'} each"
        )
        actor_class = ray.remote(CellWorker).options(
            num_cpus=spec.threads,
            num_gpus=1 if spec.gpu else 0,
            max_restarts=retries,
            max_task_retries=retries,
        )
        actors += [actor_class.remote(spec, run_cell) for _ in range(n)]
        key, queue, alive = _cell_key(run.root, spec.model, config), list(pending), list(actors)
        running: dict[Any, tuple[Any, str]] = {}
        located: dict[str, Any] = {}
        failed: dict[str, str] = {}

        def submit(actor: Any) -> None:
            tm = queue.pop(0)
            seed = _read_files(run.cell(tm).root)
            running[actor.run.remote(config, tm, scratch, key, seed)] = (actor, tm)

        for actor in alive:
            submit(actor)
        while running:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=cell_timeout_s)
            if not ready:
                raise CellError(
                    f"no cell finished within {cell_timeout_s:g} s (still running: "
                    f"{', '.join(sorted(tm for _, tm in running.values()))}); the finished cells are "
                    f"merged into {run.root}. Check the workers (`ray status`), then rerun, with a larger "
                    "cell_timeout_s if the cells are that slow"
                )
            ref = ready[0]
            actor, tm = running.pop(ref)
            try:
                cell: CellFiles = ray.get(ref)
            except ray.exceptions.RayActorError as err:  # the worker died more often than ``retries``
                failed[tm] = f"worker died: {err}".splitlines()[0]
                alive.remove(actor)
            except ray.exceptions.RayError as err:  # the cell raised
                failed[tm] = str(err).strip().splitlines()[-1]
            else:
                if cell.threat_model != tm:
                    raise DataError(f"the worker running cell {tm!r} returned cell {cell.threat_model!r}")
                _write_files(run.cell(tm).root, cell.files)
                located[tm] = merge_cell(run, tm, config, table, robust)
                log(f"[{tm}] finished on {cell.host}; merged into {run.root}")
                bar.update(1)
            if queue and actor in alive:
                submit(actor)
            elif queue and not alive:
                failed |= dict.fromkeys(queue, "no worker left")
                queue.clear()
    finally:
        bar.close()
        for actor in actors:
            ray.kill(actor)
        if own_ray:
            ray.shutdown()
    return spec, located, failed
