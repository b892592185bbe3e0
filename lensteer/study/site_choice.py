"""The study's choice of each threat model's steering site: candidates from probing and patching, chosen by
what steering there does to the behaviour on validation prompts (issue 28, items 1-2).

1. **Candidate layers**: the configured stride over the depth (``candidate_layers`` / ``layer_stride``) plus the
   ``patching_layers`` layers where attribution patching of the threat model's own patching pairs
   (:func:`~lensteer.locate.patching_pairs`, :func:`~lensteer.locate.candidates.patch_pairs`) has its largest
   effect at the post-instruction tokens (those candidates are marked ``from_patching``).
2. **Candidate directions** at each layer, from three sources (:mod:`lensteer.locate.candidates`): the prompt
   contrast (harmful minus harmless twin for refusal; the same question under the aligned minus the
   misaligning context otherwise) at the last ``select_positions`` post-instruction tokens, as Arditi et al.
   (2024) read it; the response-mean difference of means and the probe normal, both from the study's probing
   activations (collected once per threat model; read at the decision for a threat model with
   ``decision_contexts``).
3. **Scoring** (:func:`~lensteer.study.selection.select_candidate`): SwFC along each candidate, at the
   study's positions, is calibrated to the first KL budget on the study's KL calibration set
   (:func:`~lensteer.study.evaluation.calibration_probe`: held-apart harmless and borderline prompts; no
   gate; the KL step of :func:`~lensteer.study.coherence.calibrate_coherent`, whose fluency bounds the
   study then applies to the chosen steering only, as they cost generations), then scored on ``n_select``
   **validation** prompts in the misaligning setting by the shift of the first-token decision log-odds
   (:func:`~lensteer.evaluate.opening_log_odds`: the threat model's aligned vs misaligned openings, or the
   true vs false answer token) and by the trait rate of ``select_new_tokens``-token greedy answers; its KL and
   its ablation KL are read on validation harmless prompts. Arditi's filters, the lower bootstrap bound,
   the same-KL random direction and the tie-break toward patching are :func:`~lensteer.study.selection.choose`'s.

If no candidate passes, the site falls back to the best passing lower bound that did not beat random, else to
the best probe layer's difference of means, and ``chosen`` says so (``selected: false``).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from lensteer import threats
from lensteer.core.bridge import Bridge
from lensteer.core.chat import ChatPrompt, tokenize_prompt
from lensteer.core.datasets import ContrastSet, load_dataset
from lensteer.errors import DataError
from lensteer.evaluate.decision import first_difference, opening_ids
from lensteer.locate.candidates import (
    Candidate,
    build_candidates,
    patch_pairs,
    patching_scores,
    top_patching_layers,
)
from lensteer.locate.directions import Direction
from lensteer.locate.pairs import patching_pairs
from lensteer.locate.probing import ProbingReport
from lensteer.steering.calibration import KLProbe, calibrate, kl_probe
from lensteer.steering.spec import Steering
from lensteer.study.config import STUDY_POSITIONS, StudyConfig
from lensteer.study.evaluation import trait_flags
from lensteer.study.selection import (
    DecisionProbe,
    HarmlessChecks,
    Selection,
    SelectionRules,
    TraitCheck,
    select_candidate,
)

SKIP_LAST_FRACTION = 0.2  # Arditi et al.: no candidate in the last 20% of the layers
MAX_PATCHING_PAIRS = 16  # attribution patching is one forward and one backward over these pairs
CALIBRATION_TOLERANCE = 0.15  # the chosen steering is calibrated again, tightly, by the study


@dataclass(frozen=True, kw_only=True, eq=False)
class SiteChoice:
    """The chosen layer and direction, why, and every candidate's numbers (``to_dict``: report.json keys)."""

    layer: int
    direction: Direction
    reasons: tuple[str, ...]
    selection: Selection
    patching: dict[str, Any]
    selected: bool

    def to_dict(self) -> dict[str, Any]:
        sel = self.selection.to_dict()
        chosen = sel["chosen"] or {
            "source": "response_mean" if self.direction.method == "diff_of_means" else self.direction.method,
            "layer": self.layer,
            "position": self.direction.position,
        }
        return {
            "candidates": sel["candidates"],
            "chosen": {**chosen, "why": "; ".join(self.reasons), "selected": self.selected},
            "selection": {**sel["settings"], "patching": self.patching},
        }


def cutoff_layer(n_layers: int) -> int:
    """The first layer of the last :data:`SKIP_LAST_FRACTION` of the depth (candidates stay below it)."""
    return max(1, round(n_layers * (1 - SKIP_LAST_FRACTION)))


