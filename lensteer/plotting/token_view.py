"""Where steering fired, token by token: one generation's tokens coloured by their projection.

``token_view(generations, i, model)`` gives a :class:`TokenView`: per generated token its text,
its projection on the steering direction (before the edit, at the position that chose it), whether
steering fired there and by how much it moved the residual. It renders as HTML in Jupyter, with
ANSI colours in a terminal (``print(view)``), as plain text for logs (``view.plain()``), and as a
paper figure (:func:`plot_token_view`).

Colour: a diverging scale centred on the threshold (StTP / StMP's ``tau``; 0 without one), red
below it (the misaligned side the direction points away from), blue above; grey where there is
no projection (an unsteered generation).
"""

import functools
import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize, to_hex
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from lensteer.errors import ConfigError, DataError
from lensteer.plotting.style import paper_style

CMAP = "RdBu"
NO_PROJECTION = "#e0e0e0"
_VISIBLE = {"\n": "⏎", "\t": "⇥", "\r": "␍"}
_MONO_ADVANCE = 0.602  # DejaVu Sans Mono: advance width per character, in em


@dataclass(frozen=True, kw_only=True, repr=False)
class TokenView:
    """One generation, token by token (build it with :func:`token_view`).

    Attributes:
        pieces: The text of each generated token (pieces join to the decoded answer).
        projection: Per token, the projection on the steering's unit before the edit (NaN: none).
        fired: Per token, whether steering changed the residual at the position that chose it.
        shift: Per token, the L2 size of that change.
        centre: Where the colour scale is centred: the threshold, else 0.
        threshold: The steering's threshold, if one was given.
        prompt: The prompt's text, shown before the answer (``None``: not shown).
        index: Which generation of the batch.
    """

    pieces: tuple[str, ...]
    projection: tuple[float, ...]
    fired: tuple[bool, ...]
    shift: tuple[float, ...]
    centre: float = 0.0
    threshold: float | None = None
    prompt: str | None = None
    index: int = 0

    def __post_init__(self) -> None:
        n = len(self.pieces)
        if not len(self.projection) == len(self.fired) == len(self.shift) == n:
            raise DataError(
                f"token view needs one projection, fired flag and shift per token ({n}); got "
                f"{len(self.projection)}, {len(self.fired)}, {len(self.shift)}"
            )

    def __len__(self) -> int:
        return len(self.pieces)

    @property
    def n_fired(self) -> int:
        return sum(self.fired)

    @property
    def fired_share(self) -> float:
        """Share of the tokens chosen at a position where steering fired."""
        return self.n_fired / len(self) if len(self) else 0.0

    @property
    def title(self) -> str:
        return f"generation {self.index}: steering fired on {self.n_fired}/{len(self)} tokens ({self.fired_share:.0%})"

    @property
    def span(self) -> float:
        """Half-width of the colour scale: the largest distance of a projection from the centre."""
        far = [abs(p - self.centre) for p in self.projection if math.isfinite(p)]
        return max(far) if far and max(far) > 0 else 1.0

    def colours(self) -> tuple[str, ...]:
        """Each token's background colour (hex): red below the centre, blue above, grey without a projection."""
        cmap, norm = colormaps[CMAP], self.norm()
        # the scale's ends are too dark for text on them: use its inner 80%
        return tuple(
            to_hex(cmap(0.1 + 0.8 * float(norm(p)))) if math.isfinite(p) else NO_PROJECTION
            for p in self.projection
        )

    def norm(self) -> Normalize:
        return Normalize(vmin=self.centre - self.span, vmax=self.centre + self.span, clip=True)

    def _widths(self) -> tuple[int, ...]:
        """Underline thickness per token, 0 (not fired) or 1..4 by shift relative to the largest."""
        top = max((s for s, f in zip(self.shift, self.fired, strict=True) if f), default=0.0)
        return tuple(
            0 if not f else 1 + (round(3 * s / top) if top > 0 else 0)
            for s, f in zip(self.shift, self.fired, strict=True)
        )

    def legend(self) -> str:
        centre = f"the threshold {self.centre:.3g}" if self.threshold is not None else "0"
        return (
            f"colour: projection on the steering direction before the edit, red below {centre}, blue above "
            f"(scale ±{self.span:.3g}); underlined: steering fired (thicker: larger shift)"
        )

    def _repr_html_(self) -> str:
        parts = [
            '<div class="lensteer-token-view" style="font-family:monospace;line-height:1.9">',
            f"<div><b>{html.escape(self.title)}</b></div>",
        ]
        if self.prompt is not None:
            prompt = html.escape(self.prompt).replace("\n", "⏎<br>")
            parts.append(f'<div style="color:#777;font-style:italic;white-space:pre-wrap">{prompt}</div>')
        parts.append('<div style="white-space:pre-wrap">')
        for k, (piece, colour, width) in enumerate(
            zip(self.pieces, self.colours(), self._widths(), strict=True)
        ):
            tip = f"token {k}: projection {self.projection[k]:.3g}" + (
                f", fired, shift {self.shift[k]:.3g}" if self.fired[k] else ", not fired"
            )
            style = f"background:{colour};color:{_text_colour(colour)};padding:1px 0"
            cls = "ls-tok"
            if width:
                cls += " ls-fired"
                style += f";border-bottom:{width}px solid #111;font-weight:bold"
            parts.append(
                f'<span class="{cls}" style="{style}" title="{html.escape(tip)}">'
                f"{html.escape(_visible(piece))}</span>" + "<br>" * piece.count("\n")
            )
        parts.append("</div>")
        parts.append(f'<div style="font-size:85%;color:#555">{html.escape(self.legend())}</div></div>')
        return "".join(parts)

    def ansi(self) -> str:
        """The answer with 256-colour backgrounds; fired tokens bold and underlined."""
        out = [self.title]
        if self.prompt is not None:
            out.append(f"\x1b[2m{self.prompt}\x1b[0m")
        text = []
        for piece, colour, width in zip(self.pieces, self.colours(), self._widths(), strict=True):
            fg = 16 if _text_colour(colour) == "#000" else 231
            mark = "\x1b[1;4m" if width else ""
            text.append(
                f"\x1b[48;5;{_xterm256(colour)}m\x1b[38;5;{fg}m{mark}{_visible(piece)}\x1b[0m"
                + "\n" * piece.count("\n")
            )
        out += ["".join(text), self.legend()]
        return "\n".join(out)

    def plain(self) -> str:
        """The answer as plain text, each token where steering fired in brackets: ``[token]``."""
        text = "".join(
            (f"[{_visible(p)}]" if f else _visible(p)) + "\n" * p.count("\n")
            for p, f in zip(self.pieces, self.fired, strict=True)
        )
        prompt = f"{self.prompt}\n---\n" if self.prompt is not None else ""
        return f"{self.title}\n{prompt}{text}"

    def __str__(self) -> str:
        return self.ansi()

    def __repr__(self) -> str:
        return f"TokenView(index={self.index}, {len(self)} tokens, {self.n_fired} fired)"


