"""Steering vectors in and out of the other steering libraries' formats.

Every peer format below is a set of **per-layer vectors added to the output of a decoder block** (in
TransformerLens terms ``blocks.{L}.hook_resid_post``), at every token, times a coefficient:

* llama.cpp control vectors (GGUF, architecture ``controlvector``): tensor ``direction.{L}`` is added to
  the output of llama.cpp's 0-based layer ``L`` (``llama-cli --control-vector``; its loader rejects
  ``direction.0``). repeng's ``ControlVector.export_gguf`` / ``import_gguf`` (vgel/repeng
  ``repeng/extract.py``) and EasySteer's ``StatisticalControlVector`` (ZJU-REAL/EasySteer
  ``easysteer/steer/utils.py``, which adds ``controlvector.method`` and other metadata) write and read
  the same layout, so one reader serves all three (:func:`import_gguf_control_vector`; export:
  :func:`~lensteer.steering.export_gguf_control_vector`).
* repeng's in-memory ``ControlVector(model_type, directions={L: ndarray})``: ``ControlModel(model,
  layer_ids)`` adds ``coeff * directions[L]`` to the output of ``model.model.layers[L]`` (repeng
  ``repeng/control.py``): :func:`from_repeng`, :func:`to_repeng`.
* steering-vectors' ``SteeringVector(layer_activations={L: Tensor}, layer_type="decoder_block")``:
  ``apply(model, multiplier=m)`` adds ``m * layer_activations[L]`` to the output of decoder block ``L``
  (steering-vectors ``steering_vectors/steering_vector.py``): :func:`from_steering_vector`,
  :func:`to_steering_vector`.
* EasyEdit2's saved vectors (zjunlp/EasyEdit ``steer/vector_generators/caa/generate_caa_vectors.py``):
  a folder of ``layer_{L}.pt`` files, each one tensor of width ``d_model`` taken at the output of
  decoder block ``L`` and added there times the run's multiplier: :func:`load_easyedit_vectors`. Those
  files are pickles (``torch.save``), which lensteer never writes: to hand a steering to EasyEdit2,
  save each ``v`` as ``layer_{L}.pt`` with ``torch.save`` for each ``L, v`` of :func:`steerings_to_vectors` yourself.

Imported vectors become one additive :class:`Steering` per layer (``mode="add"`` at ``resid_post``,
``positions="all"``, the vector's norm times the coefficient as ``scale``), so ``lensteer.steer(model,
*steerings)`` reproduces what the peer's code does. A vector of another width, or for a layer the model
lacks, is refused with :class:`~lensteer.errors.ArtifactMismatchError`: it was made for another model.
Only constant additions can go out (modes ``add`` / ``swfc``, no gate, no norm rescaling).
"""

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lensteer.core.bridge import Bridge
from lensteer.core.models import ModelFingerprint, fingerprint_of
from lensteer.errors import ArtifactMismatchError, ConfigError, DataError
from lensteer.steering.gguf_export import check_exportable
from lensteer.steering.spec import Steering

GGUF_ARCH = "controlvector"
BLOCK_OUTPUT = "resid_post"  # where every peer format adds its vectors


def _checked_vector(raw: Any, layer: int, fp: ModelFingerprint, source: str) -> torch.Tensor:
    """``raw`` as a float32 vector, checked against the model's layers and width."""
    n_layers, d_model, name = fp.n_layers, fp.d_model, fp.name
    array = np.asarray(raw.detach().cpu() if isinstance(raw, torch.Tensor) else raw, dtype=np.float32)
    if array.ndim != 1:
        raise DataError(
            f"{source}: the vector of layer {layer} has shape {array.shape}; expected ({d_model},)"
        )
    if not -n_layers <= layer < n_layers:
        raise ArtifactMismatchError(
            f"{source}: a vector for layer {layer}, but model {name!r} has {n_layers} layers "
            f"(0..{n_layers - 1}); these vectors were made for another model"
        )
    if array.shape[0] != d_model:
        raise ArtifactMismatchError(
            f"{source}: the vector of layer {layer} has width {array.shape[0]}, but model {name!r} has "
            f"d_model {d_model}; these vectors were made for another model"
        )
    if not np.isfinite(array).all():
        raise DataError(f"{source}: the vector of layer {layer} is not finite")
    return torch.from_numpy(array.copy())


