"""The README's promises: the two commands come first, and the quickstart runs."""

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_starts_with_the_two_commands():
    head = README.read_text().splitlines()[:6]
    assert any("make demo" in line for line in head) and any("make test" in line for line in head)


def test_quickstart_runs_and_is_at_most_fifteen_lines_of_code(embedded_model):
    text = README.read_text()
    code = re.search(r"## Quickstart\s+```python\n(.*?)```", text, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 15
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README quickstart", "exec"), {})
    printed = out.getvalue()
    harmful, harmless = map(float, re.search(r"harmful (-?[\d.]+) vs harmless (-?[\d.]+)", printed).groups())
    assert harmful > harmless  # the direction separates held-out prompts with the right sign
    assert embedded_model.list_hooks() == {}
