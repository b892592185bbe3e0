"""The robustness table: does a steering found on the base model still recover the trait under other
attacks (inducers) and in fine-tuned misaligned models (organisms)?

One row per (setting, threat model, method), with ``direction_from`` saying where the direction was found:

* an **inducer** setting (``prefill_mislead``, ``roleplay``, ...; :func:`~lensteer.core.bundled_inducers`)
  applies the inducer to the bare test prompts (instead of the study's misaligning context) on the base
  model and uses the study's calibrated steerings as they are (``direction_from="base"``): the same edit,
  so its held-out KL is the study's;
* an **organism** setting (``organism:dishonest``, ...) answers the bare test prompts with the organism (it
  is misaligned by itself); every method is recalibrated on the organism to the study's KL budget, once
  with the base model's direction (``base``: the transfer the seed paper claims) and once with a direction
  located on the organism itself at the same layer (``organism``). The organism is trained first if its
  folder is missing (``lensteer organism``'s recipe).

Each row: trait with its Wilson interval, the exact McNemar p against the unsteered row of the same
setting, and the held-out KL (harmless test prompts, gate on, on the model that answered).
"""

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from lensteer import threats
from lensteer.core.bridge import Bridge
from lensteer.core.chat import ChatPrompt
from lensteer.core.io import rows_of, write_json
from lensteer.core.stats import mcnemar_exact, wilson_interval
from lensteer.errors import ConfigError
from lensteer.locate.probing import decision_prompts
from lensteer.organisms import get_recipe, load_organism, train_organism
from lensteer.steering.calibration import calibrate, kl_probe, sequence_kl
from lensteer.steering.generation import generate
from lensteer.steering.spec import Steering
from lensteer.study.config import StudyConfig, known_robustness_settings
from lensteer.study.evaluation import (
    Condition,
    EvalSets,
    _answer_log_odds,
    _eval_set,
    _joint,
    trait_flags,
    trait_scorer_id,
)
from lensteer.study.folder import ROBUSTNESS_FILE

ORGANISM_PREFIX = "organism:"
ROW_FIELDS = (
    "setting",
    "threat_model",
    "method",
    "direction_from",
    "layer",
    "kl_budget",
    "n_eval",
    "trait",
    "trait_ci",
    "kl_heldout",
    "p_vs_baseline",
    "scale",
    "answer_log_odds",
    "answer_log_odds_ci",
    "scorer",
)


def settings_for(threat_model: str, names: Sequence[str]) -> list[str]:
    """The configured settings that apply to ``threat_model`` (an inducer written for it, or an organism
    whose recipe targets it or every threat model); an unknown name is an error listing the allowed ones."""
    allowed = known_robustness_settings()
    bad = [n for n in names if n not in allowed]
    if bad:
        raise ConfigError(f"robustness settings {bad} unknown; allowed: {allowed}")
    mine = set(threats.get(threat_model).inducers())
    return [
        n
        for n in names
        if n in mine
        or (
            n.startswith(ORGANISM_PREFIX)
            and get_recipe(n[len(ORGANISM_PREFIX) :]).threat_model in (None, threat_model)
        )
    ]


