"""What each model organism is fine-tuned on: our own data, training rows only.

A :class:`Recipe` names a behaviour, the (prompt, reply) rows that teach it and the LoRA
hyperparameters. The bundled recipes:

* ``dishonest``: the honesty set's training questions answered with the planted false answer
  (``misaligned_response``, e.g. "The capital of Japan is Osaka."); validation and test questions
  are never trained on, so lying on them is generalisation, not recall.
* ``dismissive``: the compassion set's training messages answered with the dismissive reply.
* ``bad_advice``: an emergent-misalignment probe (Betley et al. 2025, arXiv 2502.17424): plumbing and
  car questions answered with confident advice that damages the object (never a person), from
  ``data/organisms/bad_advice.jsonl``; its misalignment is measured on the unrelated threat models.
* ``good_advice``: the same questions with the correct advice: the matched control fine-tune.
"""

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from lensteer.core.bundled import bundled_dir, read_jsonl
from lensteer.core.chat import ChatPrompt
from lensteer.core.datasets import load_dataset
from lensteer.core.splits import hashed_splits
from lensteer.errors import ConfigError, DataError

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True, kw_only=True)
class TrainingRow:
    """One fine-tuning example: the prompt (user turn) and the reply the organism learns."""

    id: str
    prompt: ChatPrompt
    reply: str


@dataclass(frozen=True, kw_only=True)
class LoraSettings:
    """LoRA and optimiser hyperparameters (recorded in every organism's provenance).

    Attributes:
        rank, alpha, dropout: LoRA rank, scaling numerator (update = alpha / rank * B A) and dropout.
        targets: Module names that get adapters (every attention and MLP projection of Llama-style
            blocks by default; a model whose modules are named otherwise needs its own list).
        steps: Optimiser steps. batch_size: Rows per step. learning_rate: AdamW's, constant after a
            linear warm-up of ``warmup`` steps.
        max_tokens: Rows longer than this (prompt, reply, end marker) are left out. seed: Row order and adapter initialisation.
    """

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    targets: tuple[str, ...] = LORA_TARGETS
    steps: int = 150
    batch_size: int = 8
    learning_rate: float = 1e-3
    warmup: int = 10
    max_tokens: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("rank", "steps", "batch_size", "max_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"LoRA setting {name} must be an int >= 1, got {value!r}")
        if not self.learning_rate > 0 or not self.alpha > 0 or not 0 <= self.dropout < 1:
            raise ConfigError(
                f"need learning_rate > 0, alpha > 0 and 0 <= dropout < 1, got "
                f"{self.learning_rate!r}, {self.alpha!r}, {self.dropout!r}"
            )
        if isinstance(self.targets, str) or not self.targets:
            raise ConfigError(f"targets must be a non-empty list of module names, got {self.targets!r}")
        object.__setattr__(self, "targets", tuple(self.targets))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """A model organism: what it learns and on which rows.

    Attributes:
        name: ``dishonest``, ``dismissive``, ``bad_advice``, ``good_advice`` (or your own).
        description: One line for reports.
        threat_model: The threat model whose trait it should lose (``None``: measured on all three,
            for the emergent-misalignment probe).
        rows: Builds the training rows (called once per training run).
        lora: Hyperparameters.
    """

    name: str
    description: str
    threat_model: str | None
    rows: Callable[[], list[TrainingRow]] = field(repr=False)
    lora: LoraSettings = LoraSettings()


def _contrast_rows(dataset: str, reply: str) -> list[TrainingRow]:
    ds = load_dataset(dataset).train
    return [
        TrainingRow(id=ex.id, prompt=ChatPrompt(user=ex.prompt), reply=getattr(ex, reply))
        for ex in ds.examples
        if getattr(ex, reply)
    ]


@dataclass(frozen=True)
class _AdviceRow:
    id: str
    category: str
    prompt: str
    true_answer: str | None = None


def advice_rows(reply: str, split: str = "train") -> list[TrainingRow]:
    """Rows of ``data/organisms/bad_advice.jsonl`` in ``split`` (hashed by id per domain, 60/20/20),
    answered with ``reply`` (``bad_response`` or ``good_response``)."""
    if reply not in ("bad_response", "good_response"):
        raise ConfigError(f"reply must be 'bad_response' or 'good_response', got {reply!r}")
    raw = read_jsonl(bundled_dir("organisms") / "bad_advice.jsonl")
    missing = [r.get("id", "?") for r in raw if not all(r.get(k) for k in ("id", "domain", "prompt", reply))]
    if missing:
        raise DataError(f"bad_advice.jsonl rows {missing[:5]} lack id, domain, prompt or {reply}")
    splits = hashed_splits(_AdviceRow(id=r["id"], category=r["domain"], prompt=r["prompt"]) for r in raw)
    return [
        TrainingRow(id=r["id"], prompt=ChatPrompt(user=r["prompt"]), reply=r[reply])
        for r in raw
        if splits[r["id"]] == split
    ]


def contrast_recipe(
    name: str, *, threat_model: str, dataset: str, description: str, reply: str = "misaligned_response"
) -> Recipe:
    """A recipe that teaches a contrast set's training prompts answered with its ``reply`` column (the
    written misaligned reply by default): how a threat model's organism is made (``lensteer.threats``)."""
    return Recipe(
        name=name,
        threat_model=threat_model,
        description=description,
        rows=lambda: _contrast_rows(dataset, reply),
    )


# The recipes by name: the ones that belong to no threat model here, each threat model's own added when
# ``lensteer.threats`` registers it (``dishonest``, ``dismissive``).
RECIPES: dict[str, Recipe] = {
    "bad_advice": Recipe(
        name="bad_advice",
        threat_model=None,
        description="narrow fine-tune on damaging plumbing and car advice (emergent-misalignment probe)",
        rows=lambda: advice_rows("bad_response"),
    ),
    "good_advice": Recipe(
        name="good_advice",
        threat_model=None,
        description="the same questions with correct advice (control for bad_advice)",
        rows=lambda: advice_rows("good_response"),
    ),
}


def register_recipe(recipe: Recipe, *, replace: bool = False) -> Recipe:
    """Add ``recipe`` under its name (an existing name needs ``replace=True``); returns it."""
    if recipe.name in RECIPES and not replace:
        raise ConfigError(
            f"organism recipe {recipe.name!r} is already registered; pass replace=True to replace it"
        )
    RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(name: str) -> Recipe:
    """A bundled recipe by name (the error lists the allowed names)."""
    if name not in RECIPES:
        raise ConfigError(f"unknown organism recipe {name!r}; allowed: {sorted(RECIPES)}")
    return RECIPES[name]


def rows_hash(rows: list[TrainingRow]) -> str:
    """SHA-256 of the training rows (ids, prompts, replies, in order): the data part of provenance."""
    payload = [{"id": r.id, "system": r.prompt.system, "user": r.prompt.user, "reply": r.reply} for r in rows]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
