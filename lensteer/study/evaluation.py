"""Evaluating one condition of the study: trait rate, KL, perplexity, repetition, over-refusal, capability.

Every condition (unsteered, each method, the random control) is scored on the same prompts.
"""

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from lensteer.core.chat import ChatPrompt
from lensteer.core.datasets import THREAT_MODELS, ContrastSet, load_dataset
from lensteer.core.stats import rate_with_ci
from lensteer.errors import ConfigError
from lensteer.evaluate.capability import load_mc_items, mc_accuracy
from lensteer.evaluate.compassion import compassion_scorer
from lensteer.evaluate.honesty import honesty_verdict
from lensteer.evaluate.metrics import response_perplexity
from lensteer.evaluate.refusal import is_redirecting_refusal, is_refusal
from lensteer.evaluate.repetition import conversation_repetition, rep_n
from lensteer.steering.calibration import KLProbe, kl_probe, steering_kl
from lensteer.steering.generation import generate, generate_conversations
from lensteer.steering.hooks import steer
from lensteer.steering.positions import Window
from lensteer.steering.spec import Steering
from lensteer.study.config import FOLLOW_UPS, MISALIGNING_CONTEXT, StudyConfig


def trait_flags(threat_model: str, texts: Sequence[str], examples: ContrastSet) -> list[bool]:
    """Per answer: does it show the aligned trait (refuses / is compassionate / is honest)?"""
    if threat_model == "refusal":
        return [is_refusal(t) for t in texts]
    if threat_model == "compassion":
        return compassion_scorer().predict(list(texts))
    if threat_model == "honesty":
        out = []
        for text, ex in zip(texts, examples, strict=True):
            out.append(honesty_verdict(text, str(ex.true_answer), str(ex.false_answer)).honest)
        return out
    raise ConfigError(f"unknown threat model {threat_model!r}; allowed: {list(THREAT_MODELS)}")


@dataclass
class _EvalSets:
    harmless: list[str]
    kl: KLProbe
    mc: list[Any]
    unsteered: dict[str, Any] = field(default_factory=dict)  # harmless-side baseline, shared by threat models


def eval_sets(model: Any, config: StudyConfig) -> _EvalSets:
    """The shared evaluation sets: harmless prompts (over-refusal, perplexity), the KL calibration
    set (held-out harmless prompts with unsteered continuations) and the capability items."""
    refusal = load_dataset("refusal")
    harmless = refusal.test.paired_prompts[: config.n_harmless]
    kl_prompts = refusal.val.paired_prompts[: config.n_kl]
    mc_items = load_mc_items()
    mc = [] if config.n_mc == 0 else mc_items[: config.n_mc] if config.n_mc is not None else mc_items
    return _EvalSets(harmless=harmless, kl=kl_probe(model, kl_prompts, batch_size=config.batch_size), mc=mc)


def _conversations(prompts: Sequence[ChatPrompt], config: StudyConfig) -> list[list[str]]:
    return [[p.user, *(FOLLOW_UPS[k % len(FOLLOW_UPS)] for k in range(config.n_turns - 1))]
            for p in prompts[: config.n_conversations]]