def token_view(
    generations: Any,
    index: int,
    tokenizer_or_model: Any,
    *,
    prompt: bool = False,
    threshold: float | None = None,
) -> TokenView:
    """The per-token view of generation ``index`` of a :class:`~lensteer.steering.generation.Generations`.

    Args:
        generations: What :func:`lensteer.generate` returned (anything with ``tokens``, ``fired``,
            ``shift``, ``projection`` and ``prompt_tokens`` per prompt will do).
        index: Which prompt's generation.
        tokenizer_or_model: A tokenizer, or a model holding one (``model.tokenizer``).
        prompt: Show the prompt's text (special tokens included) before the answer.
        threshold: Centre the colour scale here (StTP / StMP: ``steering.threshold``); default 0.
    """
    n = len(generations.tokens)
    if not -n <= index < n:
        raise ConfigError(f"index {index} out of range for {n} generations")
    tok = _tokenizer_of(tokenizer_or_model)
    ids = [int(t) for t in generations.tokens[index]]
    m = len(ids)
    projection = _per_token(getattr(generations, "projection", ()), index, m, math.nan)
    fired = [bool(x) for x in _per_token(generations.fired, index, m, False)]
    shift = _per_token(generations.shift, index, m, 0.0)
    text = (
        tok.decode([int(t) for t in generations.prompt_tokens[index]], skip_special_tokens=False)
        if prompt
        else None
    )
    if threshold is not None and not math.isfinite(threshold):
        raise ConfigError(f"threshold must be a finite number, got {threshold!r}")
    return TokenView(
        pieces=_pieces(tok, ids),
        projection=tuple(float(p) for p in projection),
        fired=tuple(fired),
        shift=tuple(float(s) for s in shift),
        centre=0.0 if threshold is None else float(threshold),
        threshold=threshold,
        prompt=text,
        index=index % n,
    )