def patching_evidence(model: Bridge, tm: threats.ThreatModel, config: StudyConfig) -> dict[str, Any]:
    """Attribution patching of ``tm``'s training patching pairs; its top layers at the post-instruction tokens
    (and the last token) below the cutoff. Pairs this tokenizer cannot build are said so (no layers)."""
    if config.patching_layers == 0:
        return {"top_layers": [], "why": "patching_layers = 0"}
    try:
        pairs = patching_pairs(
            model,
            tm.load().fit,
            n=min(MAX_PATCHING_PAIRS, config.n_train),
            design=tm.pair_design,
        )
    except DataError as err:
        return {"top_layers": [], "why": f"no patching pairs: {err}"}
    result = patch_pairs(model, pairs, method="attribution")
    first = tokenize_prompt(model, pairs.clean[0])
    start, end = first.post_instruction
    columns = sorted({c - first.n_tokens for c in range(start, end)} | {-1})
    n = int(model.cfg.n_layers)
    top = top_patching_layers(result, config.patching_layers, columns=columns, below=cutoff_layer(n))
    return {
        "method": "attribution",
        "n_pairs": len(pairs),
        "design": pairs.design,
        "columns": columns,
        "scores": {str(k): round(v, 4) for k, v in patching_scores(result, columns).items()},
        "top_layers": list(top),
    }


def candidate_layer_set(model: Bridge, config: StudyConfig, patched: Sequence[int]) -> list[int]:
    """The configured candidate layers (or every ``layer_stride``-th from 1 below the cutoff) plus ``patched``."""
    n = int(model.cfg.n_layers)
    config.check_layers(n)
    if config.candidate_layers is not None:
        strided = {layer % n for layer in config.candidate_layers}
    else:
        strided = set(range(1, cutoff_layer(n), config.layer_stride)) or {0}
    return sorted(strided | set(patched))


def prompt_contrast(
    tm: threats.ThreatModel, train: ContrastSet
) -> tuple[list[ChatPrompt], list[ChatPrompt]] | None:
    """Aligned- vs misaligned-eliciting prompts without replies: the request vs its harmless twin (a threat
    model located on the request side: the twin is what the model should *not* refuse), else the same
    question under the aligned vs the misaligning context (``None``: the threat model names none)."""
    if tm.contrast_side == "prompt":
        return train.chat_prompts(), train.chat_prompts(paired=True)
    contexts = tm.decision_contexts or tm.pair_design.contexts
    if contexts is None:
        return None
    return train.chat_prompts(context=contexts[0]), train.chat_prompts(context=contexts[1])


@dataclass(frozen=True, kw_only=True)
class DecisionSet:
    """Validation prompts the decision is read on, its token ids, and the generation check's prompts."""

    prompts: list[Any]
    aligned_ids: Any
    misaligned_ids: Any
    answers: list[ChatPrompt]
    examples: ContrastSet
    how: str


def decision_set(model: Bridge, tm: threats.ThreatModel, config: StudyConfig) -> DecisionSet:
    """``n_select`` validation questions in the misaligning setting; the decision is the threat model's opening
    tokens at the assistant start, or (none given) the first token where the written replies part."""
    ds, context = tm.load(), tm.misaligning_context
    tokens = tm.decision_tokens or (
        ((tm.pair_design.tokens[0],), (tm.pair_design.tokens[1],)) if tm.pair_design.tokens else None
    )
    if tokens is not None:
        val = ds.val.stratified(config.n_select)
        prompts = val.chat_prompts(context=context)
        good, bad = opening_ids(model, tokens[0], tokens[1])
        how = f"log p({' | '.join(tokens[0])}) - log p({' | '.join(tokens[1])}) at the assistant start"
        return DecisionSet(
            prompts=prompts, aligned_ids=good, misaligned_ids=bad, answers=prompts, examples=val, how=how
        )
    val = ds.with_responses().val.stratified(config.n_select)
    stems, good_ids, bad_ids = first_difference(
        model,
        val.chat_prompts(context=context, response="aligned"),
        val.chat_prompts(context=context, response="misaligned"),
    )
    how = "log p(aligned) - log p(misaligned) token where the written replies first differ"
    return DecisionSet(
        prompts=list(stems),
        aligned_ids=good_ids,
        misaligned_ids=bad_ids,
        answers=val.chat_prompts(context=context),
        examples=val,
        how=how,
    )


def response_candidates(
    report: ProbingReport, layers: Sequence[int], patched: Sequence[int], position: str
) -> list[Candidate]:
    """The response-mean difference of means and the probe normal at each layer, from the probing report."""
    out = []
    for layer in layers:
        for source, method in (("response_mean", "diff_of_means"), ("probe", "probe")):
            direction = replace(report.direction(method, layer), position=position)
            out.append(
                Candidate(
                    source=source,
                    layer=layer,
                    position=position,
                    direction=direction,
                    from_patching=layer in patched,
                )
            )
    return out