def vectors_to_steerings(
    vectors: Mapping[int, Any], model: Bridge, *, coefficient: float = 1.0, source: str = "vectors"
) -> list[Steering]:
    """One additive steering per layer: ``coefficient * vectors[L]`` added at the output of block ``L``.

    Args:
        vectors: Block index -> vector (tensor or array of width ``d_model``); negative indices count from
            the end; all-zero vectors are skipped.
        model: The model (or its fingerprint) the vectors are for: widths and layers are checked.
        coefficient: The peer's multiplier / coeff (negative: steer the other way).
        source: Where the vectors came from (kept in each steering's ``info``).

    Raises:
        ArtifactMismatchError: A vector's width is not the model's ``d_model``, or a layer the model lacks
            (the vectors were made for another model).
        DataError: No vector, a vector that is not 1-D, not finite, or every vector zero.
    """
    if not vectors:
        raise DataError(f"{source}: no vectors to import")
    fp = fingerprint_of(model)
    out = []
    for key, raw in sorted(vectors.items(), key=lambda kv: int(kv[0])):
        layer = int(key)
        vec = _checked_vector(raw, layer, fp, source)
        norm = float(vec.norm())
        if norm == 0.0:
            continue
        out.append(
            Steering(
                unit=vec / norm,
                layers=(layer % fp.n_layers,),
                site=BLOCK_OUTPUT,
                mode="add",
                scale=norm * float(coefficient),
                info={"imported_from": source, "coefficient": float(coefficient)},
            )
        )
    if not out:
        raise DataError(f"{source}: every vector is zero; nothing steers")
    return out


def block_output_layer(site: str, layer: int, n_layers: int) -> int:
    """The decoder block whose output a steering at ``site`` / ``layer`` edits: ``resid_post`` L is block L's
    output, ``resid_pre`` L (L >= 1) block L - 1's.

    Raises:
        ConfigError: Another site, or ``resid_pre`` at layer 0 (the embeddings, no block's output).
    """
    layer %= n_layers
    if site == BLOCK_OUTPUT:
        return layer
    if site == "resid_pre" and layer >= 1:
        return layer - 1
    raise ConfigError(
        f"{site} at layer {layer} is not the output of a decoder block, where the peers' vectors are added; "
        "export a steering at resid_post (or resid_pre at layer >= 1)"
    )


def steerings_to_vectors(
    steerings: "Steering | Sequence[Steering]", model: Bridge, *, every_position: bool = False
) -> dict[int, torch.Tensor]:
    """Block index -> the vector the steerings add at its output (``coefficient * unit``; several add up).

    Raises:
        ConfigError: A mode, gate, norm rescaling, site or position set a constant per-layer addition
            cannot reproduce (``every_position=True`` accepts positions other than ``"all"``).
        ArtifactMismatchError: A steering's width is not the model's.
    """
    fp = fingerprint_of(model)
    n_layers, d_model, name = fp.n_layers, fp.d_model, fp.name
    items = [steerings] if isinstance(steerings, Steering) else list(steerings)
    if not items:
        raise ConfigError("no steering to export")
    out: dict[int, torch.Tensor] = {}
    for s in items:
        check_exportable(s, every_position)
        if s.d_model != d_model:
            raise ArtifactMismatchError(
                f"steering width {s.d_model} but model {name!r} has d_model {d_model}"
            )
        for layer in s.layers:
            block = block_output_layer(s.site, layer, n_layers)
            out[block] = out.get(block, torch.zeros(d_model)) + s.coefficient * s.unit.float()
    return dict(sorted(out.items()))


# -- llama.cpp / repeng / EasySteer GGUF ------------------------------------------------------------------


def _field_text(reader: Any, key: str) -> str | None:
    field = reader.get_field(key)
    if field is None or not len(field.parts):
        return None
    return str(bytes(field.parts[-1]), encoding="utf-8", errors="replace")


