"""The README's promises that need no model: a five-minute read that starts with the two commands.
(Its quickstart runs in tests/integration/test_embedded_readme.py, on the embedded model.)"""

import re
from pathlib import Path

import lensteer

ROOT = Path(__file__).resolve().parents[3]
README = ROOT / "README.md"


def test_readme_is_short_and_starts_with_the_two_commands():
    assert README.stat().st_size <= 10 * 1024, (
        f"README.md is {README.stat().st_size} bytes; the rest belongs in docs/"
    )
    head = README.read_text().splitlines()[:6]
    assert any(line.startswith("make demo") for line in head) and any(
        line.startswith("make test") for line in head
    )


def test_readme_quickstart_is_at_most_fifteen_lines_of_code():
    code = re.search(r"## Quickstart\s+```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert 5 <= len([line for line in code.splitlines() if line.strip()]) <= 15


def test_readme_citation_names_this_version():
    assert f"version = {{{lensteer.__version__}}}" in README.read_text()
