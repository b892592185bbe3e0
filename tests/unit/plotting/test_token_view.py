"""The per-token view of a generation, from hand-built records (no model): HTML, ANSI, plain text, figure."""

import math
import re
from html.parser import HTMLParser
from types import SimpleNamespace

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.colors import to_hex, to_rgb

from lensteer import plotting
from lensteer.errors import ConfigError, DataError
from lensteer.plotting.token_view import NO_PROJECTION
from lensteer.steering.generation import Generations

VOCAB = ["Hello", " world", "\n", "<b>&", " ", "fine", "!"]
# token id:  0        1        2      3     4     5      6
TOKENS = [0, 1, 2, 3, 4, 5, 6]
PROJECTION = [1.0, -2.0, 0.5, -1.0, 3.0, -0.2, 2.0]
FIRED = [False, True, False, True, False, True, False]
SHIFT = [0.0, 1.0, 0.0, 4.0, 0.0, 2.0, 0.0]


class WordTokenizer:
    """Decodes ids to the words above (``convert_ids_to_tokens`` marks it as a tokenizer)."""

    def __init__(self, vocab=VOCAB):
        self.vocab = vocab

    def decode(self, ids, skip_special_tokens=False):  # noqa: ARG002 - the tokenizer signature
        return "".join(self.vocab[i] for i in ids)

    def convert_ids_to_tokens(self, ids):
        return [self.vocab[i] for i in ids]


class ByteTokenizer(WordTokenizer):
    """Byte-level: one character may take several tokens (decoding a part gives U+FFFD)."""

    def decode(self, ids, skip_special_tokens=False):  # noqa: ARG002 - the tokenizer signature
        return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="replace")


def _generations(projection=PROJECTION, fired=FIRED, shift=SHIFT):
    return Generations(
        texts=("".join(VOCAB),),
        tokens=(torch.tensor(TOKENS),),
        prompt_tokens=(torch.tensor([3, 1]),),
        fired=(torch.tensor(fired),),
        shift=(torch.tensor(shift),),
        projection=(torch.tensor(projection),) if projection is not None else (),
    )


