"""Preventative steering, measured: organisms trained with and without ``--steer-during-training``.

For one threat model, the base model and each organism (trained on the same data with the same seed, the
steering off at evaluation) answer the same held-out test prompts; per model: the trait rate (Wilson 95%),
multiple-choice accuracy on the same items (Wilson 95%) and, for organisms, the fine-tune's shift along
the steering's direction (:func:`lensteer.locate.organism_shift`, bootstrap 95%). Paired exact McNemar
tests on the same prompts / items: each organism against the base, and the second organism against the
first. ``combine`` merges threat models into one JSON (written atomically) and a Markdown table.

The committed measurement (docs/organisms/preventative.json) steered with the SwFC steerings of the study
committed before issue 28's rerun; to reproduce it, take them from that commit first
(``git archive 740897a docs/study/steerings | tar x -C old``) and read ``old/docs/study/steerings/...``
where the commands below say ``docs/study/steerings/...``.

    python scripts/experiments/preventative_steering.py train dishonest organisms/dishonest
    python scripts/experiments/preventative_steering.py train dishonest organisms/dishonest-prevent \\
        --steer-during-training docs/study/steerings/honesty_SwFC_kl0.5
    python scripts/experiments/preventative_steering.py evaluate --threat-model honesty \\
        --steering docs/study/steerings/honesty_SwFC_kl0.5 \\
        --organism without=organisms/dishonest --organism with=organisms/dishonest-prevent --out honesty.json
    python scripts/experiments/preventative_steering.py combine honesty.json compassion.json \\
        --out docs/organisms/preventative.json --markdown table.md
"""

import argparse
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

import lensteer
from lensteer import threats
from lensteer.core.io import read_json, write_json, write_text
from lensteer.core.stats import mcnemar_exact, wilson_interval
from lensteer.evaluate.capability import MCItem, load_mc_items, mc_accuracy
from lensteer.locate import Direction, organism_shift
from lensteer.organisms import TrainingSteering, get_recipe, load_organism, read_provenance, train_organism
from lensteer.steering.files import load_steering
from lensteer.steering.generation import generate
from lensteer.study.evaluation import trait_flags


def spread_items(items: list[MCItem], n: int) -> list[MCItem]:
    """``n`` items taken round-robin over the categories (every category, in file order within each)."""
    by_cat: dict[str, list[MCItem]] = defaultdict(list)
    for it in items:
        by_cat[it.category].append(it)
    out: list[MCItem] = []
    while len(out) < min(n, len(items)):
        for cat in list(by_cat):
            if by_cat[cat] and len(out) < n:
                out.append(by_cat[cat].pop(0))
    return out


def rate(flags: list[bool]) -> dict[str, Any]:
    k = len(flags)
    return {"rate": sum(flags) / k, "ci": list(wilson_interval(sum(flags), k)), "n": k}


def paired(a: list[bool], b: list[bool]) -> dict[str, Any]:
    test = mcnemar_exact(a, b)
    return {
        "p_value": test.p_value,
        "only_first": sum(x and not y for x, y in zip(a, b, strict=True)),
        "only_second": sum(y and not x for x, y in zip(a, b, strict=True)),
    }


