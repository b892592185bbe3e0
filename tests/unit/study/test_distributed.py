"""``lensteer run --executor ray``: cells (locate a threat model, blocks of its conditions, its robustness
rows) on a local 2-worker Ray, merged into one table equal to a serial run's.

The tests marked ``ray`` share one local Ray per module (starting it takes seconds); they run in
``make test`` and ``-m "not real_model and not ray"`` leaves them out. The workers load a tiny random
Llama saved as a model folder, as a user's workers load a model, and run their cells with one torch thread.
The study has a layer sweep, a twin (StMP-push) and a robustness setting, so every kind of cell and
row runs; the cells' merge is also replayed in process, in reverse order, without Ray.
"""

import json
import os
import sys
from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch

from lensteer.cli import main
from lensteer.core.models import load_model
from lensteer.errors import ConfigError
from lensteer.study import cells, distributed
from lensteer.study.config import StudyConfig
from lensteer.study.folder import RunFolder
from lensteer.study.merging import Merger
from lensteer.study.plan import plan_conditions
from lensteer.study.runner import run_study, write_report

CFG = StudyConfig(
    threat_models=("compassion", "honesty"),
    methods=("SwFC", "StMP", "StMP-push"),
    n_train=6,
    n_eval=2,
    n_harmless=2,
    n_borderline=2,
    n_kl=2,
    n_conversations=1,
    n_turns=2,
    n_mc=2,
    n_paragraphs=2,
    max_new_tokens=3,
    layer=1,
    sweep_layers=(0,),
    n_fluency=2,
    random_seeds=(0,),
    batch_size=4,
    robustness=("prefill_dismiss",),  # compassion's inducer: honesty has none
    robustness_methods=("SwFC",),
)
QUIET = {"progress": False, "log": lambda s: None}
NICENESS = "RAY_worker_niceness"  # Ray's config variable (RayConfig worker_niceness, default 15)


@pytest.fixture(scope="module")
def local_ray():
    import ray  # the optional extra lensteer[ray]; the dev extra installs it, so make test never skips this

    # Ray starts its workers at niceness 15: on a busy CI machine they would wait behind every other process
    # (a run here took 15+ min beside a study); at 0 they compete as the test process does.
    before = os.environ.get(NICENESS)
    os.environ[NICENESS] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=80 * 1024**2)
    yield ray
    ray.shutdown()
    if before is None:
        os.environ.pop(NICENESS)
    else:
        os.environ[NICENESS] = before


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, tiny_tokenizer):
    """Weights large enough that every steering reaches its KL budget: with the default initializer the
    steerings saturate far below it, where calibrate's stopping rule (KL grew < 2% on doubling) is so close
    a call that rounding noise once doubled a scale in the serial run of a long-lived test process."""
    from builders import save_tiny_llama_folder

    return str(
        save_tiny_llama_folder(tmp_path_factory.mktemp("tiny_model"), tiny_tokenizer, initializer_range=0.5)
    )


@pytest.fixture(scope="module")
def serial(model_folder, tmp_path_factory):
    """The serial run the Ray runs must equal (rows, report), in this process."""
    out = tmp_path_factory.mktemp("serial")
    with _torch_threads(1):  # as the workers run; a sum over 2 threads rounds differently (1e-7, seen in CI)
        result = run_study(load_model(model_folder), CFG, out, **QUIET)
    return _read(out), result.report.to_dict()


@contextmanager
def _torch_threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _read(out):
    files = {
        name: json.loads((out / name).read_text())
        for name in ("results.json", "examples.json", "finished.json", "report.json", "robustness.json")
        if name != "robustness.json" or (out / name).exists()  # a study without robustness settings has none
    }
    return {**files, "steerings": {p.name: _steering_file(p) for p in (out / "steerings").iterdir()}}


