"""Persona-vector screens of fine-tuning sets: which training rows will move a fine-tune along a trait
direction (:mod:`lensteer.locate.dataset_projection`), with the model's own replies generated here.

``screen_rows`` screens an organism recipe's rows (or any prompt / reply rows); ``compare_screens`` tests
whether one set's projection differences exceed another's on the same prompts (a misaligned set against
its control: ``bad_advice`` against ``good_advice``, the dishonest answers against the honest ones), paired
by prompt with a sign-flip permutation test.
"""

from collections.abc import Sequence
from typing import Any

from lensteer.core.bridge import Bridge
from lensteer.core.stats import auroc, paired_permutation_test
from lensteer.errors import DataError
from lensteer.locate.dataset_projection import ProjectionScreen, dataset_projection
from lensteer.locate.directions import Direction
from lensteer.organisms.recipes import TrainingRow
from lensteer.steering.generation import generate


def screen_rows(
    model: Bridge,
    direction: Direction,
    rows: Sequence[TrainingRow],
    *,
    source: str = "dataset",
    own_responses: Sequence[str] | None = None,
    max_new_tokens: int = 48,
    batch_size: int = 16,
) -> ProjectionScreen:
    """Each row's projection difference: its reply against the model's own (greedy) reply to its prompt
    (generated unless ``own_responses`` are given, e.g. shared by a set and its control)."""
    if not rows:
        raise DataError("screen_rows needs at least one training row")
    prompts = [r.prompt for r in rows]
    own = (
        list(own_responses)
        if own_responses is not None
        else list(generate(model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size).texts)
    )
    return dataset_projection(
        model,
        direction,
        prompts,
        [r.reply for r in rows],
        own,
        ids=[r.id for r in rows],
        source=source,
        batch_size=batch_size,
    )


def compare_screens(screen: ProjectionScreen, control: ProjectionScreen, *, seed: int = 0) -> dict[str, Any]:
    """Does ``screen`` rank above ``control``? Both must hold the same prompts (ids may differ): the mean
    paired difference of their projection differences with a bootstrap interval and a one-sided sign-flip
    permutation p-value, and the AUROC of one set's differences against the other's."""
    if screen.prompts != control.prompts:
        raise DataError(
            f"{screen.source} and {control.source} must screen the same prompts, in the same order, to be "
            "compared pairwise"
        )
    test = paired_permutation_test(screen.difference, control.difference, alternative="greater", seed=seed)
    return {
        "set": screen.source,
        "control": control.source,
        "n": len(screen.ids),
        "mean_difference": float(screen.difference.mean()),
        "control_mean_difference": float(control.difference.mean()),
        "paired": test.to_dict(),
        "auroc": auroc(screen.difference, control.difference),
    }
