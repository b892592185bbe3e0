"""The README's quickstart runs on the embedded model and does what it prints.
(Its length and the two commands above it are checked in tests/unit/repo/test_readme.py.)"""

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_quickstart_runs_and_its_direction_separates_held_out_prompts(embedded_model):
    code = re.search(r"## Quickstart\s+```python\n(.*?)```", README.read_text(), re.S).group(1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README quickstart", "exec"), {})
    printed = out.getvalue()
    harmful, harmless = map(float, re.search(r"harmful (-?[\d.]+) vs harmless (-?[\d.]+)", printed).groups())
    assert harmful > harmless  # the direction separates held-out prompts with the right sign
    assert len(printed.splitlines()) >= 2  # the generated answer is printed too
    assert embedded_model.list_hooks() == {}
