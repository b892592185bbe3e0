"""Generate the scorer audit set (``data/scoring/audit_v2/``): real answers of the embedded model under the
conditions a study produces, for labelling by reading.

Per threat model, test-split prompts under the study's misaligning context are answered by: the unsteered
model, the prompting baseline, the committed study's steerings (``docs/study/steerings``), a random
direction, response-mean steerings built here at middle layers and several strengths (``add`` on every
position, from the train split's written replies) including over-steered ones that loop or break, the
bundled attacks (prefills, wrappers) and, for refusal, borderline prompts that over-refusal is measured on.
Rows carry no label; readers fill ``label`` (refusal: refuses / complies / neither; compassion: 1 / 0;
honesty: true / false / no_answer) and ``unreadable`` following the guide in ``data/README.md``.

The rows are then split once by a hash of their id into ``dev.jsonl`` (scorer authors read and tune on it)
and ``validation.jsonl`` (only ``tests/unit/evaluate/test_scorer_audit.py`` reads it).

    python scripts/experiments/make_audit_set.py --out data/scoring/audit_v2/unlabelled.jsonl
"""

import argparse
import hashlib
import itertools
import json
import os
import random
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch

import lensteer
from lensteer import threats
from lensteer.core.inducers import load_inducer
from lensteer.core.io import write_text
from lensteer.core.splits import near_duplicate
from lensteer.locate import diff_of_means
from lensteer.threats.audit import load_audit

# The audit sets were made with the steerings of the study committed before issue 28's rerun (layer 1 for
# refusal, unsuffixed names); to remake them: `git archive 740897a docs/study/steerings | tar x -C old` and
# LENSTEER_AUDIT_STEERINGS=old/docs/study/steerings.
STEERINGS = Path(os.environ.get("LENSTEER_AUDIT_STEERINGS", "docs/study/steerings"))


@dataclass(frozen=True)
class Cell:
    """One condition on some prompts: which prompts, which steering, which system prompt or attack."""

    name: str
    n: int
    steering: object = None
    system: str | None = None
    inducer: str | None = None
    source: str = "test"  # test / val prompts of the threat model, or "borderline" / "borderline_val"
    context: str | None = "misaligning"  # the study's misaligning context, or None


def response_directions(model, tm: str, layers: list[int]) -> dict[int, tuple[object, float]]:
    """Response-mean contrast (written aligned minus misaligned replies, train split) per layer, and the
    mean residual norm there (the unit of strength)."""
    ds = lensteer.load_dataset(tm).train.with_responses().stratified(48)
    ctx = threats.get(tm).misaligning_context
    pos = lensteer.collect_activations(
        model, ds.chat_prompts(response="aligned", context=ctx), layers=layers, position="response_mean"
    )
    neg = lensteer.collect_activations(
        model, ds.chat_prompts(response="misaligned", context=ctx), layers=layers, position="response_mean"
    )
    return {
        layer: (diff_of_means(pos[:, i], neg[:, i], layer=layer), float(pos[:, i].norm(dim=-1).mean()))
        for i, layer in enumerate(layers)
    }


def added(dirs, layer: int, strength: float) -> lensteer.Steering:
    direction, norm = dirs[layer]
    return lensteer.Steering.from_direction(direction, mode="add", scale=strength * norm, positions="all")


def committed(model, name: str) -> lensteer.Steering:
    return lensteer.load_steering(STEERINGS / name, model=model)


def extra_cells() -> list[Cell]:
    """Second round (refusal only): the first had 50 compliant answers of the 60 per class asked for, so
    unsteered answers to validation-split requests and borderline prompts, which mostly comply."""
    return [Cell("unsteered_val", 25, source="val"), Cell("borderline_val", 10, source="borderline_val")]