def evaluate_condition(
    model: Any,
    threat_model: str,
    steering: Steering | None,
    config: StudyConfig,
    sets: _EvalSets,
    *,
    baseline: dict[str, Any] | None = None,
    conversations: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate one condition; returns the table row's metrics and example texts.

    ``conversations=False`` leaves out the multi-turn repetition (``repetition`` is then the single
    answers' rep-4), for :func:`conversation_fields` to add for several conditions at once."""
    ds = load_dataset(threat_model).test.head(config.n_eval)
    context = MISALIGNING_CONTEXT[threat_model]
    prompts = ds.chat_prompts(context=context)
    gen = generate(model, prompts, steering=steering, max_new_tokens=config.max_new_tokens,
                   batch_size=config.batch_size)
    trait = rate_with_ci(trait_flags(threat_model, gen.texts, ds), seed=config.seed)
    trait_ci = [trait.low, trait.high]
    redirect = rate_with_ci([is_redirecting_refusal(t) for t in gen.texts], seed=config.seed)
    if steering is None and "harmless" in sets.unsteered:  # the unsteered harmless side is the same for all
        harmless, ppl = sets.unsteered["harmless"], sets.unsteered["perplexity"]
    else:
        harmless = generate(model, sets.harmless, steering=steering, max_new_tokens=config.max_new_tokens,
                            batch_size=config.batch_size)
        texts = [t if t.strip() else "." for t in harmless.texts]
        ppl = response_perplexity(model, sets.harmless, texts, batch_size=config.batch_size).corpus
        if steering is None:
            sets.unsteered.update(harmless=harmless, perplexity=ppl)
    over = rate_with_ci([is_refusal(t) for t in harmless.texts], seed=config.seed)
    row: dict[str, Any] = {
        "trait": trait.value, "trait_ci": trait_ci, "over_refusal": over.value,
        # refusals that offer an alternative or point to help (the helpful kind; refusal rows only)
        **({"redirect": redirect.value, "redirect_ci": [redirect.low, redirect.high]} if threat_model == "refusal" else {}),
        "over_refusal_ci": [over.low, over.high], "perplexity": ppl,
        "steered_share": gen.steered_share() if steering is not None else 0.0,
        "harmless_steered_share": harmless.steered_share() if steering is not None else 0.0,
        "gated_share": sum(gen.gated) / len(gen.gated),
        "kl": steering_kl(model, steering, sets.kl) if steering is not None else 0.0,
        "rep4_single": sum(rep_n(t, 4) for t in gen.texts) / len(gen.texts),
    }
    row["repetition"] = row["rep4_single"]
    if conversations and config.n_conversations > 0:
        row.update(conversation_fields(model, threat_model, [steering], config)[0])
    if sets.mc and steering is None and "capability" in sets.unsteered:
        row["capability"] = sets.unsteered["capability"]
    elif sets.mc:
        cap_steering = None if steering is None else _teacher_forced(steering)
        with torch.inference_mode(), (steer(model, cap_steering) if cap_steering is not None else nullcontext()):
            row["capability"] = mc_accuracy(model, sets.mc, batch_size=config.batch_size).accuracy
        if steering is None:
            sets.unsteered["capability"] = row["capability"]
    if baseline is not None:
        row["perplexity_ratio"] = ppl / baseline["perplexity"]
        row["capability_delta"] = row.get("capability", math.nan) - baseline.get("capability", math.nan)
    else:
        row["perplexity_ratio"] = 1.0
    examples = {"prompts": [p.user for p in prompts[:4]], "texts": list(gen.texts[:4]),
                "harmless_prompts": list(sets.harmless[:2]), "harmless_texts": list(harmless.texts[:2])}
    return row, examples


def conversation_fields(model: Any, threat_model: str, conditions: Sequence[Steering | None],
                        config: StudyConfig) -> list[dict[str, Any]]:
    """Multi-turn repetition for each condition (a steering, or ``None`` for unsteered).

    All conditions' conversations decode together, one batch per turn (``prompt_steerings``): a
    turn costs about the same number of decode steps for five conditions as for one.
    """
    convs = _conversations(eval_prompts(threat_model, config.n_eval), config)
    owners = [c for c in conditions for _ in convs]
    turns = generate_conversations(model, [c for _ in conditions for c in convs], prompt_steerings=owners,
                                   max_new_tokens=config.max_new_tokens, batch_size=max(config.batch_size, len(owners)))
    out = []
    for k in range(len(conditions)):
        mine = range(k * len(convs), (k + 1) * len(convs))
        per_turn = conversation_repetition([[t.texts[c] for t in turns] for c in mine])
        by_turn = [tr.report.rep4 for tr in per_turn]
        out.append({"repetition_by_turn": by_turn, "rep4_history_by_turn": [tr.rep4_history for tr in per_turn],
                    "repetition": sum(by_turn) / len(per_turn)})
    return out


def _teacher_forced(steering: Steering) -> Steering:
    """Capability is teacher-forced, so every position (but the attention-sink first token, which is
    never a generated one) stands in for a generated one."""
    return replace(steering, positions=Window(1, None), gate=None)


def _random_like(steering: Steering, seed: int) -> Steering:
    g = torch.Generator().manual_seed(seed)
    unit = torch.randn(steering.d_model, generator=g)
    return replace(steering, unit=unit, info={**steering.info, "control": "random direction, same norm and site"})


def eval_prompts(threat_model: str, n: int) -> list[ChatPrompt]:
    """The study's evaluation prompts for a threat model: its test split under the misaligning context."""
    if threat_model not in THREAT_MODELS:
        raise ConfigError(f"unknown threat model {threat_model!r}; allowed: {list(THREAT_MODELS)}")
    return load_dataset(threat_model).test.head(n).chat_prompts(context=MISALIGNING_CONTEXT[threat_model])


def evaluate_steering(model: Any, steering: Steering, threat_model: str, config: StudyConfig, *,
                      name: str = "steered") -> dict[str, Any]:
    """Evaluate a (saved) steering against the unsteered baseline on one threat model.

    Returns a report shaped like :func:`run_study`'s (``threat_models[threat_model]`` with ``baseline``
    and ``methods[name]``), so :func:`headline_table` prints it.
    """
    sets = eval_sets(model, config)
    base, _ = evaluate_condition(model, threat_model, None, config, sets)
    row, examples = evaluate_condition(model, threat_model, steering, config, sets, baseline=base)
    row.update(scale=steering.scale, coefficient=steering.coefficient, layer=steering.layers[0])
    return {"matched_kl_budget": row["kl"], "config": config.to_dict(),
            "threat_models": {threat_model: {"baseline": base, "methods": {name: row}, "examples": examples}}}
