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
                assert not cell.get("outputs") and cell.get("execution_count") is None, f"{path.name} has outputs"


def test_no_pickle_anywhere_in_the_package():
    for path in (ROOT / "lensteer").rglob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text and "torch.save(" not in text, path


def test_generated_notebooks_match_their_generator():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_notebooks.py"), "--check"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
