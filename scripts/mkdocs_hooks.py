"""mkdocs hook: links from a docs page to repository files outside ``docs/`` (``../data/README.md``).

mkdocs can serve only what is under ``docs/``, and in strict mode it fails on such links. They are right on
GitHub, where the pages are read too, so on the site they become the path in code (``data/README.md``;
an image, its caption and path); a link to a file that does not exist in the repository still fails the build.
"""

import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)#\s]+)(#[^)\s]*)?\)")


def outside_links(markdown: str, page: Path, docs: Path) -> tuple[str, list[str]]:
    """``markdown`` with links that leave ``docs`` turned into code spans; and the targets that do not exist."""
    missing: list[str] = []
    root = docs.parent

    def swap(m: re.Match[str]) -> str:
        image, text, target = m.group(1), m.group(2), m.group(3)
        if "://" in target or target.startswith(("/", "mailto:")):
            return m.group(0)
        path = (page.parent / target).resolve()
        if path.is_relative_to(docs.resolve()):
            return m.group(0)
        if not path.exists():
            missing.append(target)
        shown = path.relative_to(root.resolve()).as_posix() if path.is_relative_to(root.resolve()) else target
        if image:
            return f"*{text}* (`{shown}`)"
        return text if f"`{shown}`" in text or text == shown else f"{text} (`{shown}`)"

    return LINK.sub(swap, markdown), missing


def on_page_markdown(markdown: str, *, page: Any, config: Any, **_: Any) -> str:
    """Rewrite the page's links that leave ``docs/``; fail the build on one whose file does not exist."""
    docs = Path(config["docs_dir"])
    text, missing = outside_links(markdown, docs / page.file.src_path, docs)
    if missing:
        raise PluginError(f"{page.file.src_path} links to files that do not exist: {', '.join(missing)}")
    return text