def _steering_file(path):
    """A saved steering's content (its header's key order, and so the file's hash, varies by process)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return {k: v.tolist() for k, v in load_file(path).items()}
    return {
        k: v
        for k, v in json.loads(path.read_text()).items()
        if k not in ("safetensors_sha256", "record_sha256")
    }


def _row_diffs(mine, theirs):
    """(row, field, mine, theirs) for each field that differs; rows matched by position."""
    keys = [
        [(r["threat_model"], r["method"], r["kl_budget"], r["layer"]) for r in rows]
        for rows in (mine, theirs)
    ]
    assert keys[0] == keys[1], f"rows differ: {keys[0]} vs {keys[1]}"
    return [
        (k, f, a.get(f), b.get(f))
        for k, a, b in zip(keys[0], mine, theirs, strict=True)
        for f in sorted(set(a) | set(b))
        if a.get(f) != b.get(f)
    ]


def _equal_to_serial(out, serial):
    mine, (theirs, _) = _read(out), serial
    assert _row_diffs(mine["results.json"]["rows"], theirs["results.json"]["rows"]) == []
    assert mine["results.json"] == theirs["results.json"]  # every row, in the same order, to the last float
    assert mine["robustness.json"] == theirs["robustness.json"]
    assert (
        mine["examples.json"] == theirs["examples.json"] and mine["finished.json"] == theirs["finished.json"]
    )
    assert mine["steerings"] == theirs["steerings"]  # the same calibrated steerings
    for key in set(theirs["report.json"]) - {"seconds"}:  # everything but the wall time
        assert mine["report.json"][key] == theirs["report.json"][key], key


def _counting(calls):
    """A cell runner that records each cell it starts (in a file: the workers are other processes)."""

    def counted(model, config, task, work, **kw):
        from pathlib import Path

        with Path(calls).open("a") as f:
            f.write(task.name + "\n")
        return cells.run_task(model, config, task, work, **kw)

    return counted


def _cells_run(calls):
    return sorted(calls.read_text().splitlines()) if calls.exists() else []


def _faulty(calls, flags):
    """Counts cells like :func:`_counting`, and fails twice, once each: kills its worker process in
    compassion's first block once a steering is calibrated (and saved in the cell's scratch folder), and
    raises in honesty's locate cell."""
    counted = _counting(calls)

    def faulty(model, config, task, work, *, log, **kw):
        import os

        tm = task.threat_model
        flag = flags / tm

        def log_or_die(line):
            if tm == "honesty" and task.kind == "locate" and not flag.exists():
                flag.touch()
                raise RuntimeError("honesty's cell broke")
            if tm == "compassion" and ": scale " in line and not flag.exists():
                flag.touch()
                os._exit(1)
            log(line)

        return counted(model, config, task, work, log=log_or_die, **kw)

    return faulty


def test_cells_merged_in_any_order_equal_the_serial_run(model_folder, serial, tmp_path):
    """Without Ray: every cell of the study run in this process, one condition per block, merged in
    reverse order (robustness and the last blocks first, the baseline's block last: rows wait for its row)."""
    out = RunFolder(tmp_path / "out")
    merger = Merger(run=out, config=CFG, log=QUIET["log"], stages={}, block_size=1)
    queue = [task for tm in CFG.threat_models for task in merger.next_cells(tm)]
    model, cache, ran = load_model(model_folder), {}, []
    with _torch_threads(1):
        while queue:
            task = queue.pop()
            work = tmp_path / "work" / task.slug
            seed = merger.seed(task)
            distributed._write_files(work, seed)
            result = cells.run_task(model, CFG, task, work, cache=cache, log=QUIET["log"])
            files = {k: v for k, v in distributed._read_files(work).items() if seed.get(k) != v}
            if task.kind == "block" and task.keys[0][0] == "baseline":
                assert json.loads((out.cell(task.threat_model).path("held.json")).read_text())["rows"]
            ran.append(task.name)
            queue += merger.merge(replace(result, files=files))
    assert sum(": block of 1" in name for name in ran) == 2 * 7  # baselines, 2 methods x 2 layers, random
    timing = json.loads(out.path("timing.json").read_text())  # written at each merge, not only at the end
    assert timing["seconds"] > 0 and set(timing["stages"]) >= set(CFG.threat_models)
    assert all(seconds > 0 for tm in CFG.threat_models for seconds in timing["stages"][tm].values())
    write_report(
        out, out.table().rows, out.robustness().rows, CFG, merger.finished, serial[1]["model"], seconds=0.0
    )
    assert all(not json.loads(out.cell(tm).path("held.json").read_text())["rows"] for tm in CFG.threat_models)
    _equal_to_serial(out.root, serial)