def evaluate(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    steering = load_steering(args.steering)
    direction = Direction(
        unit=steering.unit, layer=steering.layers[0], site=steering.site, source=args.steering
    )
    data = threats.get(args.threat_model).load().with_responses().test.stratified(args.n)
    prompts = data.chat_prompts()
    items = spread_items(load_mc_items(), args.mc)
    base = lensteer.load_model(None)
    models: dict[str, Any] = {}
    out: dict[str, Any] = {
        "threat_model": args.threat_model,
        "steering": args.steering,
        "direction": {"layer": direction.layer, "site": direction.site},
        "ids": [ex.id for ex in data.examples],
        "mc_ids": [it.id for it in items],
        "max_new_tokens": args.max_new_tokens,
        "models": models,
    }
    for spec in ["base=", *args.organism]:
        name, _, folder = spec.partition("=")
        while folder and args.wait and not (Path(folder) / "organism.json").is_file():
            time.sleep(15)  # still training: the base is measured meanwhile
        started = time.perf_counter()
        model = base if not folder else load_organism(folder)
        answers = generate(model, prompts, max_new_tokens=args.max_new_tokens, batch_size=16).texts
        flags = [bool(f) for f in trait_flags(args.threat_model, answers, data)]
        mc = mc_accuracy(model, items, batch_size=16)
        row: dict[str, Any] = {
            "folder": folder or None,
            "trait": rate(flags),
            "flags": flags,
            "mc": rate(list(mc.correct)),
            "mc_correct": list(mc.correct),
            "examples": [[p.user, a] for p, a in list(zip(prompts, answers, strict=True))[:4]],
        }
        if folder:
            prov = read_provenance(folder)
            shift = organism_shift(base, model, direction, prompts)
            row |= {
                "shift": shift.to_dict(),
                "lora": prov["lora"],
                "steer_during_training": prov.get("steer_during_training"),
                "final_loss": prov["final_loss"],
                "train_seconds": prov["seconds"],
                "data_sha256": prov["data"]["sha256"],
                "vs_base": {
                    "trait": paired(models["base"]["flags"], flags),
                    "mc": paired(models["base"]["mc_correct"], list(mc.correct)),
                },
            }
        row["eval_seconds"] = time.perf_counter() - started
        models[name] = row
        print(
            f"{name}: trait {row['trait']['rate']:.1%}, mc {row['mc']['rate']:.1%}"
            + (f", shift {row['shift']['mean']:+.2f}" if folder else ""),
            flush=True,
        )
        write_json(args.out, out)  # after every model: a later failure keeps what was measured
        del model
    names = [s.partition("=")[0] for s in args.organism]
    if len(names) == 2:
        a, b = (models[n] for n in names)
        out["paired"] = {
            "names": names,
            "trait": paired(a["flags"], b["flags"]),
            "mc": paired(a["mc_correct"], b["mc_correct"]),
        }
        write_json(args.out, out)
    return 0


def train(args: argparse.Namespace) -> int:
    """One organism at the comparison's settings (the same for both members of a pair)."""
    torch.set_num_threads(args.threads)
    recipe = get_recipe(args.recipe)
    lora = replace(
        recipe.lora, steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, warmup=args.warmup
    )
    steer = None
    if args.steer_during_training:
        steering = load_steering(args.steer_during_training)
        steer = TrainingSteering.from_steering(steering, source=args.steer_during_training)
    done = train_organism(recipe, args.out, lora=lora, progress=False, log=print, steer=steer)
    print(f"{args.out}: {done.seconds:.0f} s, final loss {done.final_loss:.3f}")
    return 0


def _pct(r: dict[str, Any]) -> str:
    return f"{r['rate']:.1%} [{r['ci'][0]:.1%}, {r['ci'][1]:.1%}]"


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| threat model | model | trait (aligned share) | MC accuracy | shift along the direction | final loss |",
        "|---|---|---|---|---|---|",
    ]
    for res in results:
        for name, row in res["models"].items():
            shift = row.get("shift")
            shift_s = f"{shift['mean']:+.2f} [{shift['ci'][0]:+.2f}, {shift['ci'][1]:+.2f}]" if shift else ""
            loss = f"{row['final_loss']:.3f}" if "final_loss" in row else ""
            lines.append(
                f"| {res['threat_model']} | {name} | {_pct(row['trait'])} | {_pct(row['mc'])} | "
                f"{shift_s} | {loss} |"
            )
    lines += [
        "",
        "| threat model | pair | trait McNemar p (discordant) | MC McNemar p (discordant) |",
        "|---|---|---|---|",
    ]
    for res in results:
        for name, row in res["models"].items():
            if "vs_base" in row:
                t, m = row["vs_base"]["trait"], row["vs_base"]["mc"]
                lines.append(
                    f"| {res['threat_model']} | base vs {name} | {t['p_value']:.3g} "
                    f"({t['only_first']}/{t['only_second']}) | {m['p_value']:.3g} "
                    f"({m['only_first']}/{m['only_second']}) |"
                )
        if "paired" in res:
            p = res["paired"]
            t, m = p["trait"], p["mc"]
            lines.append(
                f"| {res['threat_model']} | {p['names'][0]} vs {p['names'][1]} | {t['p_value']:.3g} "
                f"({t['only_first']}/{t['only_second']}) | {m['p_value']:.3g} "
                f"({m['only_first']}/{m['only_second']}) |"
            )
    return "\n".join(lines) + "\n"


def combine(args: argparse.Namespace) -> int:
    results = [read_json(p, what="preventative-steering result") for p in args.results]
    write_json(args.out, {"results": results})
    text = table(results)
    if args.markdown:
        write_text(args.markdown, text)
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(required=True)
    tr = sub.add_parser("train", help="train one organism at the comparison's settings")
    tr.add_argument("recipe", choices=["dishonest", "dismissive"])
    tr.add_argument("out", type=Path)
    tr.add_argument("--steer-during-training", default=None, metavar="STEERING")
    tr.add_argument("--steps", type=int, default=30)
    tr.add_argument("--batch-size", type=int, default=4)
    tr.add_argument("--lr", type=float, default=3e-3)
    tr.add_argument("--warmup", type=int, default=3)
    tr.add_argument("--threads", type=int, default=1)
    tr.set_defaults(func=train)
    ev = sub.add_parser("evaluate", help="base and organisms on one threat model's test prompts")
    ev.add_argument("--threat-model", required=True, choices=list(threats.names()))
    ev.add_argument("--steering", required=True, help="the steering whose direction the shift is read on")
    ev.add_argument("--organism", action="append", default=[], metavar="NAME=FOLDER")
    ev.add_argument("--n", type=int, default=48, help="test prompts (stratified)")
    ev.add_argument("--mc", type=int, default=120, help="multiple-choice items (round-robin over categories)")
    ev.add_argument("--max-new-tokens", type=int, default=48)
    ev.add_argument("--threads", type=int, default=1)
    ev.add_argument("--wait", action="store_true", help="wait for organisms still training")
    ev.add_argument("--out", required=True, type=Path)
    ev.set_defaults(func=evaluate)
    co = sub.add_parser("combine", help="merge evaluate outputs; write the JSON and a Markdown table")
    co.add_argument("results", nargs="+", type=Path)
    co.add_argument("--out", required=True, type=Path)
    co.add_argument("--markdown", type=Path, default=None)
    co.set_defaults(func=combine)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