@dataclass(frozen=True, kw_only=True)
class SiteInputs:
    """What the study's locate step hands the site choice."""

    threat_model: str
    report: ProbingReport
    layers: tuple[int, ...]
    patching: dict[str, Any]
    response_position: str
    calibration: KLProbe
    reference_norms: dict[int, float]
    progress: bool = False  # a bar over the candidates


def choose_site(model: Bridge, config: StudyConfig, inputs: SiteInputs) -> SiteChoice:
    """Build the candidates, score them on validation prompts (:func:`select_candidate`) and choose the site."""
    tm = threats.get(inputs.threat_model)
    patched = tuple(inputs.patching.get("top_layers", ()))
    contrast = prompt_contrast(tm, tm.load().fit.stratified(config.n_train))
    cands = list(
        build_candidates(
            model,
            inputs.layers,
            prompt_contrast=contrast,
            from_patching=patched,
            last_k_positions=config.select_positions,
            batch_size=config.batch_size,
        )
        if contrast is not None
        else ()
    )
    cands += response_candidates(inputs.report, inputs.layers, patched, inputs.response_position)
    cands.sort(key=lambda c: c.layer)
    decision = decision_set(model, tm, config)
    harmless = load_dataset(threats.HARMLESS_DATASET).val.stratified(config.n_kl).paired_prompts
    budget, positions = config.kl_budgets[0], STUDY_POSITIONS[config.positions]

    def steering_for(cand: Candidate) -> Steering:
        return Steering.from_direction(
            cand.direction,
            mode="swfc",
            scale=0.1,
            relative=True,
            reference_norm=inputs.reference_norms[cand.layer],
            positions=positions,
            info={"candidate": {"source": cand.source, "position": cand.position}},
        )

    found: list[float] = []  # calibrated scales so far: the next candidate starts from their geometric mean

    def calibrated(steering: Steering) -> Steering:
        start = math.exp(sum(map(math.log, found)) / len(found)) if found else None
        out = calibrate(
            model,
            steering,
            inputs.calibration,
            budget,
            tolerance=CALIBRATION_TOLERANCE,
            start=start,
            max_evals=10,
        ).steering
        if out.scale and math.isfinite(out.scale) and out.scale > 0:
            found.append(out.scale)
        return out

    selection = select_candidate(
        model,
        cands,
        DecisionProbe(
            prompts=decision.prompts,
            aligned_ids=decision.aligned_ids,
            misaligned_ids=decision.misaligned_ids,
        ),
        calibrate=calibrated,
        steering_for=steering_for,
        harmless=HarmlessChecks(
            prompts=harmless,
            heldout=kl_probe(
                model, harmless, continuation_tokens=config.kl_tokens, batch_size=config.batch_size
            ),
        ),
        trait=TraitCheck(
            prompts=tuple(decision.answers),
            scorer=lambda _prompts, texts: trait_flags(inputs.threat_model, texts, decision.examples),
            max_new_tokens=config.select_new_tokens,
        ),
        rules=SelectionRules(
            skip_last_fraction=SKIP_LAST_FRACTION,
            seed=config.seed,
            batch_size=config.batch_size,
            progress=inputs.progress,
        ),
    )
    selection = replace(
        selection, settings={**selection.settings, "decision": decision.how, "kl_budget": budget}
    )
    return _site(selection, cands, inputs)


def _site(selection: Selection, cands: Sequence[Candidate], inputs: SiteInputs) -> SiteChoice:
    """The chosen candidate's site, or a fallback that says why nothing was chosen."""
    scores = selection.candidates
    if selection.chosen is not None:
        k = next(i for i, s in enumerate(scores) if s is selection.chosen)
        return SiteChoice(
            layer=cands[k].layer,
            direction=cands[k].direction,
            reasons=(f"chose {selection.chosen.label}", selection.why),
            selection=selection,
            patching=inputs.patching,
            selected=True,
        )
    ranked = [
        (s.decision_shift_ci[0], i)
        for i, s in enumerate(scores)
        if s.passes and s.decision_shift_ci is not None
    ]
    if ranked:
        _, k = max(ranked)
        why = (
            f"fallback: {selection.why}; took {scores[k].label}, the largest lower bound among the candidates "
            "that pass the filters, although it does not beat a same-KL random direction"
        )
        direction, layer = cands[k].direction, cands[k].layer
    else:
        auroc = dict(zip(inputs.report.layers, inputs.report.metrics["probe_auroc"], strict=True))
        layer = max(inputs.layers, key=lambda la: (auroc[la], -la))
        direction = inputs.report.direction("diff_of_means", layer)
        why = (
            f"fallback: {selection.why}; took the response-mean difference of means at layer {layer}, "
            "the best probe AUROC among the candidate layers"
        )
    return SiteChoice(
        layer=layer,
        direction=direction,
        reasons=(why,),
        selection=selection,
        patching=inputs.patching,
        selected=False,
    )