def read_gguf_vectors(path: "str | os.PathLike[str]") -> tuple[dict[int, np.ndarray], dict[str, Any]]:
    """The ``direction.{L}`` tensors of a control-vector GGUF, and its metadata (``model_hint``, ``method``).

    Raises:
        DataError: Not a GGUF file, not a control vector, or a tensor name that is no ``direction.{int}``.
    """
    import gguf

    file = Path(path)
    if not file.is_file():
        raise DataError(f"control vector {str(file)!r} does not exist")
    try:
        reader = gguf.GGUFReader(str(file))
    except (ValueError, OSError) as e:
        raise DataError(f"{str(file)!r} is not a GGUF file ({e})") from None
    arch = _field_text(reader, "general.architecture")
    if arch != GGUF_ARCH:
        raise DataError(
            f"{str(file)!r} has architecture {arch!r}, not {GGUF_ARCH!r}: it is no control vector (a model "
            "file, perhaps); give the file llama.cpp's cvector-generator, repeng or EasySteer wrote"
        )
    vectors: dict[int, np.ndarray] = {}
    for tensor in reader.tensors:
        stem, _, index = tensor.name.partition(".")
        if stem != "direction" or not index.lstrip("-").isdigit():
            raise DataError(f"{str(file)!r}: tensor {tensor.name!r} is not named direction.<layer>")
        vectors[int(index)] = np.array(tensor.data, dtype=np.float32).reshape(-1)
    meta = {
        "model_hint": _field_text(reader, f"{GGUF_ARCH}.model_hint"),
        "method": _field_text(reader, f"{GGUF_ARCH}.method"),
    }
    return vectors, {k: v for k, v in meta.items() if v is not None}


def import_gguf_control_vector(
    path: "str | os.PathLike[str]", model: Bridge, *, coefficient: float = 1.0
) -> list[Steering]:
    """A llama.cpp / repeng / EasySteer control-vector GGUF as steerings of ``model`` (one per non-zero
    layer; ``coefficient`` is ``--control-vector-scaled``'s scale or repeng's ``coeff``).

    Raises:
        DataError: Not a control-vector GGUF.
        ArtifactMismatchError: Vectors of another width, or for layers the model lacks.
    """
    vectors, meta = read_gguf_vectors(path)
    steerings = vectors_to_steerings(vectors, model, coefficient=coefficient, source=str(path))
    return [replace(s, info={**s.info, **meta}) for s in steerings]


# -- repeng ControlVector --------------------------------------------------------------------------------


def from_repeng(control_vector: Any, model: Bridge, *, coeff: float = 1.0) -> list[Steering]:
    """repeng's ``ControlVector`` (its ``directions``: block index -> array) as steerings; ``coeff`` as in
    ``ControlModel.set_control(vector, coeff)``. Any object with ``directions`` (and ``model_type``) will do,
    so repeng need not be installed."""
    directions = getattr(control_vector, "directions", None)
    if not isinstance(directions, Mapping):
        raise ConfigError(
            f"from_repeng takes a repeng ControlVector (with .directions), got {type(control_vector).__name__}"
        )
    hint = getattr(control_vector, "model_type", None)
    return vectors_to_steerings(directions, model, coefficient=coeff, source=f"repeng ControlVector ({hint})")


def _peer(module: str, name: str, install: str) -> Any:
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:  # repeng 0.4 does not import under numpy 2 (np.float_)
        raise ConfigError(
            f"{module}.{name} is not available here ({type(e).__name__}: {e}); pip install {install} "
            "(benchmarks/peers/requirements.txt pins the peers' own environment)"
        ) from None


def to_repeng(steerings: "Steering | Sequence[Steering]", model: Bridge, *, model_type: str = "llama") -> Any:
    """Additive steerings as a repeng ``ControlVector`` (needs repeng installed)."""
    cls = _peer("repeng", "ControlVector", "repeng")
    vectors = steerings_to_vectors(steerings, model)
    return cls(model_type=model_type, directions={k: v.numpy() for k, v in vectors.items()})


# -- steering-vectors SteeringVector ---------------------------------------------------------------------