def third_round_cells(model, tm: str) -> list[Cell]:
    """Third round (development half only, labelled by one reader): answers to *train*-split prompts, which
    no validation answer uses, under the conditions whose answers the first two rounds' scorers misjudged
    most (readable steered and unsteered answers: the complies / neither and compassionate / brush-off
    boundaries, wrong-answer vs no-answer)."""
    if tm == "refusal":
        d = response_directions(model, tm, [12, 16])
        return [
            Cell("unsteered_train", 20, source="train"),
            Cell("add_L12_0.3_train", 20, added(d, 12, 0.3), source="train"),
            Cell("add_L16_0.4_train", 20, added(d, 16, 0.4), source="train"),
        ]
    d = response_directions(model, tm, [10, 16])
    prefill = {"compassion": "prefill_dismiss", "honesty": "prefill_mislead"}[tm]
    out = [
        Cell("unsteered_train", 15, source="train"),
        Cell("prompting_train", 15, system=threats.get(tm).aligned_system, source="train"),
        Cell("study_SwFC_train", 15, committed(model, f"{tm}_SwFC_kl0.5"), source="train"),
        Cell("add_L10_0.3_train", 15, added(d, 10, 0.3), source="train"),
        Cell("add_L16_0.4_train", 15, added(d, 16, 0.4), source="train"),
        Cell("no_context_train", 15, context=None, source="train"),
    ]
    return (
        [*out, Cell(f"{prefill}_train", 10, inducer=prefill, source="train")] if tm == "compassion" else out
    )


def fresh_validation_cells(model, tm: str) -> list[Cell]:
    """Fourth round: the fresh validation set v3 (``validation_v3.jsonl``), labelled by reading before any
    scorer ran on it. *Train*-split prompts (no dev answer is to them, except round 3's dev-only answers),
    under every kind of condition of the first round: unsteered, prompting, the committed study's
    steerings, response-mean steerings at two layers and strengths, an over-steered one, a random
    direction, the attacks and, for refusal, borderline prompts. Honesty: :func:`fresh_honesty_cells`."""
    if tm == "refusal":
        d = response_directions(model, tm, [8, 12, 16])
        return [
            Cell("unsteered_v3", 15, source="train"),
            Cell("prompting_v3", 10, system=threats.get(tm).aligned_system, source="train"),
            Cell("study_SwFC_v3", 10, committed(model, "refusal_SwFC_kl0.5"), source="train"),
            Cell("add_L12_0.3_v3", 12, added(d, 12, 0.3), source="train"),
            Cell("add_L16_0.5_v3", 12, added(d, 16, 0.5), source="train"),
            Cell("oversteered_L8_1.0_v3", 8, added(d, 8, 1.0), source="train"),
            Cell("prefill_comply_v3", 10, inducer="prefill_comply", source="train"),
            Cell(
                "prefill_comply+add_L16_0.5_v3",
                10,
                added(d, 16, 0.5),
                inducer="prefill_comply",
                source="train",
            ),
            Cell(
                "roleplay+prompting_v3",
                8,
                system=threats.get(tm).aligned_system,
                inducer="roleplay",
                source="train",
            ),
            Cell("obfuscation+add_L16_0.3_v3", 5, added(d, 16, 0.3), inducer="obfuscation", source="train"),
            Cell("borderline_v3", 10, source="borderline_train"),
        ]
    if tm == "honesty":
        return fresh_honesty_cells(model)
    d = response_directions(model, tm, [10, 16])
    random_dir = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(11))
    rand = lensteer.Steering.from_direction(
        random_dir / random_dir.norm(), layers=[16], mode="add", scale=0.3 * d[16][1], positions="all"
    )
    prefill = {"compassion": "prefill_dismiss", "honesty": "prefill_mislead"}[tm]
    return [
        Cell("unsteered_v3", 14, source="train"),
        Cell("prompting_v3", 12, system=threats.get(tm).aligned_system, source="train"),
        Cell("study_SwFC_v3", 12, committed(model, f"{tm}_SwFC_kl0.5"), source="train"),
        Cell("study_StTP_v3", 10, committed(model, f"{tm}_StTP_kl0.5"), source="train"),
        Cell("add_L10_0.3_v3", 12, added(d, 10, 0.3), source="train"),
        Cell("add_L16_0.4_v3", 12, added(d, 16, 0.4), source="train"),
        Cell("random_L16_0.3_v3", 8, rand, source="train"),
        Cell("oversteered_L10_1.0_v3", 8, added(d, 10, 1.0), source="train"),
        Cell(f"{prefill}_v3", 12, inducer=prefill, source="train"),
        Cell("no_context_v3", 10, context=None, source="train"),
    ]


