"""Choosing the steering site and building the study's steerings there.

For each threat model: probe the contrast (response-side; for honesty, where the decision is made) at
candidate layers, choose the site by what steering there does to the behaviour on validation prompts
(:mod:`lensteer.study.site_choice`: candidates from probing and patching, the first-token decision shift at
the KL budget, Arditi et al.'s filters, the lower bootstrap bound, a same-KL random control), find the
massive-activation tokens there by the norm rule (never steered), and build SwFC along the chosen
direction and StTP / StMP (mirror and push) with thresholds fitted per token on the model's own answers
under the aligned system prompt vs the misaligning context (refusal adds a CAST-style prompt gate
chosen by what it costs on borderline prompts: :mod:`lensteer.study.gate`).
"""

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from lensteer import threats
from lensteer.core.activations import collect_activations
from lensteer.core.bridge import Bridge
from lensteer.core.chat import ChatPrompt
from lensteer.core.models import model_fingerprint
from lensteer.errors import ConfigError
from lensteer.locate.massive import massive_tokens
from lensteer.locate.probing import ContrastKind, contrast_prompts, probe_layers
from lensteer.steering.calibration import KLProbe, reference_norm
from lensteer.steering.gates import GateLike
from lensteer.steering.generation import generate
from lensteer.steering.spec import Steering
from lensteer.steering.token_fit import response_token_activations
from lensteer.study.config import SELECTIVE_METHODS, STUDY_POSITIONS, StudyConfig
from lensteer.study.evaluation import trait_flags
from lensteer.study.gate import prompt_gate
from lensteer.study.recommend import recommend_site
from lensteer.study.site_choice import (
    SiteChoice,
    SiteInputs,
    candidate_layer_set,
    choose_site,
    patching_evidence,
)

MIN_FIT_ANSWERS = 4  # answers per class a scorer must agree with before the per-token fit is filtered by it


@dataclass
class _Located:
    layer: int
    site: str
    reasons: list[str]
    probing: dict[str, Any]
    steerings: dict[str, Steering]
    reference_norm: float
    selection: dict[str, Any] | None = None  # the site choice: every candidate's numbers and the chosen one
    massive: dict[str, Any] | None = None  # the massive-token rule at the chosen layer
    fit: dict[str, Any] = field(default_factory=dict)  # how StTP / StMP thresholds were fitted
    gate_search: dict[str, Any] | None = None
    gate_curve: list[dict[str, float]] | None = None  # the gate's budgets on validation (study.gate)
    sweep: dict[int, dict[str, Steering]] = field(default_factory=dict)  # the other layers of a layer sweep


def _candidate_layers(model: Bridge, config: StudyConfig) -> list[int]:
    n = int(model.cfg.n_layers)
    config.check_layers(n)
    if config.candidate_layers is not None:
        return sorted({layer % n for layer in config.candidate_layers})
    return list(range(1, max(2, int(n * 0.8)), config.layer_stride))