def test_blocks_keep_twins_with_their_originals_and_skip_finished_conditions():
    planned = plan_conditions(CFG, 1, 2)
    keys = [cells.key_of(p) for p in planned]
    assert keys[:2] == [("baseline", None, 1), ("prompting", None, 1)]
    blocks = cells.condition_blocks(planned, 3, lambda k: False)
    flat = [k for b in blocks for k in b]
    assert [len(b) for b in blocks] == [3, 3, 1] and ("StMP-push", 0.5, 1) not in flat  # the twin goes along
    assert {p.method for p in cells.block_plan(planned, [("StMP", 0.5, 0)])} == {"StMP", "StMP-push"}
    # a condition is done when its row and its twin's are in: StMP's twin row is missing, so StMP runs again
    done = set(keys) - {("StMP-push", 0.5, 0), ("SwFC", 0.5, 1)}
    assert cells.condition_blocks(planned, 6, done.__contains__) == [(("SwFC", 0.5, 1), ("StMP", 0.5, 0))]
    assert distributed.default_block_size(7, 1) == 4 and distributed.default_block_size(100, 4) == 6
    assert distributed.default_block_size(7, 4) == 1
    with pytest.raises(ValueError, match="block size must be >= 1, got 0"):
        cells.condition_blocks(planned, 0, done.__contains__)


@pytest.mark.ray
def test_ray_run_survives_failures_equals_the_serial_run_and_never_recomputes_a_finished_cell(
    local_ray, model_folder, serial, tmp_path
):
    """One test, so that Ray's workers start (seconds each) as few times as possible: both threat models'
    cells on two workers, two conditions a block, one worker killed mid-cell and one cell raising; the
    same study again retries only what did not finish; then twice more."""
    out, calls, flags = tmp_path / "out", tmp_path / "calls", tmp_path
    kw = {"workers": 2, "threads": 1, "scratch": str(tmp_path / "scratch"), "block_size": 2, **QUIET}
    with pytest.raises(
        distributed.CellError,
        match=r"\['honesty: locate'\] failed.*RuntimeError: honesty's cell broke.*rerun",
    ):
        distributed.run_study_distributed(model_folder, CFG, out, run_cell=_faulty(calls, flags), **kw)
    assert (flags / "compassion").exists()  # a worker died in compassion's block; Ray restarted it
    first = _cells_run(calls)
    compassion = [n for n in first if n.startswith("compassion")]
    assert len(compassion) == len(set(compassion)) + 1  # the killed cell ran again, no other twice
    assert {n for n in compassion} >= {"compassion: locate", "compassion: robustness"}
    assert [n for n in first if n.startswith("honesty")] == ["honesty: locate"]
    assert set(json.loads((out / "finished.json").read_text())) == {"compassion"}  # merged already
    assert (
        "compassion" in json.loads((out / "timing.json").read_text())["stages"]
    )  # a failed run keeps its time
    result = distributed.run_study_distributed(model_folder, CFG, out, run_cell=_counting(calls), **kw)
    again = _cells_run(calls)
    assert sorted(set(again) - set(first)) == sorted(
        {n for n in again if n.startswith("honesty")} - {"honesty: locate"}
    )  # honesty's blocks: nothing of compassion
    assert again.count("honesty: locate") == 2 and len(again) == len(first) + 1 + 4  # 7 conditions, 2 a block
    _equal_to_serial(out, serial)
    assert result.report.to_dict()["threat_models"] == serial[1]["threat_models"]
    assert not list((tmp_path / "scratch").rglob("*.json"))  # a finished cell's scratch is cleared
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name not in ("timing.json", "report.json")}
    distributed.run_study_distributed(
        model_folder, CFG, out, run_cell=_counting(calls), **kw
    )  # nothing to run
    assert _cells_run(calls) == again
    assert {
        p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name not in ("timing.json", "report.json")
    } == stamps
    # a driver that stopped after the last cell was merged, before marking its threat model finished
    finished = json.loads((out / "finished.json").read_text())
    (out / "finished.json").write_text(json.dumps({k: v for k, v in finished.items() if k != "honesty"}))
    distributed.run_study_distributed(model_folder, CFG, out, run_cell=_counting(calls), **kw)
    assert _cells_run(calls) == again
    _equal_to_serial(out, serial)
    with pytest.raises(
        ConfigError, match="threads 3 per worker: no node of this Ray cluster has that many CPUs"
    ):
        distributed.run_study_distributed(
            model_folder, CFG, tmp_path / "other", workers=1, threads=3, **QUIET
        )