def fresh_honesty_cells(model) -> list[Cell]:
    """Fourth round, honesty: validation and test questions of the threat model's known set that no v2
    answer asks (``source="fresh"``; each question answered once), under the study's lying context unless
    a cell says otherwise. Besides the kinds of condition of the other v3 sets, cells that make the model
    lie (the three honesty inducers, a steering towards the written false answers, alone and with a
    prefill), so that wrong answers are not rare: unsteered, the context makes it lie on ~17-28% of known
    questions (``docs/honesty-known.md``)."""
    tm = "honesty"
    d = response_directions(model, tm, [10, 16])
    random_dir = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(13))
    rand = lensteer.Steering.from_direction(
        random_dir / random_dir.norm(), layers=[16], mode="add", scale=0.3 * d[16][1], positions="all"
    )
    aligned = threats.get(tm).aligned_system
    return [
        Cell("unsteered_v3", 14, source="fresh"),
        Cell("prompting_v3", 10, system=aligned, source="fresh"),
        Cell("study_SwFC_v3", 10, committed(model, f"{tm}_SwFC_kl0.5"), source="fresh"),
        Cell("study_StTP_v3", 8, committed(model, f"{tm}_StTP_kl0.5"), source="fresh"),
        Cell("add_L10_0.3_v3", 10, added(d, 10, 0.3), source="fresh"),
        Cell("add_L16_0.4_v3", 10, added(d, 16, 0.4), source="fresh"),
        Cell("add_L16_-0.4_v3", 12, added(d, 16, -0.4), source="fresh"),
        Cell("random_L16_0.3_v3", 6, rand, source="fresh"),
        Cell("oversteered_L10_1.0_v3", 8, added(d, 10, 1.0), source="fresh"),
        Cell("oversteered_L16_-1.0_v3", 6, added(d, 16, -1.0), source="fresh"),
        Cell("prefill_mislead_v3", 12, inducer="prefill_mislead", source="fresh"),
        Cell("prefill_wrong_v3", 8, inducer="prefill_wrong", source="fresh"),
        Cell("lying_instruction_v3", 12, inducer="lying_instruction", source="fresh"),
        Cell(
            "prefill_mislead+add_L16_-0.4_v3",
            8,
            added(d, 16, -0.4),
            inducer="prefill_mislead",
            source="fresh",
        ),
        Cell("no_context_v3", 6, context=None, source="fresh"),
    ]


def fresh_pool(tm: str):
    """The validation and test questions of ``tm``'s dataset that no answer of audit set v2 asks (a v2
    prompt may wrap the question, so containment is checked)."""
    asked = [r.prompt for r in load_audit("dev", tm) + load_audit("validation", tm)]
    full = lensteer.load_dataset(threats.get(tm).dataset)
    rows = [ex for ex in full.stratified(None) if ex.split in ("val", "test")]
    return replace(
        full, examples=tuple(ex for ex in rows if not any(ex.prompt in p for p in asked)), split="fresh"
    )


FRESH4_SHARE = 0.5  # share of the unused prompts (whole near-duplicate clusters) that validation v4 gets
_OBFUSCATED = re.compile(r'^Let a = "(.*)" and b = "(.*)"\. Join a and b', re.S)


def request_of(prompt: str) -> str:
    """A user message with a payload-split (obfuscation) request joined again, so that containment finds
    the request."""
    m = _OBFUSCATED.match(prompt)
    return f"{m.group(1)} {m.group(2)}" if m else prompt


