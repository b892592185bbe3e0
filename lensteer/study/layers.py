"""Choosing the steering layer and building the study's steerings there.

For each threat model: probe the response-side contrast at candidate layers, pick the layer with
recommend_site (Arditi et al.'s rules, then the most steerable layer at the KL budget), and build
SwFC along the difference of means and StTP/StMP from the class projections (refusal adds a
CAST-style prompt gate from the harmful-vs-harmless probe).
"""

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from lensteer.core.activations import collect_activations
from lensteer.core.datasets import load_dataset
from lensteer.core.models import model_fingerprint
from lensteer.errors import ConfigError
from lensteer.evaluate.steerability import layer_steerability
from lensteer.locate.probing import contrast_prompts, probe_layers
from lensteer.steering.calibration import KLProbe, calibrate, kl_probe, reference_norm
from lensteer.steering.gates import Gate
from lensteer.steering.spec import Steering
from lensteer.study.config import STUDY_POSITIONS, StudyConfig
from lensteer.study.recommend import recommend_site


@dataclass
class _Located:
    layer: int
    site: str
    reasons: list[str]
    probing: dict[str, Any]
    steerings: dict[str, Steering]
    reference_norm: float
    steerability: dict[str, Any] | None = None
    sweep: dict[int, dict[str, Steering]] = field(default_factory=dict)  # the other layers of a layer sweep


def _candidate_layers(model: Any, config: StudyConfig) -> list[int]:
    n = int(model.cfg.n_layers)
    if config.candidate_layers is not None:
        picked = sorted({layer % n for layer in config.candidate_layers if -n <= layer < n})
        if not picked:
            raise ConfigError(f"candidate_layers {list(config.candidate_layers)} has no layer of this "
                              f"{n}-layer model (allowed 0..{n - 1})")
        return picked
    return list(range(1, max(2, int(n * 0.8)), config.layer_stride))


