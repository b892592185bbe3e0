"""Preventative steering (Chen et al. 2025, "Persona vectors"): add a trait's direction to the residual
stream while a LoRA organism trains, so the optimiser need not move the weights along it to fit the data;
at evaluation the steering is off (the saved adapter was trained under it but carries no hook).

A lensteer steering's unit points from misaligned to aligned, so preventing the trait means adding the
misaligned side: the default coefficient is minus the steering's own (its calibrated strength, pointed
the other way). The edit is a plain addition at every position of the steering's layers and site (a
decoder layer's input or output); padding is on the right and outside the loss, so steering it changes
nothing the loss sees.
"""

import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeAlias

import torch

from lensteer._types import DirectionVec
from lensteer.core.plain import PLAIN_SITES
from lensteer.core.vectors import unit_vector
from lensteer.errors import ArtifactMismatchError, ConfigError, HookSiteError
from lensteer.steering.hooks import steer_resid
from lensteer.steering.spec import Steering


@dataclass(frozen=True, kw_only=True, eq=False)
class TrainingSteering:
    """What is added to the residual stream during training: ``coefficient * unit`` at every position of
    each layer in ``layers`` at ``site`` (``resid_pre``: the decoder layer's input; ``resid_post``: its
    output).

    Attributes:
        unit: The steering's unit vector (misaligned to aligned). coefficient: Signed strength in residual
            units along it (negative: toward the trait, the preventative sign). source: Where it came from.
    """

    unit: DirectionVec
    layers: tuple[int, ...]
    site: str
    coefficient: float
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "unit", unit_vector(self.unit, "training steering"))
        if self.site not in PLAIN_SITES:
            raise ConfigError(
                f"steering during training needs site {' or '.join(PLAIN_SITES)} (a decoder layer's input "
                f"or output), got {self.site!r}"
            )
        if not self.layers or any(isinstance(x, bool) or not isinstance(x, int) for x in self.layers):
            raise ConfigError(
                f"training steering layers must be a non-empty tuple of ints, got {self.layers!r}"
            )
        c = self.coefficient
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c):
            raise ConfigError(f"training steering coefficient must be a finite number, got {c!r}")

    @classmethod
    def from_steering(
        cls, steering: Steering, coefficient: float | None = None, source: str = ""
    ) -> "TrainingSteering":
        """``steering``'s direction, layers and site; ``coefficient`` in residual units along its unit
        (default ``-steering.coefficient``: its own strength, toward the trait it removes)."""
        return cls(
            unit=steering.unit,
            layers=tuple(steering.layers),
            site=steering.site,
            coefficient=-steering.coefficient if coefficient is None else coefficient,
            source=source,
        )

    def as_steering(self) -> Steering:
        """The edit as an ``add`` steering at every position (its maths lives in :func:`steer_resid`)."""
        return Steering(
            unit=self.unit, layers=self.layers, site=self.site, mode="add", scale=self.coefficient
        )

    def to_dict(self) -> dict[str, Any]:
        """The record kept in ``organism.json`` (the vector by its SHA-256: the steering file holds it)."""
        return {
            "source": self.source,
            "layers": list(self.layers),
            "site": self.site,
            "coefficient": self.coefficient,
            "unit_sha256": hashlib.sha256(self.unit.numpy().tobytes()).hexdigest(),
        }


HFCausalLM: TypeAlias = Any
"""A Hugging Face causal LM (``PreTrainedModel``, LoRA-wrapped or not): training runs on it, not on a
:data:`~lensteer.core.bridge.Bridge`."""


def _decoder_layers(model: HFCausalLM) -> Any:
    """A Hugging Face causal LM's decoder layers (``model.model.layers`` for Llama-style models)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ConfigError(
            f"{type(model).__name__} has no decoder layer list (get_decoder().layers): "
            "steering during training supports Llama-style Hugging Face models"
        )
    return layers


@contextmanager
def training_steering_hooks(model: HFCausalLM, steering: TrainingSteering) -> Iterator[None]:
    """Add ``steering`` to ``model``'s residual stream (a Hugging Face causal LM, LoRA-wrapped or not) for
    the body of the block; every hook comes off on exit, error or not.

    Raises:
        ArtifactMismatchError: The vector's width is not the model's hidden size.
        HookSiteError: A layer the model lacks.
    """
    layers = _decoder_layers(model)
    width, d_model = int(steering.unit.shape[0]), int(model.config.hidden_size)
    if width != d_model:
        raise ArtifactMismatchError(
            f"training steering has width {width} but the model's hidden size is {d_model}; "
            "was it made for another model?"
        )
    n = len(layers)
    bad = [k for k in steering.layers if not -n <= k < n]
    if bad:
        raise HookSiteError(f"training steering layers {bad} are outside this model's {n} layers")
    edit = steering.as_steering()

    def add(resid: torch.Tensor) -> torch.Tensor:
        return steer_resid(
            resid, edit, torch.ones(resid.shape[:2], dtype=torch.bool, device=resid.device)
        ).resid

    def on_input(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:  # noqa: ARG001
        if args:
            return (add(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": add(kwargs["hidden_states"])}

    def on_output(module: Any, args: Any, output: Any) -> Any:  # noqa: ARG001
        if isinstance(output, torch.Tensor):
            return add(output)
        return (add(output[0]), *output[1:])  # older transformers: (hidden_states, ...)

    handles: list[Any] = []
    try:
        for k in sorted({k % n for k in steering.layers}):
            layer = layers[k]
            if steering.site == "resid_pre":
                handles.append(layer.register_forward_pre_hook(on_input, with_kwargs=True))
            else:
                handles.append(layer.register_forward_hook(on_output))
        yield
    finally:
        for handle in handles:
            handle.remove()