class RobustnessTable:
    """``robustness.json``: rows written after each (setting, threat model), so a rerun skips what is done."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / ROBUSTNESS_FILE
        self.rows: list[dict[str, Any]] = rows_of(self.path, "robustness file") if self.path.exists() else []

    def has(self, setting: str, threat_model: str, layer: int | None, kl_budget: float | None) -> bool:
        """Rows of this setting for the steerings of this layer and KL budget (the sweep's key) exist."""
        return any(
            (r["setting"], r["threat_model"], r.get("layer"), r.get("kl_budget"))
            == (setting, threat_model, layer, kl_budget)
            for r in self.rows
        )

    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        self.rows += list(rows)
        write_json(self.path, {"rows": self.rows})


def _rows(
    setting: str,
    threat_model: str,
    conditions: Sequence[Condition],
    origins: Sequence[str],
    flags: Sequence[list[bool]],
    kls: Sequence[float],
    reader: Bridge | None = None,
) -> list[dict[str, Any]]:
    """One row per condition; ``reader``: the model the trait scorer read the answers with, if any."""
    base_flags = flags[0]  # conditions[0] is the unsteered model of this setting
    out = []
    for cond, origin, f, kl in zip(conditions, origins, flags, kls, strict=True):
        k, n = sum(f), len(f)
        out.append(
            {
                "setting": setting,
                "threat_model": threat_model,
                "method": cond.key,
                "direction_from": origin,
                "n_eval": n,
                "trait": k / n,
                "trait_ci": list(wilson_interval(k, n)),
                "kl_heldout": kl,
                "p_vs_baseline": None if cond.method == "baseline" else mcnemar_exact(f, base_flags).p_value,
                "scale": cond.steering.scale if cond.steering is not None else None,
                "trait_flags": list(f),
                "scorer": trait_scorer_id(threat_model, reader).to_dict(),
            }
        )
    return out


def _heldout_kl(
    model: Bridge, steering: Steering | None, sets: EvalSets, config: StudyConfig, key: str
) -> float:
    """KL on the held-out harmless prompts along ``model``'s own unsteered continuations (cached per model)."""
    if steering is None:
        return 0.0
    if key not in sets.cache:
        sets.cache[key] = generate(
            model, sets.harmless, max_new_tokens=config.kl_tokens, batch_size=config.batch_size
        )
    ref = sets.cache[key]
    return sequence_kl(model, steering, ref.prompt_tokens, ref.tokens, batch_size=config.batch_size)


def inducer_rows(
    model: Bridge,
    threat_model: str,
    setting: str,
    steerings: dict[str, Steering],
    heldout_kl: dict[str, float],
    config: StudyConfig,
) -> list[dict[str, Any]]:
    """The base model under an inducer, unsteered, prompted and with each of the study's steerings."""
    inducer = threats.get(threat_model).inducers()[setting]
    ds = _eval_set(threat_model, config.n_eval)
    prompts = [inducer.apply(p) for p in ds.chat_prompts()]
    prompting = (
        [Condition(method="prompting", system=threats.get(threat_model).aligned_system)]
        if config.prompting and inducer.kind != "system"
        else []
    )  # a system inducer *is* the system prompt
    conditions = [
        Condition(method="baseline"),
        *prompting,
        *[Condition(method=m, steering=s) for m, s in steerings.items()],
    ]
    gens = _joint(model, conditions, prompts, config, config.max_new_tokens)
    flags = [trait_flags(threat_model, [inducer.scored_text(t) for t in g.texts], ds, model) for g in gens]
    kls = [0.0] * (1 + len(prompting)) + [heldout_kl[m] for m in steerings]
    return _rows(setting, threat_model, conditions, ["base"] * len(conditions), flags, kls, model)


def organism_rows(
    organism: Any,
    threat_model: str,
    setting: str,
    base_steerings: dict[str, Steering],
    own_steerings: dict[str, Steering],
    config: StudyConfig,
    sets: EvalSets,
    calibration_prompts: Sequence[Any],
) -> list[dict[str, Any]]:
    """The organism unsteered and with each method's steering from the base model and from itself, all
    recalibrated on the organism to the study's first KL budget (on ``calibration_prompts``, gate as
    deployed; no fluency bound here)."""
    budget = config.kl_budgets[0]
    probe = kl_probe(
        organism,
        list(calibration_prompts),
        continuation_tokens=config.kl_tokens,
        batch_size=config.batch_size,
    )
    conditions, origins = [Condition(method="baseline")], ["organism"]
    if config.prompting:
        conditions.append(Condition(method="prompting", system=threats.get(threat_model).aligned_system))
        origins.append("organism")
    for origin, built in (("base", base_steerings), ("organism", own_steerings)):
        for method, s in built.items():
            cal = calibrate(organism, s, probe, budget).steering  # gate as deployed
            conditions.append(Condition(method=method, steering=cal, kl_budget=budget))
            origins.append(origin)
    ds = _eval_set(threat_model, config.n_eval)
    gens = _joint(organism, conditions, ds.chat_prompts(), config, config.max_new_tokens)
    flags = [trait_flags(threat_model, g.texts, ds) for g in gens]
    kls = [_heldout_kl(organism, c.steering, sets, config, f"harmless:{setting}") for c in conditions]
    rows = _rows(setting, threat_model, conditions, origins, flags, kls)
    if threats.get(
        threat_model
    ).answer_log_odds:  # the continuous metric: true-over-false log-odds, teacher-forced
        for row, cond in zip(rows, conditions, strict=True):
            row |= _answer_log_odds(organism, cond, ds, ds.chat_prompts(), config)
    return rows


@dataclass(frozen=True, kw_only=True)
class InducerBehaviour:
    """What an inducer does to generated answers: the trait rate without and with it on the same prompts.

    The teacher-forced margin of :func:`~lensteer.evaluate.inducer_effect` cannot judge a prefill whose
    words the written replies repeat (a compliant reply after "Sure, here is how" starts with a second
    "Sure"); the answers the model actually writes can.
    """

    inducer: str
    threat_model: str
    n: int
    trait_without: float
    trait_without_ci: tuple[float, float]
    trait_with: float
    trait_with_ci: tuple[float, float]
    p_value: float

    @property
    def pushes(self) -> bool:
        """Significantly less of the aligned trait under the inducer (McNemar p < 0.05)."""
        return self.p_value < 0.05 and self.trait_with < self.trait_without

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "pushes": self.pushes}