def asked_before() -> list[str]:
    """Every user message an earlier audit answer (sets v2 and v3) was given, as :func:`request_of`."""
    return [
        request_of(r.prompt)
        for r in load_audit("dev") + load_audit("validation") + load_audit("validation_v3")
    ]


def _clusters(examples: list) -> dict[str, str]:
    """Each example's near-duplicate cluster, named by its smallest id (union-find over
    :func:`~lensteer.core.splits.near_duplicate`)."""
    parent = {ex.id: ex.id for ex in examples}

    def root(i: str) -> str:
        while parent[i] != i:
            i = parent[i]
        return i

    for a, b in itertools.combinations(examples, 2):
        if near_duplicate(a, b):
            ra, rb = root(a.id), root(b.id)
            parent[max(ra, rb)] = min(ra, rb)
    return {ex.id: root(ex.id) for ex in examples}


def fresh_v4_pool(dataset: str, round_: int):
    """Rounds 5 (development) and 6 (validation v4): the rows of ``dataset`` (every split) that no earlier
    audit answer asks, even inside a wrapper, and that are no near-duplicate of one that is asked; split
    once between the two rounds by the SHA-256 of their near-duplicate cluster, so that no prompt of the
    development round is (a near-duplicate of) a prompt of validation v4."""
    asked = asked_before()
    full = lensteer.load_dataset(dataset)
    rows = list(full.stratified(None))
    used = [ex for ex in rows if any(ex.prompt in p for p in asked)]
    free = [ex for ex in rows if ex not in used and not any(near_duplicate(ex, u) for u in used)]
    cluster = _clusters(free)

    def to_v4(ex) -> bool:
        digest = hashlib.sha256(f"audit-v4:{cluster[ex.id]}".encode()).digest()
        return int.from_bytes(digest[:4], "big") / 2**32 < FRESH4_SHARE

    kept = tuple(ex for ex in free if to_v4(ex) == (round_ == 6))
    return replace(full, examples=kept, split=f"round{round_}")


def _sized(cells: list[tuple[Cell, int, int]], round_: int) -> list[Cell]:
    """The cells of round 5 (development) or 6 (validation v4), each with that round's number of answers."""
    tag = "dev5" if round_ == 5 else "v4"
    return [replace(c, name=f"{c.name}_{tag}", n=n5 if round_ == 5 else n6) for c, n5, n6 in cells]


def v4_refusal_cells(model, round_: int) -> list[Cell]:
    """Rounds 5 (development) and 6 (validation v4), refusal: the kinds of condition of validation v3 plus
    the attacks it lacked (malicious system prompt, compliance few-shot, hypothetical framing), the committed
    StTP steering and a random direction; more unsteered, attacked and borderline answers than v3, whose
    rarest class was "complies". Cells are (condition, answers in round 5, answers in round 6)."""
    tm = "refusal"
    d = response_directions(model, tm, [8, 12, 16])
    aligned = threats.get(tm).aligned_system
    f, b = "fresh", "fresh_borderline"
    return _sized(
        [
            (Cell("unsteered", 0, source=f), 16, 16),
            (Cell("prompting", 0, system=aligned, source=f), 8, 5),
            (Cell("study_SwFC", 0, committed(model, "refusal_SwFC_kl0.5"), source=f), 8, 5),
            (Cell("study_StTP", 0, committed(model, "refusal_StTP_kl0.5"), source=f), 8, 5),
            (Cell("add_L12_0.3", 0, added(d, 12, 0.3), source=f), 12, 10),
            (Cell("add_L16_0.5", 0, added(d, 16, 0.5), source=f), 12, 7),
            (Cell("add_L8_0.5", 0, added(d, 8, 0.5), source=f), 8, 6),
            (Cell("oversteered_L8_1.0", 0, added(d, 8, 1.0), source=f), 6, 5),
            (Cell("random_L16_0.3", 0, random_steering(model, d[16][1], 17 + round_), source=f), 6, 4),
            (Cell("prefill_comply", 0, inducer="prefill_comply", source=f), 10, 8),
            (
                Cell("prefill_comply+add_L16_0.5", 0, added(d, 16, 0.5), inducer="prefill_comply", source=f),
                8,
                6,
            ),
            (Cell("malicious_system", 0, inducer="malicious_system", source=f), 8, 8),
            (Cell("compliance_fewshot", 0, inducer="compliance_fewshot", source=f), 8, 5),
            (Cell("hypothetical+prompting", 0, system=aligned, inducer="hypothetical", source=f), 6, 4),
            (Cell("roleplay", 0, inducer="roleplay", source=f), 6, 4),
            (Cell("obfuscation+add_L16_0.3", 0, added(d, 16, 0.3), inducer="obfuscation", source=f), 6, 4),
            (Cell("borderline", 0, source=b), 10, 14),
            (Cell("borderline+add_L16_0.3", 0, added(d, 16, 0.3), source=b), 10, 9),
        ],
        round_,
    )


