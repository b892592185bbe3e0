"""``lensteer run --executor ray``: threat models as cells on a local 2-worker Ray, merged into one table.

The tests marked ``ray`` share one local Ray per module (starting it takes seconds); they run in
``make test`` and ``-m "not real_model and not ray"`` leaves them out. The workers load a tiny random
Llama saved as a model folder, as a user's workers load a model, and run their cells with one torch thread.
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
from lensteer.study import distributed
from lensteer.study.config import StudyConfig
from lensteer.study.runner import run_study

CFG = StudyConfig(
    threat_models=("refusal", "compassion", "honesty"),
    methods=("SwFC",),
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
    candidate_layers=(0, 1),
    random_seeds=(0,),
    batch_size=4,
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
        for name in ("results.json", "examples.json", "finished.json", "report.json")
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
    assert (
        mine["examples.json"] == theirs["examples.json"] and mine["finished.json"] == theirs["finished.json"]
    )
    assert mine["steerings"] == theirs["steerings"]  # the same calibrated steerings
    for key in set(theirs["report.json"]) - {"seconds"}:  # everything but the wall time
        assert mine["report.json"][key] == theirs["report.json"][key], key


def _counting(calls):
    """A cell runner that records each cell it starts (in a file: the workers are other processes)."""

    def counted(model, config, out, **kw):
        from pathlib import Path

        with Path(calls).open("a") as f:
            f.write(config.threat_models[0] + "\n")
        return run_study(model, config, out, **kw)

    return counted


def _cells_run(calls):
    return sorted(calls.read_text().split()) if calls.exists() else []


def _faulty(calls, flags):
    """Counts cells like :func:`_counting`, and fails twice, once each: kills its worker process when
    compassion starts evaluating (its steerings are calibrated and saved in the cell's scratch folder by
    then), and raises in honesty's cell."""
    counted = _counting(calls)

    def faulty(model, config, out, log, **kw):
        import os

        tm = config.threat_models[0]
        flag = flags / tm

        def log_or_die(line):
            if tm == "honesty" and not flag.exists():
                flag.touch()
                raise RuntimeError("honesty's cell broke")
            if tm == "compassion" and "evaluating" in line and not flag.exists():
                flag.touch()
                os._exit(1)
            log(line)

        return counted(model, config, out, log=log_or_die, **kw)

    return faulty


@pytest.mark.ray
def test_ray_run_survives_failures_equals_the_serial_run_and_never_recomputes_a_finished_cell(
    local_ray, model_folder, serial, tmp_path
):
    """One test, so that Ray's workers start (seconds each) as few times as possible: three cells on two
    workers, one killed mid-cell and one raising; the same study again retries only that one; then twice more."""
    out, calls, flags = tmp_path / "out", tmp_path / "calls", tmp_path
    kw = {"workers": 2, "threads": 1, "scratch": str(tmp_path / "scratch"), **QUIET}
    with pytest.raises(
        distributed.CellError, match=r"\['honesty'\] failed.*RuntimeError: honesty's cell broke.*rerun"
    ):
        distributed.run_study_distributed(model_folder, CFG, out, run_cell=_faulty(calls, flags), **kw)
    assert (
        flags / "compassion"
    ).exists()  # a worker died in compassion's cell; Ray restarted it, the cell ran again
    assert _cells_run(calls) == ["compassion", "compassion", "honesty", "refusal"]
    assert set(json.loads((out / "finished.json").read_text())) == {"refusal", "compassion"}  # merged already
    result = distributed.run_study_distributed(model_folder, CFG, out, run_cell=_counting(calls), **kw)
    assert _cells_run(calls) == [
        "compassion",
        "compassion",
        "honesty",
        "honesty",
        "refusal",
    ]  # only the failed one
    _equal_to_serial(out, serial)
    assert result.report.to_dict()["threat_models"] == serial[1]["threat_models"]
    assert {p.name for p in (out / "cells").iterdir()} == set(CFG.threat_models)
    assert not list((tmp_path / "scratch").rglob("*.json"))  # a finished cell's scratch is cleared
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*")}
    distributed.run_study_distributed(
        model_folder, CFG, out, run_cell=_counting(calls), **kw
    )  # nothing to run
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*")} == stamps
    _equal_to_serial(out, serial)
    # a driver that stopped after a cell came back but before merging it: the rerun merges it, runs nothing
    finished = json.loads((out / "finished.json").read_text())
    (out / "finished.json").write_text(json.dumps({k: v for k, v in finished.items() if k != "honesty"}))
    distributed.run_study_distributed(model_folder, CFG, out, run_cell=_counting(calls), **kw)
    assert _cells_run(calls) == ["compassion", "compassion", "honesty", "honesty", "refusal"]
    _equal_to_serial(out, serial)
    with pytest.raises(
        ConfigError, match="threads 3 per worker: no node of this Ray cluster has that many CPUs"
    ):
        distributed.run_study_distributed(
            model_folder, CFG, tmp_path / "other", workers=1, threads=3, **QUIET
        )


@pytest.mark.ray
def test_a_cell_run_serially_beside_the_study_is_merged_not_recomputed(
    local_ray, model_folder, serial, tmp_path
):
    """The 2-core recipe the committed study was run with (docs/study/README.md): one threat model resumed in OUT, another run alone into
    OUT/cells/<tm> at the same time; the Ray driver then merges the cell and runs only what is missing."""
    out, calls = tmp_path / "out", tmp_path / "calls"
    model = load_model(model_folder)
    with _torch_threads(1):
        run_study(model, replace(CFG, threat_models=("refusal",)), out, **QUIET)
        run_study(model, replace(CFG, threat_models=("honesty",)), out / "cells" / "honesty", **QUIET)
    distributed.run_study_distributed(
        model_folder, CFG, out, run_cell=_counting(calls), workers=1, threads=1, **QUIET
    )
    assert _cells_run(calls) == ["compassion"]  # refusal kept, honesty merged from its cell
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
    assert "--address and --workers go with --executor ray" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="workers must be >= 1"):
        distributed.run_study_distributed(None, CFG, tmp_path, workers=0, **QUIET)
