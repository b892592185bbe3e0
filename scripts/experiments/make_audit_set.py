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
import json
import random
from dataclasses import dataclass, replace
from pathlib import Path

import torch

import lensteer
from lensteer import threats
from lensteer.core.inducers import load_inducer
from lensteer.core.io import write_text
from lensteer.locate import diff_of_means
from lensteer.threats.audit import load_audit

STEERINGS = Path("docs/study/steerings")


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
    return f"audit3-{tm}-{k:03d}" if round_ == 4 else f"audit2-{tm}-r{round_}-{k:03d}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threat-models", default="refusal,compassion,honesty")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--round",
        type=int,
        default=1,
        help="2: the extra compliant refusal answers; 3: dev-only train prompts; 4: fresh validation v3",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = lensteer.load_model()
    rows = []
    for tm in args.threat_models.split(","):
        pools = {
            "train": lensteer.load_dataset(tm).train.stratified(None),
            "test": lensteer.load_dataset(tm).test.stratified(None),
            "val": lensteer.load_dataset(tm).val.stratified(None),
            "borderline": lensteer.load_dataset("borderline").test.stratified(None),
            "borderline_val": lensteer.load_dataset("borderline").val.stratified(None),
            "borderline_train": lensteer.load_dataset("borderline").train.stratified(None),
        }
        if args.round == 4 and tm == "honesty":
            pools["fresh"] = fresh_pool(tm)
        rng = random.Random(f"audit-{tm}" if args.round < 4 else f"audit-v3-{tm}")
        # the fresh honesty questions are dealt out: no question is answered twice
        deck = rng.sample(range(len(pools["fresh"])), len(pools["fresh"])) if "fresh" in pools else []
        prompts, owners, meta = [], [], []
        rounds = {1: cells, 2: lambda _m, _t: extra_cells(), 3: third_round_cells, 4: fresh_validation_cells}
        round_cells = rounds[args.round]
        for cell in round_cells(model, tm):
            source = pools[cell.source]
            if cell.source == "fresh":
                picked, deck = deck[: cell.n], deck[cell.n :]
            else:
                picked = rng.sample(range(len(source)), cell.n)
            context = (
                threats.get(tm).misaligning_context
                if cell.context and not cell.source.startswith("borderline")
                else None
            )
            chat = source.chat_prompts(context=context)
            inducer = load_inducer(cell.inducer, tm) if cell.inducer else None
            for i in picked:
                p = chat[i]
                if cell.system is not None:
                    p = replace(p, system=cell.system)
                if inducer is not None:
                    p = inducer.apply(p)
                prompts.append(p)
                owners.append(cell.steering)
                meta.append((cell, inducer, source[i], p))
        texts: list[str] = [""] * len(prompts)
        groups: dict[tuple, list[int]] = {}
        for k, (_, _, _, p) in enumerate(meta):  # rows sharing system prompt and history share a prefix
            groups.setdefault((p.system, p.history), []).append(k)
        for idx in groups.values():
            out = lensteer.generate(
                model,
                [prompts[k] for k in idx],
                prompt_steerings=[owners[k] for k in idx],
                max_new_tokens=args.max_new_tokens,
                batch_size=32,
            )
            for k, text in zip(idx, out.texts, strict=True):
                texts[k] = text
            print(f"  {tm}: {sum(len(i) for i in groups.values() if i[0] <= idx[0])}/{len(meta)}", flush=True)
        for k, ((cell, inducer, ex, p), text) in enumerate(zip(meta, texts, strict=True)):
            rows.append(
                {
                    "id": _row_id(tm, k, args.round),
                    "threat_model": tm,
                    "condition": cell.name,
                    "prompt": p.user,
                    "prefill": p.response,
                    "response": inducer.scored_text(text) if inducer else text,
                    "true_answer": getattr(ex, "true_answer", None),
                    "false_answer": getattr(ex, "false_answer", None),
                    **({"example_id": ex.id} if cell.source == "fresh" else {}),
                    "label": None,
                    "unreadable": None,
                    "note": "",
                }
            )
        print(f"{tm}: {len(meta)} answers", flush=True)
        write_text(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