class _Spans(HTMLParser):
    """(classes, text, style) of each token span."""

    def __init__(self):
        super().__init__()
        self.spans, self._open = [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "span" and "ls-tok" in attrs.get("class", ""):
            self._open = [attrs["class"].split(), "", attrs["style"]]

    def handle_data(self, data):
        if self._open is not None:
            self._open[1] += data

    def handle_endtag(self, tag):
        if tag == "span" and self._open is not None:
            self.spans.append(tuple(self._open))
            self._open = None


def _spans(view):
    parser = _Spans()
    parser.feed(view._repr_html_())
    return parser.spans


def _background(style):
    return to_rgb(re.search(r"background:(#[0-9a-f]{6})", style).group(1))


def test_html_escapes_tokens_shows_whitespace_and_marks_exactly_the_fired_ones():
    view = plotting.token_view(_generations(), 0, WordTokenizer())
    page = view._repr_html_()
    assert "&lt;b&gt;&amp;" in page and "<b>&" not in page
    spans = _spans(view)
    assert [text for _, text, _ in spans] == ["Hello", " world", "⏎", "<b>&", "␣", "fine", "!"]
    assert ["ls-fired" in classes for classes, _, _ in spans] == FIRED
    assert [("border-bottom" in style) for _, _, style in spans] == FIRED
    assert "⏎</span><br>" in page  # the newline token is visible and still breaks the line
    assert "3/7 tokens" in page and "43%" in page and "underlined: steering fired" in page
    # a larger shift draws a thicker marker
    width = {
        text: int(re.search(r"border-bottom:(\d)px", style).group(1))
        for _, text, style in spans
        if "border-bottom" in style
    }
    assert width[" world"] < width["fine"] < width["<b>&"]


def test_colours_diverge_around_the_threshold_by_the_sign_of_the_projection():
    for threshold, centre in ((None, 0.0), (0.75, 0.75)):
        view = plotting.token_view(_generations(), 0, WordTokenizer(), threshold=threshold)
        assert view.centre == centre
        for (_, _, style), p in zip(_spans(view), PROJECTION, strict=True):
            r, _, b = _background(style)
            assert (b > r) if p > centre else (r > b), (p, centre, style)
    # further from the centre: a stronger colour (further from white)
    view = plotting.token_view(_generations(), 0, WordTokenizer())
    strength = [1 - min(to_rgb(c)) for c in view.colours()]
    assert strength[1] > strength[3] > strength[5] and strength[4] > strength[6] > strength[0]


def test_without_projections_the_tokens_are_grey_and_the_prompt_can_be_shown():
    view = plotting.token_view(
        _generations(projection=None), 0, SimpleNamespace(tokenizer=WordTokenizer()), prompt=True
    )
    assert all(math.isnan(p) for p in view.projection)
    assert set(view.colours()) == {NO_PROJECTION}
    assert view.prompt == "<b>& world" and "&lt;b&gt;&amp; world" in view._repr_html_()


def test_ansi_and_plain_text_mark_exactly_the_fired_tokens():
    view = plotting.token_view(_generations(), 0, WordTokenizer())
    body = view.ansi().split("\n", 1)[1]
    segments = [s for s in re.split(r"\x1b\[0m\n?", body) if s.startswith("\x1b[48;5;")]
    assert len(segments) == len(TOKENS)
    assert ["\x1b[1;4m" in s for s in segments] == FIRED
    assert all(re.match(r"\x1b\[48;5;(\d+)m", s) for s in segments)
    assert str(view) == view.ansi()
    assert view.plain().splitlines()[1:] == ["Hello[ world]⏎", "[<b>&]␣[fine]!"]
    assert repr(view) == "TokenView(index=0, 7 tokens, 3 fired)"


def test_the_figure_draws_one_box_per_token_and_outlines_the_fired_ones():
    view = plotting.token_view(_generations(), 0, WordTokenizer(), threshold=0.0)
    fig, ax = plotting.plot_token_view(view, line_chars=12)
    try:
        boxes = sorted(
            (p for p in ax.patches if (p.get_gid() or "").startswith("token-")),
            key=lambda p: int(p.get_gid().split("-")[1]),
        )
        assert len(boxes) == len(TOKENS)
        assert [p.get_linewidth() > 0 for p in boxes] == FIRED
        assert [to_hex(p.get_facecolor()) for p in boxes] == list(view.colours())
        assert len(fig.axes) == 2  # the tokens and the colour bar
        assert len({p.get_y() for p in boxes}) >= 2  # wrapped (and broken after the newline)
    finally:
        plt.close(fig)
    fig, ax = plt.subplots()
    try:
        assert plotting.plot_token_view(view, ax=ax, colorbar=False) == (fig, ax)
    finally:
        plt.close(fig)


def test_a_character_split_over_byte_tokens_appears_with_the_token_that_completes_it():
    vocab = [b"caf", "é".encode()[:1], "é".encode()[1:], b"!"]
    gens = Generations(
        texts=("café!",),
        tokens=(torch.tensor([0, 1, 2, 3]),),
        prompt_tokens=(torch.tensor([0]),),
        fired=(torch.zeros(4, dtype=torch.bool),),
        shift=(torch.zeros(4),),
        projection=(torch.zeros(4),),
    )
    view = plotting.token_view(gens, 0, ByteTokenizer(vocab))
    assert view.pieces == ("caf", "", "é", "!") and "".join(view.pieces) == "café!"
    assert view.plain().endswith("caf∅é!")


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ConfigError, match="index 3 out of range"):
        plotting.token_view(_generations(), 3, WordTokenizer())
    with pytest.raises(ConfigError, match="tokenizer"):
        plotting.token_view(_generations(), 0, object())
    with pytest.raises(DataError, match="per-token records"):
        plotting.token_view(_generations(fired=FIRED[:3], shift=SHIFT[:3]), 0, WordTokenizer())
    with pytest.raises(DataError, match="one projection"):
        plotting.TokenView(pieces=("a",), projection=(), fired=(False,), shift=(0.0,))
