"""Benchmark: scoring a condition's answers, the old way (three passes) vs one pass, side by side.

Before, per condition the perplexity of the harmless answers and of the answers to the test prompts were
two unsteered passes through the bridge, and the rollout KL a third (unsteered, plain view) plus a
steered one; now the perplexities are read off the KL's unsteered pass (``lensteer.study.answer_scores``).
Both ways run in one process, in interleaved rounds, on the embedded model at the demo profile's sizes,
on the same answers (every condition decoded as the study decodes them); the same numbers are checked
(perplexity to 1e-5, relative; the rollout KL is the same function).

Decoding under a few-shot context in one stream (the context computed once per group of rows steered
alike) was measured with this script's version on branch score-tried: no faster than one call per condition
on this CPU (``RESULTS.md``), so the study keeps decoding few-shot prompts condition by condition.

    python benchmarks/bench_scoring.py [--threat-model compassion] [--rounds 1] [--threads 1]
"""

import argparse
import os
import statistics
import time
from typing import Any

import torch
from _machine import machine_line

import lensteer
from lensteer.core.chat import ChatPrompt
from lensteer.evaluate.metrics import response_perplexity
from lensteer.steering.calibration import sequence_kl
from lensteer.study import evaluation
from lensteer.study.answer_scores import answer_scores, scored_text
from lensteer.study.config import StudyConfig


def _conditions(model: Any, threat_model: str, config: StudyConfig) -> list[evaluation.Condition]:
    """The baselines and three steerings along random directions at the middle layer."""
    d, layer = int(model.cfg.d_model), int(model.cfg.n_layers) // 2
    steered = []
    for seed, mode in enumerate(("add", "swfc", "add")):
        unit = torch.randn(d, generator=torch.Generator().manual_seed(seed))
        s = lensteer.Steering(unit=unit / unit.norm(), layers=(layer,), mode=mode, scale=4.0 + seed)
        steered.append(evaluation.Condition(method=f"{mode}:{seed}", steering=s))
    return [*evaluation.baseline_conditions(threat_model, config), *steered]


def _score_old(
    model: Any, steering: Any, chats: Any, gen: Any, config: StudyConfig
) -> tuple[float | None, float]:
    """A separate perplexity pass (through the bridge) and, for a steering, the rollout KL's own pass."""
    texts = [scored_text(t) for t in gen.texts]
    ppl = response_perplexity(model, chats, texts, batch_size=config.batch_size).corpus
    kl = (
        sequence_kl(model, steering, gen.prompt_tokens, gen.tokens, batch_size=config.batch_size)
        if steering is not None and any(len(t) > 0 for t in gen.tokens)
        else None
    )
    return kl, ppl


def _score_new(
    model: Any, steering: Any, chats: Any, gen: Any, config: StudyConfig
) -> tuple[float | None, float]:
    got = answer_scores(model, steering, chats, gen, batch_size=config.batch_size)
    return got.kl_rollout, got.perplexity


def _score_all(
    fn: Any, model: Any, conditions: Any, prompts: Any, gens: Any, harmless: Any, config: StudyConfig
) -> list[Any]:
    """Per condition: ((rollout KL, perplexity of the test answers), perplexity of the harmless answers)."""
    return [
        (
            fn(model, c.steering, evaluation._with_system(prompts, c.system), g, config),
            fn(model, None, evaluation._with_system(_chats(config), c.system), h, config)[1],  # no KL there
        )
        for c, g, h in zip(conditions, gens, harmless, strict=True)
    ]


def _timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--threat-model", default="compassion")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(args.threads), flush=True)
    config = StudyConfig.demo()
    model = lensteer.load_model()
    conditions = _conditions(model, args.threat_model, config)
    prompts = evaluation.eval_prompts(args.threat_model, config.n_eval)
    times: dict[str, list[float]] = {"score old": [], "score new": []}
    gens = evaluation._joint(model, conditions, prompts, config, config.max_new_tokens)
    harmless = evaluation._joint(
        model, conditions, [ChatPrompt(user=h) for h in _harmless(config)], config, config.max_new_tokens
    )
    for r in range(args.rounds):
        scores: dict[str, list[Any]] = {}
        for name in ("score old", "score new")[:: 1 if r % 2 == 0 else -1]:
            fn = _score_old if name == "score old" else _score_new
            seconds, scores[name] = _timed(
                lambda fn=fn: _score_all(  # type: ignore[misc]
                    fn, model, conditions, prompts, gens, harmless, config
                )
            )
            times[name].append(seconds)
            print(f"round {r + 1}: {name} {seconds:.1f} s", flush=True)
        worst = max(
            abs(a[0][1] / b[0][1] - 1) + abs(a[1] / b[1] - 1)
            for a, b in zip(scores["score old"], scores["score new"], strict=True)
        )
        kl = max(
            abs(a[0][0] - b[0][0]) if a[0][0] is not None else 0.0
            for a, b in zip(scores["score old"], scores["score new"], strict=True)
        )
        print(
            f"largest relative perplexity difference {worst:.1e}, rollout KL difference {kl:.1e}", flush=True
        )
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{args.threat_model}, {len(conditions)} conditions x {len(prompts)} test prompts, "
        f"{config.max_new_tokens} new tokens, median of {args.rounds} round(s): "
        f"scoring {med['score old']:.1f} s vs "
        f"{med['score new']:.1f} s ({med['score old'] / med['score new']:.2f}x)"
    )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


def _harmless(config: StudyConfig) -> list[str]:
    from lensteer.core.datasets import load_dataset
    from lensteer.threats import HARMLESS_DATASET

    return load_dataset(HARMLESS_DATASET).test.stratified(config.n_harmless).paired_prompts


def _chats(config: StudyConfig) -> list[ChatPrompt]:
    return [ChatPrompt(user=h) for h in _harmless(config)]


if __name__ == "__main__":
    main()
