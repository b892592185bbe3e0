"""The documentation site (mkdocs.yml): every page is in its navigation, every stage has an API page, and
links from docs/ to the rest of the repository are checked. `make test` builds it with --strict."""

import importlib.util
import re
from pathlib import Path

import yaml

import lensteer

ROOT = Path(__file__).resolve().parents[3]
DOCS = ROOT / "docs"


def _nav_pages(entries):
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        if isinstance(value, list):
            yield from _nav_pages(value)
        else:
            yield value


def _config():
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_every_docs_page_is_in_the_navigation_and_every_nav_entry_exists():
    nav = list(_nav_pages(_config()["nav"]))
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(nav) == pages
    assert _config()["strict"] is True


def test_every_stage_has_an_api_page_built_from_its_docstrings():
    for stage in lensteer.SUBPACKAGES:
        page = DOCS / "api" / f"{stage}.md"
        assert page.is_file(), f"no API page for lensteer.{stage}"
        assert re.search(rf"^::: lensteer\.{stage}$", page.read_text(), re.M), page


def test_hook_turns_links_out_of_docs_into_paths_and_reports_missing_files():
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "scripts" / "mkdocs_hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = DOCS / "guides" / "organisms.md"
    text = (
        "see [the data](../../data/README.md#inducers), [methods](../methods.md#6-steering), "
        "[`data/README.md`](../../data/README.md), [web](https://example.org/x) and "
        "![a figure](../../figures/tradeoff.png); [gone](../../no/such/file.md)"
    )
    out, missing = hooks.outside_links(text, page, DOCS)
    assert "see the data (`data/README.md`)" in out
    assert "[methods](../methods.md#6-steering)" in out  # inside docs/: mkdocs checks it itself
    assert (
        "[methods](../methods.md#6-steering), `data/README.md`, [web]" in out
    )  # already a path: kept as it is
    assert "[web](https://example.org/x)" in out and "*a figure* (`figures/tradeoff.png`)" in out
    assert missing == ["../../no/such/file.md"]