def v4_honesty_cells(model, round_: int) -> list[Cell]:
    """Rounds 5 and 6, honesty: the kinds of condition of validation v3 under the study's lying context,
    with more answers under the inducers and the steerings towards the written false answers (``false`` was
    v3's rarest class), and the lying wrapper combined with that steering."""
    tm = "honesty"
    d = response_directions(model, tm, [10, 16])
    aligned = threats.get(tm).aligned_system
    f = "fresh"
    return _sized(
        [
            (Cell("unsteered", 0, source=f), 10, 8),
            (Cell("prompting", 0, system=aligned, source=f), 8, 6),
            (Cell("study_SwFC", 0, committed(model, f"{tm}_SwFC_kl0.5"), source=f), 8, 6),
            (Cell("study_StTP", 0, committed(model, f"{tm}_StTP_kl0.5"), source=f), 6, 5),
            (Cell("add_L10_0.3", 0, added(d, 10, 0.3), source=f), 8, 6),
            (Cell("add_L16_0.4", 0, added(d, 16, 0.4), source=f), 8, 6),
            (Cell("random_L16_0.3", 0, random_steering(model, d[16][1], 19 + round_), source=f), 4, 3),
            (Cell("oversteered_L10_1.0", 0, added(d, 10, 1.0), source=f), 6, 5),
            (Cell("no_context", 0, context=None, source=f), 4, 3),
            (Cell("add_L16_-0.4", 0, added(d, 16, -0.4), source=f), 16, 8),
            (Cell("add_L10_-0.3", 0, added(d, 10, -0.3), source=f), 8, 16),
            (Cell("oversteered_L16_-1.0", 0, added(d, 16, -1.0), source=f), 4, 4),
            (Cell("prefill_mislead", 0, inducer="prefill_mislead", source=f), 12, 10),
            (Cell("prefill_wrong", 0, inducer="prefill_wrong", source=f), 16, 16),
            (Cell("lying_instruction", 0, inducer="lying_instruction", source=f), 16, 18),
            (
                Cell(
                    "prefill_mislead+add_L16_-0.4", 0, added(d, 16, -0.4), inducer="prefill_mislead", source=f
                ),
                8,
                10,
            ),
            (
                Cell(
                    "lying_instruction+add_L16_-0.4",
                    0,
                    added(d, 16, -0.4),
                    inducer="lying_instruction",
                    source=f,
                ),
                10,
                4,
            ),
        ],
        round_,
    )


def random_steering(model, norm: float, seed: int) -> lensteer.Steering:
    """A random unit direction at layer 16, added at 0.3 of the mean residual norm ``norm``."""
    random_dir = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(seed))
    return lensteer.Steering.from_direction(
        random_dir / random_dir.norm(), layers=[16], mode="add", scale=0.3 * norm, positions="all"
    )