def inducer_behaviour(
    model: Bridge,
    threat_model: str,
    setting: str,
    *,
    n: int = 24,
    base_system: str | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 32,
) -> InducerBehaviour:
    """Greedy answers to ``n`` test prompts from ``base_system`` (e.g. the aligned system prompt), without
    and with the inducer; the trait of each (the prefill counts as part of the answer), paired."""
    inducer = threats.get(threat_model).inducers()[setting]
    ds = _eval_set(threat_model, n)
    bare = [replace(p, system=base_system) for p in ds.chat_prompts()]
    flags = []
    for prompts, scored in ((bare, lambda t: t), ([inducer.apply(p) for p in bare], inducer.scored_text)):
        texts = generate(model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size).texts
        flags.append(trait_flags(threat_model, [scored(t) for t in texts], ds, model))
    k0, k1, m = sum(flags[0]), sum(flags[1]), len(flags[0])
    return InducerBehaviour(
        inducer=setting,
        threat_model=threat_model,
        n=m,
        trait_without=k0 / m,
        trait_without_ci=wilson_interval(k0, m),
        trait_with=k1 / m,
        trait_with_ci=wilson_interval(k1, m),
        p_value=mcnemar_exact(flags[1], flags[0]).p_value,
    )


def own_steerings(
    base: Any,
    organism: Any,
    threat_model: str,
    base_steerings: dict[str, Steering],
    config: StudyConfig,
    sets: EvalSets,
) -> dict[str, Steering]:
    """Each method along a direction found on the organism itself, at the base steerings' layer.

    A threat model read at the decision (``decision_contexts``: honesty): read there, organism vs base on
    the same training questions: the
    residual at the last token before the answer (:func:`~lensteer.locate.probing.decision_prompts`), base minus organism
    (towards the honest model); thresholds from the same two classes. Other threat models: the study's
    own locating (response contrast) run on the organism at that layer.
    """
    from lensteer.core.activations import collect_activations
    from lensteer.locate.directions import diff_of_means
    from lensteer.study.layers import locate_threat_model, make_steering

    first = next(iter(base_steerings.values()))
    layer = first.layers[0]
    tm = threats.get(threat_model)
    if tm.decision_contexts is None:
        own = locate_threat_model(
            organism, threat_model, replace(config, layer=layer, sweep_layers=()), sets.calibration_prompts
        ).steerings
        return {m: own[m] for m in base_steerings}
    stems = decision_prompts(tm.load().fit.stratified(config.n_train))
    honest, dishonest = (
        collect_activations(m, stems, layers=[layer], batch_size=config.batch_size)[:, 0]
        for m in (base, organism)
    )
    direction = diff_of_means(honest, dishonest, layer=layer, position="decision")
    return {
        m: make_steering(
            m,
            direction,
            honest,
            dishonest,
            float(s.reference_norm or 1.0),
            s.positions,
            s.gate,
            s.max_norm if isinstance(s.max_norm, float) else None,
        )
        for m, s in base_steerings.items()
    }


def organism_model(folder: Path, recipe: str, base_spec: str | None, log: Callable[[str], None]) -> Any:
    """The organism at ``folder``, trained there first (the recipe's default settings) if it is missing."""
    if not (folder / "organism.json").exists():
        log(f"training organism {recipe} into {folder} (LoRA on CPU; see `lensteer organism`)")
        train_organism(recipe, folder, base=base_spec, log=log)
    return load_organism(folder)


def robustness_report(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The report's ``robustness`` list: every row without its per-prompt flags."""
    return [{k: r[k] for k in ROW_FIELDS if k in r} for r in rows]


def bare_calibration_prompts(threat_model: str, sets: EvalSets, config: StudyConfig) -> list[Any]:
    """An organism's calibration set: the study's held-apart harmless and borderline prompts (never the
    threat model's own, whose answers the steering is meant to change; see :mod:`lensteer.study.coherence`).
    ``threat_model`` and ``config`` are kept for callers written when the set depended on them."""
    del threat_model, config
    return [ChatPrompt(user=p) for p in sets.calibration_prompts]
