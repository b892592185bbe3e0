"""Repository promises that CI can check cheaply."""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_committed_notebooks_have_no_outputs():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for path in notebooks:
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and cell.get("execution_count") is None, (
                    f"{path.name} has outputs"
                )


def test_no_pickle_anywhere_in_the_package():
    for path in (ROOT / "lensteer").rglob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text and "torch.save(" not in text, path


def test_generated_notebooks_match_their_generator():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_notebooks.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_notebook_generator_flags_an_edited_or_unpaired_notebook(tmp_path):
    """One way to edit a notebook: its jupytext twin (notebooks/NN_name.py); the .ipynb is written from it."""
    import importlib.util
    import shutil

    spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "scripts" / "make_notebooks.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for path in (ROOT / "notebooks").glob("[0-9][0-9]_*"):
        shutil.copy(path, tmp_path / path.name)
    script.NOTEBOOKS = tmp_path
    twins = sorted(tmp_path.glob("*.py"))
    assert [p.stem for p in twins] == sorted(p.stem for p in tmp_path.glob("*.ipynb")) and len(twins) == 5
    assert script.main(["--check"]) == 0
    source = twins[0]
    source.write_text(source.read_text() + "\n# %%\nprint('a new cell')\n")
    assert script.main(["--check"]) == 1
    assert script.main([]) == 0 and script.main(["--check"]) == 0
    assert "print('a new cell')" in source.with_suffix(".ipynb").read_text()
    source.unlink()
    assert script.main(["--check"]) == 1  # a notebook without its twin


def test_no_tracked_file_points_outside_the_repository():
    """The developers' notes folder beside the checkout is not part of lensteer: a user who clones it never has it."""
    import subprocess

    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    pointing = []
    for name in files:
        path = ROOT / name
        if not path.is_file() or path.suffix in (".png", ".pdf", ".safetensors", ".gguf"):
            continue
        text = path.read_text(encoding="utf-8", errors="ignore")
        for marker in ("../" + "shared", "shared" + "/docs/"):
            if marker in text:
                pointing.append(f"{name}: {marker}")
    assert pointing == []


def test_docs_pages_link_to_files_that_exist():
    import re

    broken = []
    for page in (ROOT / "docs").rglob("*.md"):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []


def test_test_files_have_distinct_names_across_folders():
    """make test collects unit, integration and notebooks in one pytest run without __init__.py files, where two
    test files of the same name stop the whole run ("import file mismatch")."""
    names = [p.name for p in Path("tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