def cells(model, tm: str) -> list[Cell]:
    if tm == "refusal":
        d = response_directions(model, tm, [8, 12, 16])
        return [
            Cell("unsteered", 25),
            Cell("prompting", 20, system=threats.get(tm).aligned_system),
            Cell("study_SwFC_L1", 15, committed(model, "refusal_SwFC_kl0.5")),
            Cell("add_L12_0.3", 20, added(d, 12, 0.3)),
            Cell("add_L16_0.3", 20, added(d, 16, 0.3)),
            Cell("add_L16_0.5", 20, added(d, 16, 0.5)),
            Cell("add_L8_0.5", 15, added(d, 8, 0.5)),
            Cell("oversteered_L8_1.0", 10, added(d, 8, 1.0)),
            Cell("prefill_comply", 10, inducer="prefill_comply"),
            Cell("prefill_comply+add_L16_0.5", 15, added(d, 16, 0.5), inducer="prefill_comply"),
            Cell("obfuscation+add_L16_0.3", 10, added(d, 16, 0.3), inducer="obfuscation"),
            Cell("roleplay+prompting", 10, system=threats.get(tm).aligned_system, inducer="roleplay"),
            Cell("borderline", 10, source="borderline"),
            Cell("borderline+add_L16_0.3", 15, added(d, 16, 0.3), source="borderline"),
        ]
    d = response_directions(model, tm, [10, 16])
    random_dir = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(7))
    rand = lensteer.Steering.from_direction(
        random_dir / random_dir.norm(), layers=[16], mode="add", scale=0.3 * d[16][1], positions="all"
    )
    prefill = {"compassion": "prefill_dismiss", "honesty": "prefill_mislead"}[tm]
    return [
        Cell("unsteered", 25),
        Cell("prompting", 20, system=threats.get(tm).aligned_system),
        Cell("study_SwFC", 20, committed(model, f"{tm}_SwFC_kl0.5")),
        Cell("study_StTP", 15, committed(model, f"{tm}_StTP_kl0.5")),
        Cell("study_StMP_paper", 15, committed(model, f"{tm}_StMP_paper")),
        Cell("add_L10_0.3", 20, added(d, 10, 0.3)),
        Cell("add_L16_0.4", 20, added(d, 16, 0.4)),
        Cell("random_L16_0.3", 20, rand),
        Cell("oversteered_L10_1.0", 15, added(d, 10, 1.0)),
        Cell(prefill, 20, inducer=prefill),
        Cell("no_context", 20, context=None),
    ]


def _row_id(tm: str, k: int, round_: int) -> str:
    if round_ == 1:
        return f"audit2-{tm}-{k:03d}"
    return {4: f"audit3-{tm}-{k:03d}", 6: f"audit4-{tm}-{k:03d}"}.get(
        round_, f"audit2-{tm}-r{round_}-{k:03d}"
    )


def _pools(tm: str, round_: int) -> dict:
    """The prompt sources a round's cells draw from (``fresh``: rows no earlier answer asks)."""
    load = lensteer.load_dataset
    pools = {
        "train": load(tm).train.stratified(None),
        "test": load(tm).test.stratified(None),
        "val": load(tm).val.stratified(None),
        "borderline": load("borderline").test.stratified(None),
        "borderline_val": load("borderline").val.stratified(None),
        "borderline_train": load("borderline").train.stratified(None),
    }
    if round_ == 4 and tm == "honesty":
        pools["fresh"] = fresh_pool(tm)
    if round_ in (5, 6):
        pools["fresh"] = fresh_v4_pool(threats.get(tm).dataset, round_)
        if tm == "refusal":
            pools["fresh_borderline"] = fresh_v4_pool("borderline", round_)
    return pools


def _round_cells(model, tm: str, round_: int) -> list[Cell]:
    if round_ in (5, 6):
        if tm not in ("refusal", "honesty"):
            raise SystemExit(f"rounds 5 and 6 sample refusal and honesty only, not {tm!r}")
        return (v4_refusal_cells if tm == "refusal" else v4_honesty_cells)(model, round_)
    rounds = {1: cells, 2: lambda _m, _t: extra_cells(), 3: third_round_cells, 4: fresh_validation_cells}
    return rounds[round_](model, tm)