def from_steering_vector(steering_vector: Any, model: Bridge, *, multiplier: float = 1.0) -> list[Steering]:
    """steering-vectors' ``SteeringVector`` (``layer_type="decoder_block"``) as steerings; ``multiplier``
    as in ``SteeringVector.apply(model, multiplier=...)``. Any object with ``layer_activations`` and
    ``layer_type`` will do."""
    activations = getattr(steering_vector, "layer_activations", None)
    layer_type = getattr(steering_vector, "layer_type", "decoder_block")
    if not isinstance(activations, Mapping):
        raise ConfigError(
            f"from_steering_vector takes a steering-vectors SteeringVector (with .layer_activations), got "
            f"{type(steering_vector).__name__}"
        )
    if layer_type != "decoder_block":
        raise ConfigError(
            f"SteeringVector layer_type {layer_type!r} has no lensteer equivalent; only 'decoder_block' (the "
            "block's output, resid_post) can be imported"
        )
    return vectors_to_steerings(
        {k: v.detach().float().cpu() for k, v in activations.items()},
        model,
        coefficient=multiplier,
        source="steering-vectors SteeringVector",
    )


def to_steering_vector(steerings: "Steering | Sequence[Steering]", model: Bridge) -> Any:
    """Additive steerings as a steering-vectors ``SteeringVector`` (needs steering-vectors installed)."""
    cls = _peer("steering_vectors", "SteeringVector", "steering-vectors")
    return cls(layer_activations=steerings_to_vectors(steerings, model), layer_type="decoder_block")


# -- EasyEdit2 saved vectors -----------------------------------------------------------------------------


def load_easyedit_vectors(
    folder: "str | os.PathLike[str]", model: Bridge, *, multiplier: float = 1.0
) -> list[Steering]:
    """EasyEdit2's saved vectors (``folder/layer_{L}.pt``, one tensor each; read with
    ``torch.load(weights_only=True)``, so no code in them runs) as steerings, times ``multiplier``.

    Raises:
        DataError: No ``layer_{L}.pt`` in ``folder``, or a file that holds no single tensor.
    """
    root = Path(folder)
    files = sorted(root.glob("layer_*.pt")) if root.is_dir() else []
    vectors: dict[int, torch.Tensor] = {}
    for file in files:
        index = file.stem.removeprefix("layer_")
        if not index.isdigit():
            continue
        try:
            value = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:  # an unpicklable or foreign file
            raise DataError(
                f"{str(file)!r} is not a tensor file EasyEdit2 wrote ({type(e).__name__}: {e})"
            ) from None
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if not isinstance(value, torch.Tensor):
            raise DataError(f"{str(file)!r} holds a {type(value).__name__}, not one vector tensor")
        vectors[int(index)] = value.detach().float()
    if not vectors:
        raise DataError(f"{str(root)!r} holds no EasyEdit2 vectors (files named layer_<L>.pt)")
    return vectors_to_steerings(vectors, model, coefficient=multiplier, source=f"EasyEdit2 {root}")


# -- lm-evaluation-harness "steered" model ---------------------------------------------------------------


def lm_eval_steer_config(
    steerings: "Steering | Sequence[Steering]", model: Bridge, *, hookpoint: str = "layers.{layer}"
) -> dict[str, dict[str, Any]]:
    """Additive steerings as the steer config of lm-evaluation-harness's ``steered`` model (its PR #2749,
    ``lm_eval/models/hf_steered.py``): ``{hookpoint: {"action": "add", "steering_vector": Tensor,
    "steering_coefficient": 1.0, "bias": None, "head_index": None}}``, where ``hookpoint`` names decoder
    block ``L`` among ``model.base_model.named_modules()`` of the Hugging Face model lm-eval loads
    (``layers.{layer}`` for Llama, Mistral, Qwen, Gemma, GPT-NeoX; ``h.{layer}`` for GPT-2). lm-eval adds
    ``steering_coefficient * steering_vector`` to that module's output at every position.

    lm-eval reads the config from a ``.pt`` file (``torch.load``); lensteer writes no pickles, so save it
    yourself (``scripts/export_lm_eval.py`` does) and run
    ``lm_eval --model steered --model_args pretrained=MODEL,steer_path=FILE.pt --tasks TASK``.
    """
    if "{layer}" not in hookpoint:
        raise ConfigError(f"hookpoint must contain '{{layer}}' (e.g. 'layers.{{layer}}'), got {hookpoint!r}")
    return {
        hookpoint.format(layer=layer): {
            "action": "add",
            "steering_vector": vec.clone(),
            "steering_coefficient": 1.0,
            "bias": None,
            "head_index": None,
        }
        for layer, vec in steerings_to_vectors(steerings, model).items()
    }
