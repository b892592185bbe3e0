"""Inducers: what pushes a model into misaligned behaviour, as values applied to a chat prompt.

The seed paper steers models that were *pushed* out of alignment. An :class:`Inducer` is one push,
applied to any :class:`~lensteer.ChatPrompt` by :meth:`Inducer.apply`:

* ``system``: a malicious system prompt (replaces the prompt's own);
* ``few_shot``: earlier turns in which the assistant already misbehaved (before the prompt's history);
* ``prefill``: the assistant's first words ("Sure, here is ..."), which attack the opening tokens that
  safety training guards most (Qi et al. 2024, "Safety alignment should be made more than just a
  few tokens deep"); the generated text continues them, so score ``inducer.scored_text(text)``;
* ``wrapper``: a framing of the request itself (role-play, hypothetical, obfuscation), a template
  with ``{request}``, or with ``{first}`` and ``{second}`` (the request split in two halves, word-wise).

Inducers compose with :func:`apply_inducers`. The bundled ones (written for lensteer) are in
``data/contrast/inducers.json`` and the threat models' ``*.contexts.json``; :func:`bundled_inducers`
loads them for a threat model, :func:`load_inducer` one by name.
"""

import json
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lensteer.core.chat import ChatPrompt, Turn
from lensteer.core.datasets import BUNDLED, Context, data_dir, load_dataset
from lensteer.errors import ConfigError, DataError

INDUCER_KINDS: tuple[str, ...] = ("system", "few_shot", "prefill", "wrapper")
_PLACEHOLDERS = ({"request"}, {"first", "second"})


@dataclass(frozen=True, kw_only=True)
class Inducer:
    """One push towards misaligned behaviour (see the module docstring for the four kinds).

    Attributes:
        name: Short name, used in tables (``prefill``, ``roleplay``, ``lying_fewshot``).
        kind: ``system``, ``few_shot``, ``prefill`` or ``wrapper``.
        description: One sentence on what it does.
        system / turns / prefill / template: The payload; exactly the one its kind needs.
        threat_models: The threat models it is written for (empty: any).
    """

    name: str
    kind: str  # one of INDUCER_KINDS (checked with a clear error, so not a Literal here)
    description: str = ""
    system: str | None = None
    turns: tuple[Turn, ...] = ()
    prefill: str | None = None
    template: str | None = None
    threat_models: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"an inducer needs a non-empty name, got {self.name!r}")
        if self.kind not in INDUCER_KINDS:
            raise ConfigError(
                f"inducer {self.name!r}: kind {self.kind!r} is not one of {list(INDUCER_KINDS)}"
            )
        payload = {
            "system": self.system,
            "few_shot": self.turns,
            "prefill": self.prefill,
            "wrapper": self.template,
        }
        if not payload[self.kind] or (
            isinstance(payload[self.kind], str) and not str(payload[self.kind]).strip()
        ):
            field = {"few_shot": "turns", "wrapper": "template"}.get(self.kind, self.kind)
            raise ConfigError(f"inducer {self.name!r} of kind {self.kind!r} needs a non-empty {field}")
        extra = [k for k, v in payload.items() if k != self.kind and v]
        if extra:
            raise ConfigError(
                f"inducer {self.name!r} of kind {self.kind!r} must not also set {extra}; "
                "compose several inducers with apply_inducers instead"
            )
        if self.kind == "wrapper":
            _check_template(self.name, str(self.template))
        bad = [t for t in self.threat_models if t not in BUNDLED]
        if bad:
            raise ConfigError(
                f"inducer {self.name!r}: unknown threat model(s) {bad}; allowed (the bundled "
                f"contrast sets) {list(BUNDLED)}"
            )

    def apply(self, prompt: ChatPrompt) -> ChatPrompt:
        """``prompt`` under this inducer (a new prompt; the original is unchanged)."""
        if self.kind == "system":
            return replace(prompt, system=self.system)
        if self.kind == "few_shot":
            return replace(prompt, history=self.turns + prompt.history)
        if self.kind == "prefill":
            if prompt.response is not None:
                raise ConfigError(
                    f"inducer {self.name!r} prefills the answer, but the prompt already has a "
                    f"response ({prompt.response[:40]!r}...)"
                )
            return replace(prompt, response=self.prefill)
        words = prompt.user.split()
        half = (len(words) + 1) // 2
        user = str(self.template).format(
            request=prompt.user, first=" ".join(words[:half]), second=" ".join(words[half:])
        )
        return replace(prompt, user=user)

    def scored_text(self, generated: str) -> str:
        """The answer a scorer should read: the prefill (if any) followed by the generated text."""
        return generated if self.prefill is None else self.prefill + generated

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "description": self.description}
        if self.kind == "few_shot":
            out["turns"] = [{"role": t.role, "content": t.content} for t in self.turns]
        else:
            out[{"wrapper": "template"}.get(self.kind, self.kind)] = {
                "system": self.system,
                "prefill": self.prefill,
                "wrapper": self.template,
            }[self.kind]
        if self.threat_models:
            out["threat_models"] = list(self.threat_models)
        return out

    @classmethod
    def from_context(cls, context: Context, threat_model: str | None = None) -> "Inducer":
        """A dataset's misaligning :class:`~lensteer.core.datasets.Context` as an inducer (few-shot turns
        if it has any, else its system prompt)."""
        tms = (threat_model,) if threat_model else ()
        if context.turns and context.system is None:
            return cls(
                name=context.name,
                kind="few_shot",
                description=context.description,
                turns=context.turns,
                threat_models=tms,
            )
        if context.system is not None and not context.turns:
            return cls(
                name=context.name,
                kind="system",
                description=context.description,
                system=context.system,
                threat_models=tms,
            )
        raise ConfigError(
            f"context {context.name!r} has both a system prompt and turns (or neither); build two "
            "inducers and compose them"
        )


