"""The study's capability scores (multiple-choice accuracy, paragraph cross-entropy), once per distinct edit.

Capability is teacher-forced on harmless items, so it depends only on the steering's edit and the
system prompt, not on the threat model or the condition's name: each distinct (edit, system prompt) is
scored once per study and cached in the evaluation sets (the unsteered cross-entropy serves the
baseline, the prompting baseline and every delta; an edit equal to another, such as a KL-matched twin,
reuses its scores). The multiple-choice items get the steering passed to ``mc_accuracy``, so each
question runs once and its options branch from it (``benchmarks/bench_capability.py``: 1.6-2x).
"""

import hashlib
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any

import torch

from lensteer.core.bridge import Bridge
from lensteer.evaluate.capability import mc_accuracy, text_cross_entropy
from lensteer.steering.hooks import steer
from lensteer.steering.positions import Window
from lensteer.steering.spec import Steering
from lensteer.study.config import StudyConfig

if TYPE_CHECKING:
    from lensteer.study.evaluation import EvalSets


def teacher_forced(steering: Steering) -> Steering:
    """Capability is teacher-forced, so every position (but the attention-sink first token, which is
    never a generated one) stands in for a generated one; no gate (the items are harmless anyway)."""
    return replace(steering.placed(positions=Window(1, None)), gate=None)


def edit_key(steering: Steering | None) -> str:
    """A content key of what a teacher-forced capability score depends on: the edit (direction and every
    field but the gate and provenance), or ``unsteered``. Two equal edits share the key (the direction is
    compared to 1e-6, so renormalising a unit vector is no change)."""
    if steering is None:
        return "unsteered"
    unit = torch.round(steering.unit.detach().cpu().double() * 1e6).to(torch.int64)
    digest = hashlib.sha256(unit.numpy().tobytes())
    for f in fields(steering):
        if f.name not in ("unit", "gate", "info"):
            digest.update(f"{f.name}={getattr(steering, f.name)!r};".encode())
    return digest.hexdigest()


def paragraph_cross_entropy(
    model: Bridge,
    steering: Steering | None,
    paragraphs: Sequence[str],
    cache: dict[str, Any],
    config: StudyConfig,
) -> float:
    """Cross-entropy of the held-out ``paragraphs`` with ``steering`` on (teacher-forced), once per distinct
    edit (kept in ``cache``)."""
    key = f"cross_entropy:{edit_key(steering)}"
    if key not in cache:
        with torch.inference_mode(), steer(model, steering) if steering is not None else nullcontext():
            cache[key] = text_cross_entropy(model, paragraphs, batch_size=config.batch_size)
    value: float = cache[key]
    return value


def capability_fields(
    model: Bridge, steering: Steering | None, system: str | None, sets: "EvalSets", config: StudyConfig
) -> dict[str, Any]:
    """A condition's multiple-choice accuracy (with its per-item flags) and paragraph cross-entropy with its
    steering on, each once per distinct (edit, system prompt) in the study (cached in ``sets``)."""
    out: dict[str, Any] = {}
    s = None if steering is None else teacher_forced(steering)
    if sets.mc:
        key = f"mc:{edit_key(s)}:{system!r}"
        if key not in sets.cache:
            sets.cache[key] = mc_accuracy(
                model, sets.mc, batch_size=config.batch_size, system=system, steering=s
            )
        mc = sets.cache[key]
        out |= {
            "capability": mc.accuracy,
            "capability_items": len(sets.mc),
            "capability_flags": [bool(c) for c in mc.correct],
        }
    if sets.paragraphs:
        out["cross_entropy"] = paragraph_cross_entropy(model, s, sets.paragraphs, sets.cache, config)
    return out