def locate_threat_model(model: Any, threat_model: str, config: StudyConfig, harmless: Sequence[str],
           kl: KLProbe | None = None) -> _Located:
    """Probe the response contrast, choose the layer, and build the uncalibrated steerings.

    With a KL calibration set ``kl`` and more than one candidate layer, the layer is chosen causally:
    SwFC along each layer's difference of means is calibrated to the study's first KL budget and,
    among the layers that pass :func:`~lensteer.study.recommend_site`'s rules, the one whose steering most
    raises the held-out aligned-over-misaligned log-odds wins (:func:`~lensteer.evaluate.layer_steerability`).
    """
    ds = load_dataset(threat_model).with_responses()
    layers = [config.layer] if config.layer is not None else _candidate_layers(model, config)
    screened = list(layers)  # the layers the causal choice compares
    extra = _sweep_layers(model, config)
    layers = sorted(set(layers) | set(extra))
    acts: dict[str, torch.Tensor] = {}
    n_val = max(8, config.n_train // 3)
    for split, n in (("train", config.n_train), ("val", n_val)):
        pos, neg, position = contrast_prompts(getattr(ds, split).stratified(n), "response")
        both = collect_activations(model, pos + neg, layers=layers, position=position, batch_size=config.batch_size)
        acts[f"pos_{split}"], acts[f"neg_{split}"] = both[: len(pos)], both[len(pos):]
    acts["pos_test"], acts["neg_test"] = acts["pos_val"], acts["neg_val"]
    report = probe_layers(acts, layers=layers, dataset=threat_model, contrast="response", position="response_mean",
                          model=model_fingerprint(model).to_dict(), n_boot=100, seed=config.seed)
    refs: dict[int, float] = {}
    steerability = None
    if config.layer is not None:
        layer, reasons = config.layer, [f"layer {config.layer} set in the config"]
    else:
        if kl is not None and len(screened) > 1:
            refs = {layer: reference_norm(model, harmless, layer, batch_size=config.batch_size) for layer in layers}
            # held-out questions without the misaligning context (a few-shot context would make this
            # screen several times dearer); relative scale 0.25 is near where KL 0.3-0.5 lies on most layers
            val = ds.val.stratified(min(n_val, 6))
            candidates = {layer: Steering.from_direction(report.direction("diff_of_means", layer), mode="swfc",
                                                         scale=0.25, relative=True, reference_norm=refs[layer])
                          for layer in screened}
            steerability = layer_steerability(model, candidates, val.chat_prompts(response="aligned"),
                                              val.chat_prompts(response="misaligned"), kl,
                                              kl_budget=config.kl_budgets[0], batch_size=config.batch_size)
        try:
            rec = recommend_site(report, method="diff_of_means", steerability=steerability)
            layer, reasons = rec.layer, list(rec.reasons)
        except ConfigError as err:  # no layer passes the rules: take the most steerable (or best probe) layer
            if steerability is not None:
                layer = steerability.best_layer()
                reasons = [f"no layer passed the selection rules ({err}); took the layer whose steering at KL "
                           f"{steerability.kl_budget:g} shifts the log-odds most ({steerability.effect[layer]:+.2f})"]
            else:
                layer = report.best_layer("probe_auroc")
                reasons = [f"no layer passed the selection rules ({err}); took the best probe AUROC layer {layer}"]
    gate = _refusal_gate(model, config) if threat_model == "refusal" else None
    positions = STUDY_POSITIONS[config.positions]

    def steerings_at(at: int) -> tuple[dict[str, Steering], float]:
        col = layers.index(at)
        ref = refs[at] if at in refs else reference_norm(model, harmless, at, batch_size=config.batch_size)
        direction = report.direction("diff_of_means", at)
        aligned, misaligned = acts["pos_train"][:, col], acts["neg_train"][:, col]
        return {method: make_steering(method, direction, aligned, misaligned, ref, positions, gate)
                for method in config.methods}, ref

    steerings, ref = steerings_at(layer)
    return _Located(layer=layer, site="resid_post", reasons=reasons, probing=report.to_dict(),
                    steerings=steerings, reference_norm=ref,
                    steerability=steerability.to_dict() if steerability is not None else None,
                    sweep={at: steerings_at(at)[0] for at in extra if at != layer})


def _sweep_layers(model: Any, config: StudyConfig) -> list[int]:
    n = int(model.cfg.n_layers)
    bad = [x for x in config.sweep_layers if not -n <= x < n]
    if bad:
        raise ConfigError(f"sweep_layers {bad} are not layers of this {n}-layer model (allowed 0..{n - 1})")
    return sorted({x % n for x in config.sweep_layers})


def steering_path(folder: Path, threat_model: str, method: str, kl_budget: float, layer: int, chosen: int) -> Path:
    """Where the study saves a calibrated steering (the chosen layer's carry no layer suffix)."""
    suffix = "" if layer == chosen else f"_L{layer}"
    return Path(folder) / "steerings" / f"{threat_model}_{method}_kl{kl_budget:g}{suffix}"


def make_steering(method: str, direction: Any, aligned: torch.Tensor, misaligned: torch.Tensor, ref: float,
                  positions: Any, gate: Gate | None) -> Steering:
    """One uncalibrated steering per method, all along the response-side difference of means.

    SwFC / add: a fixed addition (relative to the reference norm); StTP / StMP: thresholds from a
    one-feature logistic fit of the two classes' projections (:meth:`Steering.from_contrast`); ACE:
    the misaligned mean projection as reference; ablate / angular: start at full ablation / 10 deg.
    """
    if method in ("SwFC", "add"):
        return Steering.from_direction(direction, mode="swfc" if method == "SwFC" else "add", scale=0.1,
                                       relative=True, reference_norm=ref, positions=positions, gate=gate)
    if method in ("StTP", "StMP"):
        return Steering.from_contrast(direction, aligned, misaligned, mode=method.lower(),  # type: ignore[arg-type]
                                      positions=positions, gate=gate)
    if method == "ace":
        return Steering.from_direction(direction, mode="ace", reference=float((misaligned @ direction.unit).mean()),
                                       positions=positions, gate=gate)
    return Steering.from_direction(direction, mode=method, scale=1.0 if method == "ablate" else 10.0,  # type: ignore[arg-type]
                                   positions=positions, gate=gate)


def _refusal_gate(model: Any, config: StudyConfig) -> Gate:
    """CAST-style gate: steer only prompts the harmful-vs-harmless probe calls harmful.

    The gate is read in a separate prompt pass, so its layer need not be the steering layer: the
    harmful-vs-harmless probe is fitted at each candidate layer and the layer with the best
    validation accuracy is used.
    """
    from lensteer.locate.directions import fit_probe

    refusal = load_dataset("refusal")
    # prompts only (cheap): at least 96 training pairs and the whole val split, since harmful vs
    # topic-matched harmless is a hard contrast for a small model (48 pairs gave gates that opened as
    # often on the harmless twins as on the harmful prompts)
    train, val = refusal.train.stratified(max(96, config.n_train)), refusal.val
    layers = _candidate_layers(model, config)
    acts = collect_activations(model, train.prompts + train.paired_prompts + val.prompts + val.paired_prompts,
                               layers=layers, batch_size=config.batch_size)
    n, m = len(train), len(val)
    best: tuple[float, int, Any] | None = None
    for col, layer in enumerate(layers):
        probe = fit_probe(acts[:n, col], acts[n : 2 * n, col], layer=layer)
        acc = probe.accuracy(acts[2 * n : 2 * n + m, col], acts[2 * n + m :, col])
        if best is None or acc > best[0]:
            best = (acc, layer, probe)
    assert best is not None
    return Gate.from_probe(best[2])


def build_steering(model: Any, threat_model: str, method: str, kl_budget: float, config: StudyConfig, *,
                   progress: bool = False) -> Steering:
    """Locate, build and calibrate one steering (what ``lensteer steer`` shows side by side)."""
    calibration_prompts = load_dataset("refusal").train.stratified(config.n_kl).paired_prompts
    probe = kl_probe(model, calibration_prompts, continuation_tokens=config.kl_tokens, batch_size=config.batch_size)
    loc = locate_threat_model(model, threat_model, replace(config, methods=(method,), kl_budgets=(kl_budget,)),
                              calibration_prompts, probe)
    cal = calibrate(model, replace(loc.steerings[method], gate=None), probe, kl_budget, progress=progress)
    return replace(cal.steering, gate=loc.steerings[method].gate)
