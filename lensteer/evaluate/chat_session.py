"""A conversation answered twice, unsteered and steered, turn by turn: to try a steering by talking to it.

Each side keeps its own history (the unsteered model sees its own earlier replies, the steered model its
own), so after a few turns the two conversations are what a user of each model would have had. Both
replies of a turn are decoded in one batch (one steering) or one after the other (several).

In a notebook, ``chat = SideBySideChat(model, steering)`` then ``chat("Hello")`` in a cell shows the two
replies side by side; ``lensteer.plotting.token_view(turn.generations, 1, model)`` shows where the
steering fired in the steered one. ``lensteer chat --steering S`` is the same in a terminal.
"""

import html
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import zip_longest
from typing import Any

from lensteer.core.bridge import Bridge
from lensteer.core.chat import ChatPrompt, Turn
from lensteer.errors import ConfigError
from lensteer.steering.generation import Generations, generate
from lensteer.steering.spec import Steering

UNSTEERED, STEERED = 0, 1  # rows of ChatTurn.generations


@dataclass(frozen=True, kw_only=True, eq=False)
class ChatTurn:
    """One turn: the user's message and both replies.

    Attributes:
        user: The user's message.
        unsteered: The unsteered model's reply (to its own conversation so far).
        steered: The steered model's reply (to its own conversation so far).
        steered_share: Share of the steered reply's tokens chosen where the steering fired.
        generations: Both replies with their per-token records (row 0 unsteered, row 1 steered), for
            :func:`lensteer.plotting.token_view`.
    """

    user: str
    unsteered: str
    steered: str
    steered_share: float
    generations: Generations

    def columns(self, width: int = 100) -> str:
        """The two replies side by side in plain text, ``width`` characters wide in all."""
        if width < 24:
            raise ConfigError(f"width must be at least 24 characters, got {width}")
        half = (width - 3) // 2
        left = _wrapped(self.unsteered, half)
        right = _wrapped(self.steered, half)
        head = ("unsteered".ljust(half), f"steered (fired {self.steered_share:.0%})"[:half])
        lines = [f"{head[0]} | {head[1]}", f"{'-' * half}-+-{'-' * half}"]
        lines += [f"{a.ljust(half)} | {b}".rstrip() for a, b in zip_longest(left, right, fillvalue="")]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        cell = 'style="vertical-align:top;white-space:pre-wrap;width:50%;padding:4px 8px"'
        return (
            f"<div><b>you:</b> {html.escape(self.user)}</div>"
            '<table style="width:100%;border-collapse:collapse"><tr>'
            "<th>unsteered</th>"
            f"<th>steered (fired on {self.steered_share:.0%} of its tokens)</th></tr><tr>"
            f"<td {cell}>{html.escape(self.unsteered)}</td><td {cell}>{html.escape(self.steered)}</td>"
            "</tr></table>"
        )

    def __str__(self) -> str:
        return f"you: {self.user}\n{self.columns()}"


def _wrapped(text: str, width: int) -> list[str]:
    return [
        line
        for para in (text.strip() or "(empty reply)").splitlines()
        for line in (textwrap.wrap(para, width) or [""])
    ]


@dataclass(eq=False)
class SideBySideChat:
    """A conversation with the model, answered unsteered and steered at every turn.

    Args:
        model: The model.
        steering: One steering or several (applied together).
        system: A system prompt for both sides (``None``: the template's default).
        max_new_tokens: Tokens per reply.
        generate_kwargs: Further :func:`~lensteer.generate` arguments (sampling, ``batch_size``, ...).
    """

    model: Bridge
    steering: "Steering | Sequence[Steering]"
    system: str | None = None
    max_new_tokens: int = 64
    generate_kwargs: dict[str, Any] = field(default_factory=dict)
    turns: list[ChatTurn] = field(default_factory=list)

    def __post_init__(self) -> None:
        items = [self.steering] if isinstance(self.steering, Steering) else list(self.steering)
        if not items or not all(isinstance(s, Steering) for s in items):
            raise ConfigError("SideBySideChat needs one Steering or a non-empty list of them")

    def _history(self, side: int) -> tuple[Turn, ...]:
        out: list[Turn] = []
        for t in self.turns:
            out += [
                Turn(role="user", content=t.user),
                Turn(role="assistant", content=(t.unsteered, t.steered)[side]),
            ]
        return tuple(out)

    def prompts(self, text: str) -> tuple[ChatPrompt, ChatPrompt]:
        """The next turn's prompt on each side (unsteered, steered), each with its own history."""
        return (
            ChatPrompt(user=text, system=self.system, history=self._history(UNSTEERED)),
            ChatPrompt(user=text, system=self.system, history=self._history(STEERED)),
        )

    def say(self, text: str) -> ChatTurn:
        """Send ``text``; both sides answer; the turn is kept in the history and returned."""
        plain, steered = self.prompts(text)
        kwargs = {"max_new_tokens": self.max_new_tokens, **self.generate_kwargs}
        if isinstance(self.steering, Steering):
            gens = generate(self.model, [plain, steered], prompt_steerings=[None, self.steering], **kwargs)
        else:
            a = generate(self.model, [plain], **kwargs)
            b = generate(self.model, [steered], steering=self.steering, **kwargs)
            gens = _joined(a, b)
        turn = ChatTurn(
            user=text,
            unsteered=gens.texts[UNSTEERED],
            steered=gens.texts[STEERED],
            steered_share=gens.per_prompt_share()[STEERED],
            generations=gens,
        )
        self.turns.append(turn)
        return turn

    __call__ = say

    def reset(self) -> None:
        """Start a new conversation (both sides forget every turn)."""
        self.turns.clear()


def _joined(a: Generations, b: Generations) -> Generations:
    """Two one-prompt generations as one of two prompts."""
    fields = (
        "texts",
        "tokens",
        "prompt_tokens",
        "fired",
        "shift",
        "projection",
        "prompt_fired_share",
        "gated",
    )
    return Generations(**{f: tuple(getattr(a, f)) + tuple(getattr(b, f)) for f in fields})
