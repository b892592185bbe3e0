"""Record each committed study steering's KL prompt by prompt: ``docs/study/kl_by_prompt.json``.

The committed study (``docs/study/``) reports means: each steering's calibration KL (held-apart harmless and
borderline prompts, in its file's ``info``) and each condition's held-out KL (held-out harmless prompts,
``kl_heldout`` in its row). Re-measuring a mean means re-running every prompt (this script: 388 s on 2
threads for the twelve steerings on both sets, 2026-12-07); a record per prompt lets
``tests/integration/test_study_steerings.py`` re-measure a sample of prompts against it, and check the
record's means against the study's numbers without a model.

For both sets the record holds the prompts' token ids, their unsteered greedy continuations (the KL is
measured along them, as the study did) and, per steering, each prompt's mean per-token KL with the
steering's gate as deployed. Before it is written it is checked: each steering's calibration mean is its
recorded calibration KL within 10% and, for three steerings (one gated), ``steering_kl`` on the study's
own calibration probe (the path calibration took) within 0.1%; each held-out mean is its row's
``kl_heldout`` within 10%.

    python scripts/record_study_kls.py [--study docs/study] [--threads 2]
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch

import lensteer
from lensteer.core.bridge import Bridge
from lensteer.core.io import write_json
from lensteer.core.models import model_fingerprint
from lensteer.steering.calibration import sequence_scores, steering_kl
from lensteer.study.coherence import calibration_prompts, calibration_set
from lensteer.study.config import StudyConfig
from lensteer.study.evaluation import heldout_harmless
from lensteer.study.runner import chosen_steering

FORMAT = 1
RECORD = "kl_by_prompt.json"
TOLERANCE = 0.10


def checked_steerings(report: dict, config: StudyConfig) -> list[tuple[str, str]]:
    """The committed steerings at the matched budget: each method (StMP-push is StMP's twin) and the
    random control's first seed (its other seeds are calibrated by the same code)."""
    return [
        (tm, m) for tm in report["threat_models"] for m in (*config.methods, "random0") if m != "StMP-push"
    ]


def row_name(method: str) -> str:
    """The results row of a steering's name (``random0`` is the row ``random:0``)."""
    return method.replace("random", "random:") if method.startswith("random") else method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--study", default="docs/study")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    study = Path(args.study)
    report = json.loads((study / "report.json").read_text())
    rows = json.loads((study / "results.json").read_text())["rows"]
    config = StudyConfig.from_dict(report["config"])
    budget = report["matched_kl_budget"]
    model = lensteer.load_model()
    names = checked_steerings(report, config)
    steerings = [
        lensteer.load_steering(chosen_steering(study, tm, m, budget), model=model) for tm, m in names
    ]
    started = time.time()
    sets = {"calibration": calibration_prompts(config), "heldout": heldout_harmless(config)}
    record: dict = {
        "format": FORMAT,
        "model": model_fingerprint(model).to_dict(),
        "kl_tokens": config.kl_tokens,
        "batch_size": config.batch_size,
        "sets": {},
        "steerings": {f"{tm}/{m}": {"row": row_name(m)} for tm, m in names},
    }
    for name, prompts in sets.items():
        gens = lensteer.generate(
            model, prompts, max_new_tokens=config.kl_tokens, batch_size=config.batch_size
        )  # the call kl_probe makes: the same continuations
        scores = sequence_scores(
            model, steerings, gens.prompt_tokens, gens.tokens, batch_size=config.batch_size
        )
        record["sets"][name] = {
            "prompt_tokens": [t.tolist() for t in gens.prompt_tokens],
            "continuations": [t.tolist() for t in gens.tokens],
            "positions": scores.positions.tolist(),
        }
        for (tm, m), by_prompt, mean in zip(names, scores.kl_by_prompt, scores.kls, strict=True):
            record["steerings"][f"{tm}/{m}"][name] = [
                None if math.isnan(x) else x for x in by_prompt.tolist()
            ]
            print(f"{name:>11} {tm}/{m}: mean KL {mean:.4f}", flush=True)
        print(f"{name}: {len(prompts)} prompts, {time.time() - started:.0f} s", flush=True)
    _check(model, record, names, steerings, config, rows, report)
    write_json(study / RECORD, record, indent=None)
    print(f"wrote {study / RECORD} ({time.time() - started:.0f} s)")


def weighted_mean(kls: list[float | None], positions: list[int]) -> float:
    """The mean per-token KL over a set: each prompt's mean weighted by its continuation's positions."""
    total = sum(k * n for k, n in zip(kls, positions, strict=True) if k is not None)
    return total / sum(positions)


def _check(
    model: Bridge,
    record: dict,
    names: list[tuple[str, str]],
    steerings: list[lensteer.Steering],
    config: StudyConfig,
    rows: list[dict],
    report: dict,
) -> None:
    _, probe = calibration_set(model, config)
    positions = {name: s["positions"] for name, s in record["sets"].items()}
    gated = next(k for k, s in enumerate(steerings) if s.gate is not None)
    cross = {
        gated,
        *(next(k for k, (tm, _) in enumerate(names) if tm == t) for t in ("compassion", "honesty")),
    }
    for k, ((tm, m), s) in enumerate(zip(names, steerings, strict=True)):
        per = record["steerings"][f"{tm}/{m}"]
        cal = weighted_mean(per["calibration"], positions["calibration"])
        recorded = s.info["calibration"]["kl"]
        assert math.isclose(cal, recorded, rel_tol=TOLERANCE, abs_tol=0.005), (tm, m, cal, recorded)
        if k in cross:
            direct = steering_kl(model, s, probe)
            assert math.isclose(cal, direct, rel_tol=1e-3), (tm, m, cal, direct)
        held = weighted_mean(per["heldout"], positions["heldout"])
        (row,) = [
            r
            for r in rows
            if r["threat_model"] == tm
            and r["method"] == per["row"]
            and r["kl_budget"] == report["matched_kl_budget"]
            and r.get("layer") == report["threat_models"][tm]["layer"]
        ]
        assert math.isclose(held, row["kl_heldout"], rel_tol=TOLERANCE, abs_tol=0.005), (tm, m, held, row)


if __name__ == "__main__":
    main()