def plot_token_view(
    view: TokenView, ax: Any = None, *, line_chars: int = 64, colorbar: bool = True
) -> tuple[Any, Any]:
    """A paper figure of a :class:`TokenView`: the answer as wrapped text boxes coloured by projection.

    Fired tokens are outlined (thicker: larger shift); the colour bar gives the projection scale.
    The monospace text is sized to fit ``line_chars`` characters across the axes; the prompt is not
    drawn (the HTML and text views show it with ``prompt=True``).

    Args:
        view: From :func:`token_view`.
        ax: Axes to draw on (default: a new figure sized to the text, 8 pt).
        line_chars: Characters per line before wrapping.
        colorbar: Draw the colour bar (below the text).

    Returns:
        ``(fig, ax)``; the token boxes are the ``Rectangle`` patches with ``gid`` ``"token-<k>"``.
    """
    if line_chars < 8:
        raise ConfigError(f"line_chars must be >= 8, got {line_chars}")
    places, n_lines = _layout(view, line_chars)
    with paper_style():
        if (
            ax is None
        ):  # 8 pt monospace, 0.2 in per line, at least 4 in wide for the title; the colour bar below
            text_w, text_h = _MONO_ADVANCE * 8 / 72 * (line_chars + 1), 0.2 * n_lines + 0.1
            below = 0.6 if colorbar else 0.05
            width, height = max(text_w + 0.1, 4.0), text_h + 0.35 + below
            fig = plt.figure(figsize=(width, height))
            ax = fig.add_axes((0.05 / width, below / height, text_w / width, text_h / height))
            cax = fig.add_axes((0.2, 0.4 / height, 0.6, 0.08 / height)) if colorbar else None
        else:
            fig, cax = ax.figure, None
        ax.set_axis_off()
        ax.set_xlim(-0.5, line_chars + 0.5)
        ax.set_ylim(n_lines + 0.1, -0.2)
        fontsize = ax.get_position().width * fig.get_figwidth() * 72 / ((line_chars + 1) * _MONO_ADVANCE)
        widths = view._widths()
        for k, ((x0, y0, label), colour) in enumerate(zip(places, view.colours(), strict=True)):
            ax.add_patch(
                Rectangle(
                    (x0, y0),
                    max(len(label), 1),
                    0.86,
                    facecolor=colour,
                    gid=f"token-{k}",
                    edgecolor="#111" if widths[k] else "none",
                    linewidth=0.6 * widths[k],
                )
            )
            ax.text(
                x0,
                y0 + 0.45,
                label,
                family="monospace",
                fontsize=fontsize,
                va="center",
                ha="left",
                color=_text_colour(colour),
                parse_math=False,
                fontweight="bold" if widths[k] else "normal",
            )
        ax.set_title(view.title, fontsize=9, loc="left", pad=4)
        if colorbar:
            mappable = ScalarMappable(norm=view.norm(), cmap=_inner_cmap())
            cb = (
                fig.colorbar(mappable, cax=cax, orientation="horizontal")
                if cax is not None
                else fig.colorbar(
                    mappable, ax=ax, orientation="horizontal", fraction=0.08, pad=0.04, aspect=40
                )
            )
            centre = f"threshold {view.centre:.3g}" if view.threshold is not None else "0"
            cb.set_label(
                f"projection before the edit (centre {centre}); outlined: steering fired", fontsize=7
            )
            cb.ax.tick_params(labelsize=7)
            cb.ax.xaxis.set_major_locator(MaxNLocator(6))
    return fig, ax


