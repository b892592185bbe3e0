"""Side-by-side text: the same prompts answered unsteered and steered, to see an effect in seconds."""

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lensteer.core.bridge import Bridge
from lensteer.core.chat import ChatPrompt
from lensteer.errors import DataError
from lensteer.steering.generation import generate
from lensteer.steering.spec import Steering


@dataclass(frozen=True, kw_only=True, eq=False)
class SideBySide:
    """Unsteered and steered answers to the same prompts.

    Attributes:
        prompts: The user messages.
        unsteered: Unsteered answers.
        steered: Steered answers.
        steered_share: Per prompt, the share of generated tokens chosen where steering fired.
        description: The steering, in one line.
    """

    prompts: tuple[str, ...]
    unsteered: tuple[str, ...]
    steered: tuple[str, ...]
    steered_share: tuple[float, ...]
    description: str

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per prompt (for pandas or JSON)."""
        return [
            {"prompt": p, "unsteered": u, "steered": s, "steered_share": f}
            for p, u, s, f in zip(self.prompts, self.unsteered, self.steered, self.steered_share, strict=True)
        ]

    def to_markdown(self) -> str:
        """A Markdown table (renders in Jupyter and on GitHub)."""

        def cell(text: str) -> str:
            return text.replace("|", "\\|").replace("\n", " ")

        lines = [
            f"**{cell(self.description)}**",
            "",
            "| prompt | unsteered | steered | steered tokens |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {cell(r['prompt'])} | {cell(r['unsteered'])} | {cell(r['steered'])} | {r['steered_share']:.0%} |"
            for r in self.to_rows()
        ]
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def __str__(self) -> str:
        out = [self.description, ""]
        for r in self.to_rows():
            out.append(f"PROMPT: {r['prompt']}")
            out.append(textwrap.indent(textwrap.fill(r["unsteered"], 96), "  unsteered | "))
            out.append(
                textwrap.indent(
                    textwrap.fill(r["steered"], 96), f"  steered   | ({r['steered_share']:.0%} tokens) "
                )
            )
            out.append("")
        return "\n".join(out)


def side_by_side(
    model: Bridge,
    prompts: Sequence["str | ChatPrompt"],
    steering: "Steering | Sequence[Steering]",
    *,
    max_new_tokens: int = 48,
    **kwargs: Any,
) -> SideBySide:
    """Answer ``prompts`` without and with ``steering`` (same decoding settings) and pair the texts.

    Example:
        >>> print(lensteer.side_by_side(model, ["How do I pick a lock?"], steering))  # doctest: +SKIP
    """
    if isinstance(prompts, str) or not prompts:
        raise DataError("side_by_side needs a non-empty list of prompts")
    plain = generate(model, prompts, max_new_tokens=max_new_tokens, **kwargs)
    steered = generate(model, prompts, steering=steering, max_new_tokens=max_new_tokens, **kwargs)
    items = (steering,) if isinstance(steering, Steering) else tuple(steering)
    return SideBySide(
        prompts=tuple(p.user if isinstance(p, ChatPrompt) else p for p in prompts),
        unsteered=plain.texts,
        steered=steered.texts,
        steered_share=tuple(steered.per_prompt_share()),
        description=" + ".join(s.describe() for s in items),
    )
