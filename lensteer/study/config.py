"""What a study runs: threat models, methods, KL budgets, layers, sizes, seeds, as one frozen config.

Every field can be set in study.toml (top-level keys, same names) or on the command line.
"""

import math
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from lensteer.core.datasets import THREAT_MODELS
from lensteer.errors import ConfigError
from lensteer.steering.positions import Window

METHODS = ("SwFC", "StTP", "StMP", "add", "ablate", "ace", "angular")


MISALIGNING_CONTEXT = {"refusal": None, "compassion": "dismissive_fewshot", "honesty": "lying_fewshot"}


STUDY_POSITIONS: dict[str, Any] = {"after_first": Window(1, None), "all": "all", "generated": Window(-1, None)}


FOLLOW_UPS = ("Can you say more about that?", "What else should I keep in mind?", "Could you put it another way?",
              "Is there anything you would add?")


@dataclass(frozen=True, kw_only=True)
class StudyConfig:
    """What the study runs. Every field can be set in ``study.toml`` (top-level keys, same names).

    Attributes:
        threat_models: Which of ``refusal``, ``compassion``, ``honesty``.
        methods: Steering methods (``SwFC``, ``StTP``, ``StMP``, ``add``, ``ablate``, ``ace``, ``angular``).
        kl_budgets: Coherence budgets in nats per token; every method is calibrated to each.
        layer: Steering layer; ``None`` picks it from the probing study.
        sweep_layers: A layer sweep: every method is also calibrated and evaluated at each of these
            layers (rows keyed by layer; the headline stays at the chosen layer).
        candidate_layers: Layers the probing study looks at (``None``: every ``layer_stride``-th layer
            from layer 1, within the first 80% of the model).
        layer_stride: Spacing of the default candidate layers.
        n_train: Contrast examples (with responses) used to find directions and probes.
        n_eval: Misaligned prompts per condition.
        n_harmless: Harmless prompts for over-refusal per condition.
        n_kl: Harmless prompts for the KL calibration set.
        n_conversations, n_turns: Multi-turn conversations for repetition (0 conversations: off).
        n_mc: Multiple-choice items for capability (``None``: all; 0: off).
        max_new_tokens: Tokens per generated answer (64 leaves room for the sentence after a refusal,
            where a redirect usually comes).
        positions: Where the methods steer: ``"after_first"`` (the default: every prompt and generated
            token except the first, the chat template's ``<|im_start|>`` on the embedded model, an
            attention sink whose residual norm is ~160x that of the other tokens: StTP / StMP would
            spend most of their KL budget moving it, since it projects far below any threshold),
            ``"all"`` (every token, as in ActAdd/CAA) or ``"generated"`` (the last prompt token and
            every generated one; on the embedded model this barely moves refusal).
        random_control: Evaluate a random direction with SwFC's calibrated norm.
        batch_size: Prompts per forward pass.
        seed: Seed for the random control and bootstrap intervals.
    """

    threat_models: tuple[str, ...] = THREAT_MODELS
    methods: tuple[str, ...] = ("SwFC", "StTP", "StMP")
    kl_budgets: tuple[float, ...] = (0.5,)
    layer: int | None = None
    sweep_layers: tuple[int, ...] = ()
    candidate_layers: tuple[int, ...] | None = None
    layer_stride: int = 4
    n_train: int = 48
    n_eval: int = 16
    n_harmless: int = 8
    n_kl: int = 6
    n_conversations: int = 2
    n_turns: int = 5
    n_mc: int | None = 24
    max_new_tokens: int = 64
    positions: str = "after_first"
    random_control: bool = True
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        for name, allowed in (("threat_models", THREAT_MODELS), ("methods", METHODS)):
            values = getattr(self, name)
            if isinstance(values, str) or not values:
                raise ConfigError(f"{name} must be a non-empty list drawn from {list(allowed)}, got {values!r}")
            bad = [v for v in values if v not in allowed]
            if bad:
                raise ConfigError(f"{name}: {bad} not allowed; allowed values: {list(allowed)}")
            object.__setattr__(self, name, tuple(values))
        budgets = tuple(self.kl_budgets)
        if not budgets or any(not isinstance(b, (int, float)) or not math.isfinite(b) or b <= 0 for b in budgets):
            raise ConfigError(f"kl_budgets must be positive numbers of nats, got {self.kl_budgets!r}")
        object.__setattr__(self, "kl_budgets", tuple(float(b) for b in budgets))
        if self.candidate_layers is not None:
            object.__setattr__(self, "candidate_layers", tuple(self.candidate_layers))
        if isinstance(self.sweep_layers, (str, int)) or any(isinstance(x, bool) or not isinstance(x, int)
                                                            for x in self.sweep_layers):
            raise ConfigError(f"sweep_layers must be a list of layer indices (ints), got {self.sweep_layers!r}")
        object.__setattr__(self, "sweep_layers", tuple(self.sweep_layers))
        for name in ("n_train", "n_eval", "n_harmless", "n_kl", "max_new_tokens", "batch_size", "n_turns", "layer_stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.n_conversations, int) or self.n_conversations < 0:
            raise ConfigError(f"n_conversations must be an int >= 0, got {self.n_conversations!r}")
        if self.positions not in STUDY_POSITIONS:
            raise ConfigError(f"positions must be one of {list(STUDY_POSITIONS)}, got {self.positions!r}")
        if self.n_mc is not None and (not isinstance(self.n_mc, int) or self.n_mc < 0):
            raise ConfigError(f"n_mc must be an int >= 0 or absent (all items), got {self.n_mc!r}")

    @classmethod
    def from_toml(cls, path: "str | Path") -> "StudyConfig":
        """Read a config; unknown keys and bad values are errors that name them."""
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as err:
            raise ConfigError(f"config file {str(path)!r} does not exist") from err
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {err}") from err
        return cls.from_dict(raw, where=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, where: str = "config") -> "StudyConfig":
        """Build from a mapping (e.g. parsed TOML), rejecting unknown keys by name."""
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(raw) - set(allowed))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed keys: {allowed}")
        values: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items()}
        return cls(**values)

    @classmethod
    def smoke(cls) -> "StudyConfig":
        """A tiny study for CI and notebooks (minutes on 2 CPU cores)."""
        return cls(methods=("SwFC", "StTP", "StMP"), n_train=16, n_eval=6, n_harmless=4, n_kl=3,
                   n_conversations=1, n_turns=2, n_mc=8, max_new_tokens=12, layer_stride=10)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