def locate_threat_model(
    model: Bridge,
    threat_model: str,
    config: StudyConfig,
    harmless: Sequence[str],
    kl: KLProbe | None = None,
    *,
    progress: bool = False,
) -> _Located:
    """Probe the contrast, choose the site, and build the uncalibrated steerings there.

    The probing contrast is the response contrast (aligned vs misaligned written replies, response mean), or
    for a threat model with ``decision_contexts`` (honesty) the decision contrast: the same question under
    the aligned vs the misaligning context at the last token before the answer.

    With the study's calibration set ``kl`` (:func:`~lensteer.study.evaluation.calibration_probe`) and no
    ``layer`` in the config, the site is chosen by behaviour (:mod:`lensteer.study.site_choice`): candidates
    over layers (a stride plus the top layers of attribution patching) x positions x sources (prompt contrast,
    response mean, probe), each calibrated to the first KL budget and scored on validation prompts by the
    first-token decision shift; the winner has the largest lower bootstrap bound among those passing
    Arditi's filters and beats a same-KL random direction. Every method then steers along the chosen
    direction at its layer. Without ``kl``, the layer is the probing study's (:func:`recommend_site`).
    ``progress``: a bar over the site choice's candidates.
    """
    config.check_layers(int(model.cfg.n_layers))
    tm = threats.get(threat_model)
    ds = tm.load().with_responses()
    choose = config.layer is None and kl is not None
    patching = patching_evidence(model, tm, config) if choose else {}
    if config.layer is not None:
        screened = [config.layer]
    elif choose:
        screened = candidate_layer_set(model, config, patching["top_layers"])
    else:
        screened = _candidate_layers(model, config)
    extra = _sweep_layers(model, config)
    layers = sorted(set(screened) | set(extra))
    acts: dict[str, torch.Tensor] = {}
    n_val = max(8, config.n_train // 3)
    contexts = tm.decision_contexts
    contrast: ContrastKind = "decision" if contexts is not None else "response"
    for split, n in (("train", config.n_train), ("val", n_val)):
        rows = ds.fit if split == "train" else ds.val  # fit: training rows minus the held-apart ones
        pos, neg, position = contrast_prompts(rows.stratified(n), contrast, contexts)
        both = collect_activations(
            model, pos + neg, layers=layers, position=position, batch_size=config.batch_size
        )
        acts[f"pos_{split}"], acts[f"neg_{split}"] = both[: len(pos)], both[len(pos) :]
    acts["pos_test"], acts["neg_test"] = acts["pos_val"], acts["neg_val"]
    report = probe_layers(
        acts,
        layers=layers,
        dataset=threat_model,
        contrast=contrast,
        position="decision" if contexts is not None else "response_mean",
        model=model_fingerprint(model).to_dict(),
        n_boot=100,
        seed=config.seed,
    )
    refs: dict[int, float] = {}
    site: SiteChoice | None = None
    if config.layer is not None:
        layer, reasons = config.layer, [f"layer {config.layer} set in the config"]
        chosen_direction = report.direction("diff_of_means", layer)
    elif kl is not None:
        refs = {at: reference_norm(model, harmless, at, batch_size=config.batch_size) for at in screened}
        site = choose_site(
            model,
            config,
            SiteInputs(
                threat_model=threat_model,
                report=report,
                layers=tuple(screened),
                patching=patching,
                response_position="decision" if contexts is not None else "response_mean",
                calibration=kl,
                reference_norms=refs,
                progress=progress,
            ),
        )
        layer, reasons, chosen_direction = site.layer, list(site.reasons), site.direction
    else:
        layer, reasons = _probing_layer(report)
        chosen_direction = report.direction("diff_of_means", layer)
    search = prompt_gate(model, tm, config, _candidate_layers(model, config)) if tm.prompt_gate else None
    gate = search.gate if search is not None else None
    positions = STUDY_POSITIONS[config.positions]
    answers: dict[str, Any] = {}  # the model's own answers, generated once for every layer's per-token fit
    notes: dict[int, tuple[dict[str, Any] | None, dict[str, Any]]] = {}

    def steerings_at(at: int) -> tuple[dict[str, Steering], float]:
        col = layers.index(at)
        ref = refs[at] if at in refs else reference_norm(model, harmless, at, batch_size=config.batch_size)
        direction = chosen_direction if at == layer else report.direction("diff_of_means", at)
        massive = (
            massive_tokens(
                model,
                _norm_prompts(threat_model, harmless),
                at,
                ratio=config.massive_ratio,
                batch_size=config.batch_size,
            )
            if config.massive_ratio is not None
            else None
        )
        max_norm = massive.max_norm if massive is not None else None
        aligned, misaligned = acts["pos_train"][:, col], acts["neg_train"][:, col]
        fit: dict[str, Any] = {
            "rule": "written_means",
            "n_aligned": len(aligned),
            "n_misaligned": len(misaligned),
        }
        if config.selective_fit == "generated_tokens" and any(m in SELECTIVE_METHODS for m in config.methods):
            aligned, misaligned, fit = answer_token_classes(
                model, threat_model, config, direction, at, max_norm, answers, fallback=(aligned, misaligned)
            )
        notes[at] = (massive.to_dict() if massive is not None else None, fit)
        return {
            method: make_steering(method, direction, aligned, misaligned, ref, positions, gate, max_norm)
            for method in config.methods
        }, ref

    steerings, ref = steerings_at(layer)
    return _Located(
        layer=layer,
        site="resid_post",
        reasons=reasons,
        probing=report.to_dict(),
        steerings=steerings,
        reference_norm=ref,
        selection=site.to_dict() if site is not None else None,
        massive=notes[layer][0],
        fit=notes[layer][1],
        gate_search=search.to_dict() if search is not None else None,
        gate_curve=search.curve_dicts() if search is not None else None,
        sweep={at: steerings_at(at)[0] for at in extra if at != layer},
    )


def _probing_layer(report: Any) -> tuple[int, list[str]]:
    """The probing study's layer (:func:`recommend_site`), or its best probe layer if none passes the rules."""
    try:
        rec = recommend_site(report, method="diff_of_means")
        return rec.layer, list(rec.reasons)
    except ConfigError as err:
        layer = report.best_layer("probe_auroc")
        return layer, [
            f"no layer passed the selection rules ({err}); took the best probe AUROC layer {layer}"
        ]


def _sweep_layers(model: Bridge, config: StudyConfig) -> list[int]:
    n = int(model.cfg.n_layers)
    config.check_layers(n)
    return sorted({x % n for x in config.sweep_layers})


def make_steering(
    method: str,
    direction: Any,
    aligned: torch.Tensor,
    misaligned: torch.Tensor,
    ref: float,
    positions: Any,
    gate: GateLike | None,
    max_norm: float | None = None,
) -> Steering:
    """One uncalibrated steering per method, all along the response-side difference of means.

    SwFC / add: a fixed addition (relative to the reference norm); StTP / StMP / StMP-push: thresholds
    from a one-feature logistic fit of the two classes' projections (:meth:`Steering.from_contrast`;
    ``aligned`` / ``misaligned`` are per-token answer residuals or response means); ACE: the misaligned
    mean projection as reference; ablate / angular: start at full ablation / 10 deg. Tokens above
    ``max_norm`` (massive activations) are never steered.
    """
    common: dict[str, Any] = {"positions": positions, "gate": gate, "max_norm": max_norm}
    if method in ("SwFC", "add"):
        return Steering.from_direction(
            direction,
            mode="swfc" if method == "SwFC" else "add",
            scale=0.1,
            relative=True,
            reference_norm=ref,
            **common,
        )
    if method in SELECTIVE_METHODS:
        mode = "sttp" if method == "StTP" else "stmp"
        return Steering.from_contrast(
            direction,
            aligned,
            misaligned,
            mode=mode,  # type: ignore[arg-type]
            stmp_variant="push" if method == "StMP-push" else "mirror",
            **common,
        )
    if method == "ace":
        return Steering.from_direction(
            direction, mode="ace", reference=float((misaligned @ direction.unit).mean()), **common
        )
    return Steering.from_direction(
        direction,
        mode=method,  # type: ignore[arg-type]
        scale=1.0 if method == "ablate" else 10.0,
        **common,
    )


def _norm_prompts(threat_model: str, harmless: Sequence[str]) -> list[Any]:
    """Prompts the massive-token rule measures norms on: the threat model's training prompts in their
    misaligning context and bare, and harmless prompts (chat templates, few-shot turns, short and long)."""
    train = threats.get(threat_model).load().fit.stratified(8)
    return [
        *train.chat_prompts(context=threats.get(threat_model).misaligning_context),
        *train.chat_prompts(),
        *[ChatPrompt(user=h) for h in list(harmless)[:8]],
    ]


def answer_token_classes(
    model: Bridge,
    threat_model: str,
    config: StudyConfig,
    direction: Any,
    layer: int,
    max_norm: float | None,
    answers: dict[str, Any],
    *,
    fallback: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Per-token residuals at ``layer`` of the model's own answers to training prompts: under the aligned
    system prompt (aligned class) and under the misaligning context (misaligned class).

    Answers that show their setting's behaviour (the trait scorer says aligned / misaligned) are kept
    when at least :data:`MIN_FIT_ANSWERS` do; otherwise all are kept (said in the returned notes). If the
    aligned tokens do not project above the misaligned ones on the direction, the response means of the
    hand-written replies (``fallback``) are used and the notes say so. ``answers`` caches the generations
    across layers.
    """

    tm = threats.get(threat_model)
    train = tm.load().fit.stratified(config.n_train)
    settings = {
        "aligned": [replace(p, system=tm.aligned_system) for p in train.chat_prompts()],
        "misaligned": train.chat_prompts(context=tm.misaligning_context),
    }
    classes, notes = [], {"rule": "generated_tokens", "n_prompts": len(train), "layer": layer}
    for name, prompts in settings.items():
        if name not in answers:
            answers[name] = generate(
                model, prompts, max_new_tokens=config.max_new_tokens, batch_size=config.batch_size
            )
        tokens = response_token_activations(
            model,
            prompts,
            layer=layer,
            max_norm=max_norm,
            generations=answers[name],
            batch_size=config.batch_size,
        )
        shows = [
            f == (name == "aligned") for f in trait_flags(threat_model, answers[name].texts, train, model)
        ]
        kept = [i for i, f in enumerate(shows) if f]
        filtered = len(kept) >= MIN_FIT_ANSWERS
        if filtered:
            tokens = tokens.rows(kept)
        notes[name] = {
            "answers": len(prompts),
            "showing_behaviour": len(kept),
            "filtered": filtered,
            "tokens": tokens.n_tokens,
            "skipped_massive": tokens.skipped_massive,
        }
        classes.append(tokens.acts)
    aligned, misaligned = classes
    if not float((aligned @ direction.unit).mean()) > float((misaligned @ direction.unit).mean()):
        notes |= {
            "rule": "written_means",
            "why": "the aligned answers' tokens did not project above the "
            "misaligned ones on the direction, so their threshold would point the wrong way",
        }
        return fallback[0], fallback[1], notes
    return aligned, misaligned, notes
