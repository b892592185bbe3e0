"""Write the notebooks' ``.ipynb`` files from their jupytext twins, ``notebooks/*.py`` (percent format).

The ``.py`` files are the one place to edit all five notebooks: in an editor, or in Jupyter, where jupytext
(the ``notebooks`` extra) keeps each pair in sync. Then ``python scripts/make_notebooks.py`` writes every
``.ipynb`` reproducibly: cell ids ``nbNN-MM``, no outputs, the same kernelspec and the pairing metadata, so a
notebook's diff is its source's. ``--check`` exits 1 when a committed notebook differs from what this script
writes (a unit test runs it). Every notebook has a smoke mode (``LENSTEER_SMOKE=1``, what CI runs with
``pytest --nbmake``).
"""

import argparse
import sys
from pathlib import Path

import jupytext
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
PAIRING = {"formats": "ipynb,py:percent"}


def build(source: Path) -> nbformat.NotebookNode:
    """The notebook of one percent-format ``.py`` file, with deterministic cell ids and no outputs."""
    cells = jupytext.read(source, fmt="py:percent").cells
    nb = new_notebook(metadata={"jupytext": PAIRING, "kernelspec": KERNELSPEC})
    stem = source.stem.split("_", 1)[0]
    for i, cell in enumerate(cells):
        if cell.cell_type not in ("markdown", "code"):
            raise SystemExit(f"{source.name}: cell {i} is a {cell.cell_type} cell; use markdown or code")
        new = new_markdown_cell(cell.source) if cell.cell_type == "markdown" else new_code_cell(cell.source)
        new["id"] = f"nb{stem}-{i:02d}"
        nb.cells.append(new)
    nbformat.validate(nb)
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed notebook is out of date")
    args = parser.parse_args(argv)
    sources = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))
    stale = [p.name for p in sorted(NOTEBOOKS.glob("*.ipynb")) if not p.with_suffix(".py").exists()]
    for source in sources:
        path = source.with_suffix(".ipynb")
        text = nbformat.writes(build(source)) + "\n"
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
            continue
        path.write_text(text)
        print(f"wrote {path}")
    if stale:
        print(
            f"out of date or unpaired: {stale}; edit notebooks/*.py, then run python scripts/make_notebooks.py"
        )
    return int(bool(stale))


if __name__ == "__main__":
    sys.exit(main())
