"""Example tables: what each condition generated for the same prompts, as a figure."""

import functools
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt

from lensteer.errors import ConfigError, DataError
from lensteer.plotting.study_rows import (
    is_control,
    style_of,
)
from lensteer.plotting.style import paper_style


@functools.lru_cache(maxsize=1)
def _font_has() -> Callable[[str], bool]:
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    font = FT2Font(font_manager.findfont(font_manager.FontProperties()))
    return lambda ch: ch in "\t " or font.get_char_index(ord(ch)) != 0


def _printable(text: str, max_chars: int) -> str:
    """One paragraph, at most ``max_chars`` characters, only glyphs the figure font has."""
    has = _font_has()
    flat = " ".join(text.split())
    flat = "".join(ch if has(ch) else "?" for ch in flat) or "(empty)"
    return flat if len(flat) <= max_chars else flat[: max_chars - 1].rstrip() + "…"


def _condition_label(condition: str) -> str:
    if condition == "baseline":
        return "unsteered"
    if condition == "random" or condition.startswith("random:"):
        return "random direction (control)"
    if condition == "prompting":
        return "prompting baseline"
    method, _, budget = condition.partition("@")
    return f"{method} (KL {budget})" if budget else method


def plot_examples(
    examples: Mapping[str, Any],
    threat_model: str,
    conditions: Sequence[str] | None = None,
    *,
    n_prompts: int = 3,
    max_chars: int = 240,
    wrap: int = 34,
) -> tuple[Any, Any]:
    """Unsteered vs steered answers to the same prompts, as a table drawn in a figure.

    Args:
        examples: ``examples.json`` of a study: ``{threat_model: {condition: {"prompts", "texts", ...}}}``.
        threat_model: Which threat model's examples.
        conditions: Columns after the prompt, e.g. ``("baseline", "SwFC@0.3")`` (default: the
            baseline and up to three steered conditions at the first KL budget).
        n_prompts: Rows (prompts), 1 to 8.
        max_chars: Answers are cut to this many characters (marked with an ellipsis).
        wrap: Characters per line of a cell.
    """
    if threat_model not in examples:
        raise DataError(f"no examples for threat model {threat_model!r}; have {list(examples)}")
    table = examples[threat_model]
    if conditions is None:
        steered = [c for c in table if not is_control(c)]
        first = steered[0].partition("@")[2] if steered else ""
        conditions = ["baseline", *[c for c in steered if c.partition("@")[2] == first][:3]]
    conditions = list(conditions)
    missing = [c for c in conditions if c not in table]
    if not conditions or missing:
        raise DataError(
            f"{threat_model}: conditions {missing or conditions} not in the examples; have {list(table)}"
        )
    if not 1 <= n_prompts <= 8:
        raise ConfigError(f"n_prompts must be in 1..8, got {n_prompts}")
    prompts = list(table[conditions[0]]["prompts"])[:n_prompts]
    header = ["prompt", *[_condition_label(c) for c in conditions]]
    body = [
        [p, *[(table[c]["texts"][i] if i < len(table[c]["texts"]) else "") for c in conditions]]
        for i, p in enumerate(prompts)
    ]
    cells = [[textwrap.wrap(_printable(text, max_chars), wrap) or [""] for text in row] for row in body]
    heights = [max(len(c) for c in row) + 1 for row in cells]
    n_lines = 2 + sum(heights)
    line = 0.135  # inches per text line at 7.5 pt, line spacing 1.25
    with paper_style():
        fig = plt.figure(figsize=((0.062 * wrap + 0.2) * len(header), line * n_lines + 0.35))
        ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
        ax.set_axis_off()
        ax.set_xlim(0, len(header))
        ax.set_ylim(n_lines, -0.6)
        for j, title in enumerate(header):
            ax.text(
                j + 0.03,
                0.5,
                title,
                fontsize=8,
                fontweight="bold",
                va="center",
                ha="left",
                parse_math=False,
                color=style_of(conditions[j - 1].partition("@")[0])[0] if j else "black",
            )
        ax.axhline(1.2, color="0.2", lw=0.8)
        y = 1.6
        for row, height in zip(cells, heights, strict=True):
            for j, cell in enumerate(row):
                ax.text(
                    j + 0.03,
                    y,
                    "\n".join(cell),
                    fontsize=7.5,
                    va="top",
                    ha="left",
                    linespacing=1.25,
                    parse_math=False,
                    style="italic" if j == 0 else "normal",
                )
            y += height
            ax.axhline(y - 0.55, color="0.8", lw=0.5)
        ax.set_title(
            f"{threat_model}: unsteered vs steered answers (first {len(prompts)} evaluation prompts)",
            fontsize=9,
            loc="left",
            pad=4,
        )
    return fig, ax
