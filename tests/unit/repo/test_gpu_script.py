"""The GPU check script (benchmarks/gpu/gpu_checks.py) runs on the CPU too, so it cannot rot between the
sessions that are lent a GPU: every parity check it makes must pass here, on a tiny Llama."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _script():
    spec = importlib.util.spec_from_file_location("gpu_checks", ROOT / "benchmarks" / "gpu" / "gpu_checks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_llama_folder(tokenizer, folder: Path) -> Path:
    from builders import save_tiny_llama_folder

    # peaked random logits: greedy decoding has no near-ties for kernels to flip
    return save_tiny_llama_folder(folder, tokenizer, initializer_range=0.2, max_position_embeddings=256)


def test_gpu_checks_pass_on_cpu_and_write_their_report(tiny_tokenizer, tmp_path):
    folder = _tiny_llama_folder(tiny_tokenizer, tmp_path / "model")
    out = tmp_path / "out"
    status = _script().main(
        [
            "--device",
            "cpu",
            "--quick",
            "--dtypes",
            "float32",
            "--model",
            str(folder),
            "--batch-sizes",
            "1,4",
            "--out",
            str(out),
        ]
    )
    report = json.loads((out / "gpu_checks.json").read_text())
    rows = report["checks"]["float32"]["rows"]
    assert [r["check"] for r in rows] == [
        "batched_equals_single",
        "cached_equals_uncached",
        "strength0_equals_unsteered",
        "patching_equals_transformerlens",
    ]
    assert all(r["passed"] for r in rows), rows
    assert status == 0 and report["all_required_passed"]
    gen = report["bench"]["float32"]["generation"]
    assert {(r["batch"], r["variant"]) for r in gen} == {
        (b, v) for b in (1, 4) for v in ("lensteer unsteered", "lensteer SwFC", "HF generate")
    }
    assert report["bench"]["float32"]["patching"]["speedup"] > 0
    assert "| float32 | patching_equals_transformerlens | yes |" in (out / "gpu_checks.md").read_text()


def test_a_failed_check_fails_the_script(tiny_tokenizer, tmp_path, monkeypatch):
    """A broken parity (here: batched logits shifted) is reported as failed and gives exit status 1."""
    script = _script()
    real = script.last_logits
    monkeypatch.setattr(
        script, "last_logits", lambda m, t, mask=None: real(m, t, mask) + (0.0 if mask is None else 1.0)
    )
    folder = _tiny_llama_folder(tiny_tokenizer, tmp_path / "model")
    status = script.main(
        [
            "--device",
            "cpu",
            "--quick",
            "--dtypes",
            "float32",
            "--model",
            str(folder),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    report = json.loads((tmp_path / "out" / "gpu_checks.json").read_text())
    first = report["checks"]["float32"]["rows"][0]
    assert first["check"] == "batched_equals_single" and not first["passed"] and first["max_abs_diff"] >= 0.99
    assert status == 1 and not report["all_required_passed"] and report["bench"] == {}


def test_half_precision_passes_the_same_checks_on_cpu(tiny_tokenizer, tmp_path):
    """bfloat16 and float16 weights (CPU kernels): batched == single within the dtype's tolerance, cached ==
    uncached and strength 0 == unsteered token for token, patching == TransformerLens; the GPU run repeats
    these on CUDA."""
    folder = _tiny_llama_folder(tiny_tokenizer, tmp_path / "model")
    status = _script().main(
        [
            "--device",
            "cpu",
            "--quick",
            "--no-bench",
            "--dtypes",
            "bfloat16,float16",
            "--model",
            str(folder),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    report = json.loads((tmp_path / "out" / "gpu_checks.json").read_text())
    for dtype in ("bfloat16", "float16"):
        rows = report["checks"][dtype]["rows"]
        assert len(rows) == 4 and all(r["passed"] for r in rows), (dtype, rows)  # the optional ones too
    assert status == 0 and report["bench"] == {}