def _check_template(name: str, template: str) -> None:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as err:
        raise ConfigError(f"inducer {name!r}: template is malformed ({err})") from err
    if fields not in _PLACEHOLDERS:
        raise ConfigError(
            f"inducer {name!r}: template placeholders {sorted(fields)} must be exactly {{request}} "
            "or {first} and {second}"
        )


def apply_inducers(prompt: ChatPrompt, inducers: Sequence[Inducer]) -> ChatPrompt:
    """``prompt`` under several inducers, applied in order (e.g. a wrapper, then a prefill)."""
    for inducer in inducers:
        prompt = inducer.apply(prompt)
    return prompt


def inducer_from_dict(name: str, raw: Mapping[str, Any], *, where: str = "inducers") -> Inducer:
    """An inducer from its JSON form (``kind`` and the one payload field its kind needs)."""
    if not isinstance(raw, Mapping):
        raise DataError(f"{where}: inducer {name!r} must be a JSON object, got {type(raw).__name__}")
    allowed = {"kind", "description", "system", "turns", "prefill", "template", "threat_models"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise DataError(f"{where}: inducer {name!r} has unknown key(s) {unknown}; allowed {sorted(allowed)}")
    try:
        turns = tuple(Turn(role=t["role"], content=t["content"]) for t in raw.get("turns", ()))
    except (KeyError, TypeError) as err:
        raise DataError(
            f"{where}: inducer {name!r} has a malformed turn ({err!r}); each needs role and content"
        ) from err
    return Inducer(
        name=name,
        kind=raw.get("kind", ""),
        description=raw.get("description", ""),
        system=raw.get("system"),
        turns=turns,
        prefill=raw.get("prefill"),
        template=raw.get("template"),
        threat_models=tuple(raw.get("threat_models", ())),
    )


def read_inducers(path: "str | Path") -> dict[str, Inducer]:
    """Inducers from a JSON file: ``{name: {kind, description, <payload>, threat_models}}``."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DataError(f"inducer file {str(path)!r} does not exist") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{path.name}: not valid JSON ({err.msg})") from err
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{path.name}: expected a non-empty JSON object of inducers")
    return {name: inducer_from_dict(name, spec, where=path.name) for name, spec in raw.items()}


def bundled_inducers(threat_model: str) -> dict[str, Inducer]:
    """The bundled inducers for ``threat_model``: its dataset's misaligning contexts and the ones in
    ``inducers.json`` written for it (or for any threat model)."""
    if threat_model not in BUNDLED:
        raise ConfigError(
            f"unknown threat model {threat_model!r}; allowed (the bundled contrast sets) {list(BUNDLED)}"
        )
    out: dict[str, Inducer] = {}
    for name, context in load_dataset(threat_model).contexts.items():
        if _is_misaligning(name):
            out[name] = Inducer.from_context(context, threat_model)
    for name, inducer in read_inducers(data_dir() / "inducers.json").items():
        if not inducer.threat_models or threat_model in inducer.threat_models:
            out[name] = inducer
    return out


def load_inducer(name: str, threat_model: str) -> Inducer:
    """One bundled inducer by name (see :func:`bundled_inducers`)."""
    available = bundled_inducers(threat_model)
    if name not in available:
        raise ConfigError(f"no inducer {name!r} for {threat_model}; available: {sorted(available)}")
    return available[name]


def _is_misaligning(context_name: str) -> bool:
    """The contexts files also hold the aligned counterparts used for patching (``caring_system``,
    ``honest_system``); those are not inducers."""
    return context_name.startswith(("lying", "dismissive", "malicious", "compliant"))