def _layout(view: TokenView, line_chars: int) -> tuple[list[tuple[int, int, str]], int]:
    """``(x, line, label)`` per token, wrapped at ``line_chars`` and after newlines; and the number of lines.
    Labels hold only glyphs the monospace font has (others become ``?``)."""
    has = _mono_font_has()
    places, x, y = [], 0, 0
    for piece in view.pieces:
        label = "".join(ch if has(ch) else "?" for ch in _visible(piece))
        label = label if len(label) <= line_chars else label[: line_chars - 1] + "…"
        if x + len(label) > line_chars and x > 0:
            x, y = 0, y + 1
        places.append((x, y, label))
        x += len(label)
        if "\n" in piece:
            x, y = 0, y + 1
    return places, max(1, places[-1][1] + 1 if places else 1)


# -- helpers ----------------------------------------------------------------------------------------


def _tokenizer_of(obj: Any) -> Any:
    if hasattr(obj, "decode") and hasattr(obj, "convert_ids_to_tokens"):
        return obj
    tok = getattr(obj, "tokenizer", None)
    if tok is None or not hasattr(tok, "decode"):
        raise ConfigError(f"token_view needs a tokenizer or a model with one, got {type(obj).__name__}")
    return tok


def _per_token(values: Sequence[Any], index: int, n: int, default: Any) -> list[Any]:
    """Row ``index`` of a per-prompt record as a list of ``n`` numbers (``default`` if it was not recorded)."""
    if not values:
        return [default] * n
    row = values[index].tolist() if hasattr(values[index], "tolist") else list(values[index])
    if len(row) != n:
        raise DataError(f"generation {index} has {n} tokens but {len(row)} per-token records")
    return row


def _pieces(tok: Any, ids: Sequence[int]) -> tuple[str, ...]:
    """The text each token adds to the decoded answer. A character split over several tokens (bytes
    of one UTF-8 character) appears with the token that completes it; the others show as empty."""
    pieces, before = [], ""
    for k in range(len(ids)):
        text = tok.decode(list(ids[: k + 1]), skip_special_tokens=False)
        if text.endswith("\ufffd"):  # an incomplete character so far
            pieces.append("")
        elif text.startswith(before):
            pieces.append(text[len(before) :])
            before = text
        else:  # decoding is not prefix-stable here (space clean-up): fall back to the token alone
            pieces.append(tok.decode([ids[k]], skip_special_tokens=False))
            before = text
    return tuple(pieces)


def _visible(piece: str) -> str:
    """Whitespace made visible: newlines ⏎, tabs ⇥, a token of spaces only ␣; an empty piece ∅."""
    if piece == "":
        return "∅"
    if piece.strip(" ") == "":
        return "␣" * len(piece)
    return "".join(_VISIBLE.get(ch, ch) for ch in piece)


def _text_colour(hex_colour: str) -> str:
    """Black or white text, whichever reads better on the background (relative luminance)."""
    r, g, b = (int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return "#000" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "#fff"


def _xterm256(hex_colour: str) -> int:
    """Nearest colour of the xterm 6x6x6 cube (codes 16..231)."""
    levels = (0, 95, 135, 175, 215, 255)

    def nearest(c: int) -> int:
        return min(range(6), key=lambda j: abs(levels[j] - c))

    r, g, b = (nearest(int(hex_colour[i : i + 2], 16)) for i in (1, 3, 5))
    return 16 + 36 * r + 6 * g + b


def _inner_cmap() -> ListedColormap:
    """The colour scale the tokens use (the inner 80% of ``CMAP``), for the colour bar."""
    base = colormaps[CMAP]
    return ListedColormap([base(0.1 + 0.8 * i / 255) for i in range(256)])


@functools.lru_cache(maxsize=1)
def _mono_font_has() -> Callable[[str], bool]:
    """Whether the monospace figure font has a glyph (as ``examples._font_has`` for the text font)."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    font = FT2Font(font_manager.findfont(font_manager.FontProperties(family="monospace")))
    return lambda ch: ch == " " or font.get_char_index(ord(ch)) != 0