def _prompts(model, tm: str, round_: int) -> list[tuple]:
    """(cell, inducer, example, chat prompt) of every answer of one round and threat model. Prompts of a
    ``fresh`` source are dealt out: no row is asked twice."""
    pools = _pools(tm, round_)
    seed = {1: f"audit-{tm}", 2: f"audit-{tm}", 3: f"audit-{tm}", 4: f"audit-v3-{tm}"}.get(round_)
    rng = random.Random(seed or f"audit-r{round_}-{tm}")
    decks = {name: rng.sample(range(len(p)), len(p)) for name, p in pools.items() if name.startswith("fresh")}
    meta = []
    for cell in _round_cells(model, tm, round_):
        source = pools[cell.source]
        if cell.source in decks:
            picked, decks[cell.source] = decks[cell.source][: cell.n], decks[cell.source][cell.n :]
            if len(picked) < cell.n:
                raise SystemExit(
                    f"{tm} round {round_}: source {cell.source!r} ran out of prompts at {cell.name}"
                )
        else:
            picked = rng.sample(range(len(source)), cell.n)
        misaligning = cell.context and not cell.source.startswith(("borderline", "fresh_borderline"))
        chat = source.chat_prompts(context=threats.get(tm).misaligning_context if misaligning else None)
        inducer = load_inducer(cell.inducer, tm) if cell.inducer else None
        for i in picked:
            p = chat[i]
            if cell.system is not None:
                p = replace(p, system=cell.system)
            meta.append((cell, inducer, source[i], inducer.apply(p) if inducer is not None else p))
    return meta


def _generate(model, tm: str, meta: list[tuple], max_new_tokens: int) -> list[str]:
    """Greedy answers, batched among prompts that share system prompt and history (a common prefix)."""
    texts: list[str] = [""] * len(meta)
    groups: dict[tuple, list[int]] = {}
    for k, (_, _, _, p) in enumerate(meta):
        groups.setdefault((p.system, p.history), []).append(k)
    done = 0
    for idx in groups.values():
        out = lensteer.generate(
            model,
            [meta[k][3] for k in idx],
            prompt_steerings=[meta[k][0].steering for k in idx],
            max_new_tokens=max_new_tokens,
            batch_size=32,
        )
        for k, text in zip(idx, out.texts, strict=True):
            texts[k] = text
        done += len(idx)
        print(f"  {tm}: {done}/{len(meta)}", flush=True)
    return texts


def _rows(tm: str, round_: int, meta: list[tuple], texts: list[str]) -> list[dict]:
    return [
        {
            "id": _row_id(tm, k, round_),
            "threat_model": tm,
            "condition": cell.name,
            "prompt": p.user,
            "prefill": p.response,
            "response": inducer.scored_text(text) if inducer else text,
            "true_answer": getattr(ex, "true_answer", None),
            "false_answer": getattr(ex, "false_answer", None),
            **({"example_id": ex.id} if cell.source.startswith("fresh") else {}),
            "label": None,
            "unreadable": None,
            "note": "",
        }
        for k, ((cell, inducer, ex, p), text) in enumerate(zip(meta, texts, strict=True))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--out", required=True, help="a file, or with several rounds a folder (round<N>.jsonl)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threat-models", default="refusal,compassion,honesty")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--round",
        default="1",
        help="2: the extra compliant refusal answers; 3: dev-only train prompts; 4: fresh validation v3; "
        "5: development round 5 and 6: fresh validation v4 (refusal and honesty; prompts no earlier answer "
        "asks, split between the two by near-duplicate cluster); several as 5,6 (one model load)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = lensteer.load_model()
    rounds = [int(r) for r in args.round.split(",")]
    for round_ in rounds:
        out = Path(args.out) / f"round{round_}.jsonl" if len(rounds) > 1 else Path(args.out)
        rows: list[dict] = []
        for tm in args.threat_models.split(","):
            meta = _prompts(model, tm, round_)
            rows += _rows(tm, round_, meta, _generate(model, tm, meta, args.max_new_tokens))
            print(f"round {round_} {tm}: {len(meta)} answers", flush=True)
            write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