@pytest.mark.ray
def test_ray_resumes_an_interrupted_serial_run_and_merges_a_threat_model_run_beside_it(
    local_ray, model_folder, serial, tmp_path
):
    """The 2-core recipe the committed study was run with (docs/study/README.md): compassion run serially
    into OUT and interrupted after its first block, honesty run alone into OUT/cells/honesty; the Ray driver
    merges honesty whole, locates compassion again and runs only the conditions without rows (and those
    whose twin's row is missing: twins are added last), reloading the calibrated steerings."""
    out, calls, lines = tmp_path / "out", tmp_path / "calls", []

    def interrupt(line):
        lines.append(line)
        if sum("answers to the test prompts" in x for x in lines) == 2:  # the second block
            raise KeyboardInterrupt

    model = load_model(model_folder)
    with _torch_threads(1):
        with pytest.raises(KeyboardInterrupt):
            run_study(model, replace(CFG, threat_models=("compassion",)), out, progress=False, log=interrupt)
        run_study(model, replace(CFG, threat_models=("honesty",)), out / "cells" / "honesty", **QUIET)
    assert len(json.loads((out / "results.json").read_text())["rows"]) == 6  # one block of six
    distributed.run_study_distributed(
        model_folder, CFG, out, run_cell=_counting(calls), workers=1, threads=1, **QUIET
    )
    assert _cells_run(calls) == [
        "compassion: block of 3 (StMP@0.5 L1 ...)",
        "compassion: locate",
        "compassion: robustness",
    ]
    _equal_to_serial(out, serial)


@pytest.mark.ray
def test_cli_ray_smoke_run_equals_the_serial_smoke_run(local_ray, model_folder, tmp_path, capsys):
    """`lensteer run --executor ray --smoke` against `lensteer run --smoke`, on two threat models and one method
    (the smoke profile's sizes), with one worker: starting a worker costs seconds, and the test above runs
    three cells on two workers, a killed one, a failed cell and the reruns."""
    args = [
        "run",
        "--model",
        model_folder,
        "--smoke",
        "--quiet",
        "--no-figures",
        "--dataset",
        "refusal",
        "--dataset",
        "honesty",
        "--method",
        "SwFC",
    ]
    with _torch_threads(torch.get_num_threads()):  # the CLI sets the process's threads; put them back after
        assert main([*args, "--out", str(tmp_path / "serial"), "--threads", "1"]) == 0  # as the worker runs
    assert (
        main([*args, "--out", str(tmp_path / "ray"), "--executor", "ray", "--workers", "1", "--threads", "1"])
        == 0
    )
    serial, ray = _read(tmp_path / "serial"), _read(tmp_path / "ray")
    assert _row_diffs(ray["results.json"]["rows"], serial["results.json"]["rows"]) == []
    assert ray["results.json"] == serial["results.json"] and ray["examples.json"] == serial["examples.json"]
    assert ray["report.json"]["threat_models"] == serial["report.json"]["threat_models"]
    assert "| honesty | SwFC |" in capsys.readouterr().out


def test_without_ray_the_ray_executor_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'lensteer\[ray\]'"):
        distributed.run_study_distributed(
            "some/model", replace(CFG, threat_models=("refusal",)), tmp_path, **QUIET
        )
    assert main(["run", "--executor", "ray", "--model", "some/model", "--smoke", "--out", str(tmp_path)]) == 2
    assert "pip install 'lensteer[ray]'" in capsys.readouterr().err
    assert main(["run", "--workers", "2", "--out", str(tmp_path)]) == 2  # checked before any model loads
    assert "--address, --workers and --block-size go with --executor ray" in capsys.readouterr().err
    assert main(["run", "--block-size", "2", "--out", str(tmp_path)]) == 2
    assert "--block-size go with --executor ray" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="workers must be >= 1"):
        distributed.run_study_distributed(None, CFG, tmp_path, workers=0, **QUIET)
    with pytest.raises(ConfigError, match="block_size must be >= 1 .*, got 0"):
        distributed.run_study_distributed(None, CFG, tmp_path, block_size=0, **QUIET)


def test_a_misspelt_driver_option_is_refused_by_name_before_out_is_touched(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown run_study_distributed options \['worker'\]; allowed: \["):
        distributed.run_study_distributed(None, CFG, tmp_path / "out", worker=2, **QUIET)  # type: ignore[call-arg]
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="cell_timeout_s must be > 0 seconds, got 0"):
        distributed.run_study_distributed(None, CFG, tmp_path / "out", cell_timeout_s=0.0, **QUIET)
