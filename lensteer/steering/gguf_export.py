"""llama.cpp control vectors: the additive part of a steering as a GGUF file.

``llama-cli --control-vector file.gguf`` adds tensor ``direction.{il}`` to the output of llama.cpp's
0-based layer ``il`` (TransformerLens: that layer's residual-stream output), at every token, and
never at layer 0: its loader rejects ``direction.0``.
"""

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lensteer.core.bridge import Bridge
from lensteer.core.io import atomic_path
from lensteer.core.models import ModelFingerprint, fingerprint_of
from lensteer.errors import ArtifactMismatchError, ConfigError
from lensteer.steering.spec import Steering

_GGUF_ARCH = "controlvector"
_ADDITIVE_MODES = ("add", "swfc")


def llama_cpp_layer(site: str, layer: int, n_layers: int) -> int:
    """The llama.cpp control-vector index ``il`` (tensor ``direction.{il}``) for a TransformerLens site.

    llama.cpp adds ``direction.{il}`` to the output of its 0-based layer ``il``, which is
    ``blocks.{il}.hook_resid_post`` (= ``blocks.{il+1}.hook_resid_pre``), and never uses ``il = 0``.

    Raises:
        ConfigError: A site other than ``resid_post``/``resid_pre``, a layer out of range, or a layer
            llama.cpp cannot steer (the output of layer 0, or the embeddings).
    """
    if isinstance(layer, bool) or not isinstance(layer, int) or not -n_layers <= layer < n_layers:
        raise ConfigError(f"layer {layer!r} is out of range for n_layers={n_layers}")
    layer %= n_layers
    if site == "resid_post":
        il = layer
    elif site == "resid_pre":
        il = layer - 1
    else:
        raise ConfigError(
            f"site {site!r} has no llama.cpp equivalent: control vectors are added to a layer's "
            "output, i.e. resid_post (or the next layer's resid_pre)"
        )
    if il < 1:
        what = "the embeddings" if il < 0 else "the output of layer 0"
        raise ConfigError(
            f"{site} at layer {layer} is {what}; llama.cpp never applies a control vector there "
            "(its loader rejects direction.0). Steer resid_post at layer >= 1 or resid_pre at layer >= 2"
        )
    return il


def check_exportable(s: Steering, every_position: bool) -> None:
    """Refuse a steering a constant per-layer addition cannot reproduce (llama.cpp and the peers' vectors)."""
    if s.mode not in _ADDITIVE_MODES:
        raise ConfigError(
            f"mode {s.mode!r} is not a constant addition; a llama.cpp control vector can only "
            f"add a fixed vector, so only modes {_ADDITIVE_MODES} can be exported"
        )
    if s.preserve_norm:
        raise ConfigError(
            "preserve_norm=True rescales each activation, which a llama.cpp control vector "
            "cannot do; export the steering with preserve_norm=False"
        )
    if s.gate is not None:
        raise ConfigError(
            "llama.cpp control vectors have no prompt gate; export the steering without its gate"
        )
    if s.max_norm is not None and not every_position:
        raise ConfigError(
            "this steering skips massive-activation tokens (max_norm is set), which a llama.cpp control "
            "vector cannot do; pass every_position=True to export it anyway (the file will steer them too)"
        )
    if s.positions != "all" and not every_position:
        raise ConfigError(
            f"llama.cpp applies a control vector at every token (prompt and generated), but this "
            f"steering's positions are {s.positions!r}; pass every_position=True to export it anyway "
            "(the file will also steer the tokens it skips)"
        )


def export_gguf_control_vector(
    steering: "Steering | Sequence[Steering]",
    path: "str | os.PathLike[str]",
    *,
    n_layers: int | None = None,
    model: Bridge | ModelFingerprint | None = None,
    model_hint: str = "llama",
    every_position: bool = False,
) -> Path:
    """Write an additive steering as a llama.cpp control vector (GGUF).

    The file has architecture ``controlvector``, metadata ``controlvector.model_hint`` (str) and
    ``controlvector.layer_count`` (uint32), and one float32 tensor ``direction.{il}`` of length
    ``d_model`` for every layer ``il = 1 .. n_layers - 1`` (zeros where nothing is steered), as
    llama.cpp's own ``cvector-generator`` writes. Each steered layer holds
    ``steering.coefficient * steering.unit`` (a relative scale is resolved; several steerings add up).
    ``resid_post`` at layer ``L`` maps to ``direction.L`` and ``resid_pre`` at ``L`` to
    ``direction.{L-1}`` (see :func:`llama_cpp_layer`). Use it with
    ``llama-cli -m model.gguf --control-vector file.gguf``; ``--control-vector-scaled file.gguf s``
    multiplies it by ``s``.

    Args:
        steering: One steering or several (mode ``add`` or ``swfc``, no gate, no ``preserve_norm``).
        path: Output file (``.gguf`` is appended if missing).
        n_layers: The model's layer count (or pass ``model``).
        model: The model (or its fingerprint), for ``n_layers`` and a width check.
        model_hint: ``controlvector.model_hint`` (llama.cpp's architecture name; not checked by llama.cpp).
        every_position: Export a steering whose positions are not ``"all"``; llama.cpp will apply it
            to every token anyway. Without it such a steering is refused, so the exported file never
            silently changes what the steering does.

    Returns:
        The path written (atomically).

    Raises:
        ConfigError: A mode, site, layer, gate, norm rescaling or position set llama.cpp cannot reproduce.
        ArtifactMismatchError: Steerings of different widths, or a width other than ``model``'s.
    """
    import gguf

    steerings = [steering] if isinstance(steering, Steering) else list(steering)
    if not steerings or not all(isinstance(s, Steering) for s in steerings):
        raise ConfigError("export_gguf_control_vector needs one Steering or a non-empty list of them")
    fp = fingerprint_of(model) if model is not None else None
    if fp is not None:
        if n_layers is not None and n_layers != fp.n_layers:
            raise ConfigError(f"n_layers={n_layers} but model {fp.name!r} has {fp.n_layers} layers")
        n_layers = fp.n_layers
    if n_layers is None or isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 2:
        raise ConfigError(
            f"give the model's layer count (n_layers >= 2, or model=), got n_layers={n_layers!r}"
        )
    widths = {s.d_model for s in steerings}
    if len(widths) > 1:
        raise ArtifactMismatchError(
            f"steerings of different widths {sorted(widths)} cannot share one control vector"
        )
    d_model = widths.pop()
    if fp is not None and fp.d_model != d_model:
        raise ArtifactMismatchError(
            f"steering width {d_model} but model {fp.name!r} has d_model {fp.d_model}"
        )
    if not isinstance(model_hint, str) or not model_hint:
        raise ConfigError(f"model_hint must be a non-empty string, got {model_hint!r}")

    directions = np.zeros((n_layers, d_model), dtype=np.float64)  # row il = direction.il; row 0 unused
    for s in steerings:
        check_exportable(s, every_position)
        vec = (s.coefficient * s.unit.double()).numpy()
        for layer in s.layers:
            directions[llama_cpp_layer(s.site, layer, n_layers)] += vec

    out = Path(path)
    if out.suffix != ".gguf":
        out = out.with_name(out.name + ".gguf")
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), _GGUF_ARCH)
        writer.add_string(f"{_GGUF_ARCH}.model_hint", model_hint)
        writer.add_uint32(f"{_GGUF_ARCH}.layer_count", n_layers - 1)
        for il in range(1, n_layers):
            writer.add_tensor(f"direction.{il}", directions[il].astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out
