"""Save, load and share steerings: safetensors + a JSON record (GGUF export: :mod:`.gguf_export`).

A saved steering is two files side by side::

    refusal.safetensors   unit vectors (``<name>/unit``, a gate's ``<name>/gate_unit``, ``.0``, ``.1`` ...)
    refusal.json          everything else: the placement (layers, site, positions, norm limit), the
                          edit (its mode and that mode's parameters), gate, provenance, the model
                          fingerprint, d_model, the SHA-256 of the safetensors file and the versions of
                          the packages that wrote it

Format 2 stores each steering's ``placement`` and ``edit`` as two objects; format 1 (one flat object with
every mode's fields) still loads, each parameter its mode does not read dropped.

No pickle: tensors go through safetensors, everything else through JSON. Both files are written to
temporary files in the target folder and moved into place (:mod:`lensteer.core.io`), the safetensors
file first and the JSON last; the JSON names the safetensors file's hash, so a half-replaced pair is
refused on load; ``record_sha256`` covers the JSON too (an edited file loads only with ``verify=False``,
with a warning: :mod:`.file_hashes`). Loading into a model checks the fingerprint (name, layers, width, vocabulary, processing mode) and refuses another model with an
:class:`~lensteer.ArtifactMismatchError` that names both.
"""

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from lensteer.core.bridge import Bridge
from lensteer.core.io import atomic_path, sha256_file
from lensteer.core.models import ModelFingerprint, fingerprint_of
from lensteer.errors import ArtifactMismatchError, ConfigError, DataError, LensteerError
from lensteer.steering.edits import EDITS, FLAT_NAMES, MODES, Placement, SteeringEdit, edit_for
from lensteer.steering.file_hashes import record_hash, verify_record, verify_tensors
from lensteer.steering.gates import gate_from_record, gate_to_record
from lensteer.steering.positions import NAMED_POSITIONS, LastK, Window
from lensteer.steering.spec import Steering

FORMAT = "lensteer.steering"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_VERSIONED = ("lensteer", "torch", "transformers", "transformer-lens", "safetensors")
_FINGERPRINT_KEYS = ("name", "n_layers", "d_model", "d_vocab", "processing_mode")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def artifact_paths(path: "str | os.PathLike[str]") -> tuple[Path, Path]:
    """The ``(<stem>.safetensors, <stem>.json)`` pair for ``path`` (either suffix, or none, is accepted)."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    if not p.name:
        raise ConfigError(f"path {str(path)!r} has no file name; give e.g. 'out/refusal'")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages whose behaviour a saved steering depends on."""
    out: dict[str, str | None] = {}
    for dist in _VERSIONED:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def _encode_positions(positions: Any) -> dict[str, Any]:
    if isinstance(positions, str):
        return {"kind": "named", "value": positions}
    if isinstance(positions, Window):
        return {"kind": "window", "start": positions.start, "stop": positions.stop}
    if isinstance(positions, LastK):
        return {"kind": "last_k", "k": positions.k}
    return {"kind": "indices", "value": list(positions)}


def _steering_record(s: Steering) -> dict[str, Any]:
    gate = None if s.gate is None else gate_to_record(s.gate)[0]
    return {
        "method": s.info.get("direction_method"),  # for readers; the full provenance is in info
        "d_model": s.d_model,
        "placement": {
            "layers": list(s.layers),
            "site": s.site,
            "positions": _encode_positions(s.positions),
            "max_norm": list(s.max_norm) if isinstance(s.max_norm, tuple) else s.max_norm,
        },
        "edit": s.edit.record(),
        "coefficient": s.coefficient,  # derived (scale x reference_norm when relative); not read back
        "gate": gate,
        "info": s.info,
    }


def _file_fingerprint(
    steerings: Mapping[str, Steering], model: Bridge | ModelFingerprint | None
) -> dict[str, Any] | None:
    if model is not None:
        fp = fingerprint_of(model).to_dict()
        for name, s in steerings.items():
            if s.d_model != fp["d_model"]:
                raise ArtifactMismatchError(
                    f"steering {name!r} has width {s.d_model} but model {fp['name']!r} has "
                    f"d_model {fp['d_model']}; was it made for another model?"
                )
        return fp
    found: dict[str, Any] = {
        name: s.info["model"] for name, s in steerings.items() if s.info.get("model") is not None
    }
    distinct = {json.dumps(v, sort_keys=True) for v in found.values()}
    if len(distinct) > 1:
        raise ArtifactMismatchError(
            f"these steerings come from different models ({found}); save each model's "
            "steerings in their own file"
        )
    if not found:
        return None
    fp = next(iter(found.values()))
    if not isinstance(fp, Mapping):
        raise ConfigError(f"steering info['model'] must be a fingerprint dict, got {fp!r}")
    return dict(fp)


def save_steerings(
    steerings: Mapping[str, Steering],
    path: "str | os.PathLike[str]",
    *,
    model: Bridge | ModelFingerprint | None = None,
) -> tuple[Path, Path]:
    """Save several named steerings of one model to ``<path>.safetensors`` + ``<path>.json``.

    Args:
        steerings: Name -> steering (names: letters, digits, ``_``, ``.``, ``-``).
        path: Output stem (a ``.safetensors`` or ``.json`` suffix is dropped).
        model: The model (or its :class:`~lensteer.core.ModelFingerprint`) the steerings are for;
            by default the fingerprint stored in the steerings' ``info["model"]``.

    Returns:
        The safetensors and JSON paths written.

    Raises:
        ConfigError: No steerings, a bad name, or provenance (``info``) that JSON cannot hold.
        ArtifactMismatchError: Steerings of different widths or models, or a width other than ``model``'s.
    """
    from safetensors.torch import save_file

    if not steerings:
        raise ConfigError("save_steerings needs at least one steering")
    tensors: dict[str, torch.Tensor] = {}
    for name, s in steerings.items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ConfigError(f"steering name {name!r} is not allowed; use letters, digits, '_', '.' or '-'")
        if not isinstance(s, Steering):
            raise ConfigError(f"steering {name!r} is a {type(s).__name__}, not a Steering")
        tensors[f"{name}/unit"] = s.unit.contiguous()
        if s.gate is not None:
            tensors.update({f"{name}/{key}": t for key, t in gate_to_record(s.gate)[1].items()})
    widths = {name: s.d_model for name, s in steerings.items()}
    if len(set(widths.values())) > 1:
        raise ArtifactMismatchError(
            f"steerings of different widths {widths} cannot share a file (one model per file)"
        )
    record: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": _file_fingerprint(steerings, model),
        "d_model": next(iter(widths.values())),
        "versions": package_versions(),
        "safetensors_sha256": "",
        "steerings": {name: _steering_record(s) for name, s in steerings.items()},
    }
    st_path, json_path = artifact_paths(path)
    try:
        json.dumps(record, allow_nan=False)  # validate before writing anything
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"cannot save to {json_path}: a field or info entry is not plain JSON (str, number, "
            f"bool, None, list, dict; finite floats): {err}"
        ) from err
    # the JSON block is the outer one, so it is renamed last: a complete JSON means a complete pair
    with atomic_path(json_path) as json_tmp, atomic_path(st_path) as st_tmp:
        save_file(tensors, str(st_tmp), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
        record["safetensors_sha256"] = sha256_file(st_tmp)
        record["record_sha256"] = record_hash(record)
        json_tmp.write_text(json.dumps(record, indent=1, allow_nan=False))
    return st_path, json_path


def save_steering(
    steering: Steering, path: "str | os.PathLike[str]", *, model: Bridge | ModelFingerprint | None = None
) -> tuple[Path, Path]:
    """Save one steering to ``<path>.safetensors`` + ``<path>.json`` (see :func:`save_steerings`).

    Example::

        lensteer.save_steering(steering, "out/refusal", model=model)
        same = lensteer.load_steering("out/refusal", model=model)
    """
    return save_steerings({"steering": steering}, path, model=model)


_KINDS: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
    "list": (list,),
    "dict": (dict,),
}


class _Fields:
    """Typed access to one JSON object, raising :class:`DataError` that names the file and the key."""

    def __init__(self, obj: Any, file: Path, where: str) -> None:
        if not isinstance(obj, dict):
            raise DataError(f"{file}: {where or 'the record'} must be a JSON object, got {obj!r}")
        self.obj, self.file, self.where = obj, file, where

    def get(self, key: str, kind: str, *, nullable: bool = False) -> Any:
        label = f"{self.where}.{key}" if self.where else key
        if key not in self.obj:
            raise DataError(f"{self.file}: key {label!r} is missing")
        value = self.obj[key]
        if value is None and nullable:
            return None
        ok = isinstance(value, _KINDS[kind]) and (kind == "bool" or not isinstance(value, bool))
        if ok and kind == "float":
            ok = math.isfinite(value)
            value = float(value)
        if not ok:
            allowed = kind + (" or null" if nullable else "")
            raise DataError(f"{self.file}: key {label!r} = {value!r} is not allowed; expected {allowed}")
        return value


def _decode_max_norm(f: _Fields) -> float | tuple[float, ...] | None:
    if f.obj.get("max_norm") is None:
        return None
    value = f.obj["max_norm"]
    if not isinstance(value, list):
        return float(f.get("max_norm", "float"))
    if value and all(
        not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) for v in value
    ):
        return tuple(float(v) for v in value)
    raise DataError(
        f"{f.file}: key {_key(f, 'max_norm')!r} = {value!r} is not allowed; "
        "expected a number, a non-empty list of numbers (one per layer) or null"
    )


def _decode_positions(f: _Fields) -> Any:
    kind = f.get("kind", "str")
    if kind == "named":
        value = f.get("value", "str")
        if value not in NAMED_POSITIONS:
            raise DataError(f"{f.file}: key '{f.where}.value' = {value!r} is not one of {NAMED_POSITIONS}")
        return value
    if kind == "window":
        return Window(f.get("start", "int"), f.get("stop", "int", nullable=True))
    if kind == "last_k":
        return LastK(f.get("k", "int"))
    if kind == "indices":
        value = f.get("value", "list")
        if not value or any(isinstance(i, bool) or not isinstance(i, int) for i in value):
            raise DataError(f"{f.file}: key '{f.where}.value' = {value!r} must be a non-empty list of ints")
        return tuple(value)
    raise DataError(
        f"{f.file}: key '{f.where}.kind' = {kind!r} is not allowed; "
        "expected 'named', 'window', 'last_k' or 'indices'"
    )


# The JSON kind of each edit field (format 2), as _Fields.get takes it: (kind, nullable).
_EDIT_KINDS: dict[str, tuple[str, bool]] = {
    "scale": ("float", False),
    "preserve_norm": ("bool", False),
    "relative": ("bool", False),
    "reference_norm": ("float", True),
    "reference": ("float", True),
    "threshold": ("float", True),
    "target": ("float", True),
    "variant": ("str", False),
}


def _decode_edit(f: _Fields) -> SteeringEdit:
    """A format-2 ``edit`` object: its mode and every field of that mode's edit (a key of another mode
    is refused by :func:`edit_for`)."""
    mode = f.get("mode", "str")
    if mode not in EDITS:
        raise DataError(
            f"{f.file}: key '{f.where}.mode' = {mode!r}: mode {mode!r} is not allowed; use one of {MODES}"
        )
    unknown = sorted(set(f.obj) - {"mode"} - set(_EDIT_KINDS))
    if unknown:
        raise DataError(f"{f.file}: keys {unknown} of {f.where!r} are not edit parameters")
    params = {}
    for name in sorted({fd.name for fd in fields(EDITS[mode])} | (set(f.obj) - {"mode"})):
        kind, nullable = _EDIT_KINDS[name]
        params[_FLAT.get(name, name)] = f.get(name, kind, nullable=nullable)
    return edit_for(mode, params, given=set(params))


_FLAT = {field: flat for flat, field in FLAT_NAMES.items()}  # an edit field -> its flat keyword


def _decode_v1_edit(f: _Fields) -> SteeringEdit:
    """A format-1 steering's edit: its flat fields, those its mode does not read dropped (format 1 wrote
    every mode's fields)."""
    params = {
        "scale": f.get("scale", "float"),
        "relative": f.get("relative", "bool"),
        "reference_norm": f.get("reference_norm", "float", nullable=True),
        "preserve_norm": f.get("preserve_norm", "bool"),
        "threshold": f.get("threshold", "float", nullable=True),
        "target": f.get("target", "float", nullable=True),
        "reference": f.get("reference", "float", nullable=True),
        # added in format 1 later; files written before carry none (mirror StMP)
        "stmp_variant": f.get("stmp_variant", "str") if "stmp_variant" in f.obj else "mirror",
    }
    return edit_for(f.get("mode", "str"), params)


def _decode_placement(f: _Fields) -> Placement:
    """A placement: its keys in a format-2 ``placement`` object, or at the top of a format-1 steering."""
    return Placement(
        layers=tuple(f.get("layers", "list")),
        site=f.get("site", "str"),
        positions=_decode_positions(_Fields(f.get("positions", "dict"), f.file, _key(f, "positions"))),
        max_norm=_decode_max_norm(f),
    )


def _key(f: _Fields, key: str) -> str:
    return f"{f.where}.{key}" if f.where else key


def _decode_steering(
    name: str, f: _Fields, tensors: Mapping[str, torch.Tensor], st_path: Path, version: int
) -> Steering:
    d_model = f.get("d_model", "int")
    gate_rec = f.get("gate", "dict", nullable=True)

    def unit_of(key: str) -> torch.Tensor:
        tensor = tensors.get(f"{name}/{key}")
        if tensor is None:
            raise DataError(
                f"{st_path}: tensor {name + '/' + key!r} is missing (the JSON lists steering {name!r})"
            )
        if tensor.ndim != 1 or tensor.shape[0] != d_model:
            raise ArtifactMismatchError(
                f"{st_path}: tensor {name + '/' + key!r} has shape {tuple(tensor.shape)} "
                f"but {f.file} says d_model={d_model}; the two files do not belong together"
            )
        return tensor

    unit = unit_of("unit")
    try:
        if version == 1:
            placement, edit = _decode_placement(f), _decode_v1_edit(f)
        else:
            placement = _decode_placement(_Fields(f.get("placement", "dict"), f.file, _key(f, "placement")))
            edit = _decode_edit(_Fields(f.get("edit", "dict"), f.file, _key(f, "edit")))
        gate = None
        if gate_rec is not None:
            gate = gate_from_record(gate_rec, unit_of, where=f"{f.where}.gate", file=str(f.file))
        return Steering(unit=unit, placement=placement, edit=edit, gate=gate, info=f.get("info", "dict"))
    except (DataError, ArtifactMismatchError):
        raise
    except LensteerError as err:  # the engine's own validation names the bad value
        raise DataError(f"{f.file}: steering {name!r} is not valid: {err}") from err


def _check_model(
    saved: dict[str, Any] | None, d_model: int, model: Bridge | ModelFingerprint, file: Path, strict: bool
) -> None:
    current = fingerprint_of(model)
    if saved is not None and strict:
        differ = [k for k in _FINGERPRINT_KEYS if saved.get(k) != getattr(current, k)]
        if differ:

            def show(fp: Mapping[str, Any]) -> str:
                return (
                    f"{fp.get('name')!r} (n_layers={fp.get('n_layers')}, d_model={fp.get('d_model')}, "
                    f"d_vocab={fp.get('d_vocab')}, {fp.get('processing_mode')} mode)"
                )

            raise ArtifactMismatchError(
                f"{file} was saved for model {show(saved)} but is being loaded into model "
                f"{show(current.to_dict())}; they differ in {', '.join(differ)}. Load it into the model it was "
                "made for (pass strict=False to check only the width)"
            )
    if d_model != current.d_model:
        raise ArtifactMismatchError(
            f"{file} holds vectors of width {d_model} but model {current.name!r} has "
            f"d_model {current.d_model}; it was made for another model"
        )


def load_steerings(
    path: "str | os.PathLike[str]",
    *,
    model: Bridge | ModelFingerprint | None = None,
    strict: bool = True,
    verify: bool = True,
) -> dict[str, Steering]:
    """Load every steering saved by :func:`save_steerings`, by name.

    Args:
        path: The stem (or either file) given to :func:`save_steerings`.
        model: If given (a model or a :class:`~lensteer.core.ModelFingerprint`), refuse steerings saved for
            another model.
        strict: Compare the whole fingerprint (name, n_layers, d_model, d_vocab, processing mode);
            ``False`` checks only the width.
        verify: Refuse a pair whose recorded hash does not match (tensors swapped, JSON edited);
            ``False`` loads it with a warning.

    Raises:
        DataError: A missing file, a record that is not this format, a missing key or a bad value
            (the message names the file and the key), a safetensors file that is not the one the
            JSON was written with, or a JSON edited after saving (unless ``verify=False``).
        ArtifactMismatchError: The file belongs to another model, or the tensors' width is not the
            JSON's ``d_model``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    st_path, json_path = artifact_paths(path)
    record, d_model, saved_fp = _read_header(st_path, json_path)
    verify_tensors(record, st_path, json_path, verify)
    if model is not None:
        _check_model(saved_fp, d_model, model, json_path, strict)
    try:
        tensors = load_file(str(st_path))
    except (SafetensorError, OSError) as err:
        raise DataError(f"{st_path} is not a readable safetensors file: {err}") from err
    entries = _Fields(record, json_path, "").get("steerings", "dict")
    if not entries:
        raise DataError(f"{json_path}: key 'steerings' is empty")
    out = {}
    for name, rec in entries.items():
        f = _Fields(rec, json_path, f"steerings.{name}")
        if f.get("d_model", "int") != d_model:
            raise DataError(
                f"{json_path}: key 'steerings.{name}.d_model' = {rec['d_model']} but 'd_model' = {d_model}"
            )
        out[name] = _decode_steering(name, f, tensors, st_path, record["format_version"])
    verify_record(record, json_path, verify)
    return out


def _read_header(st_path: Path, json_path: Path) -> tuple[dict[str, Any], int, dict[str, Any] | None]:
    """The JSON record of a steering file with its typed header: the record, ``d_model`` and the saved
    fingerprint (``None`` if none was saved). Refuses a missing file, bad JSON, another format or version,
    and a header key of the wrong type."""
    for p in (json_path, st_path):
        if not p.is_file():
            raise DataError(f"{p} does not exist; a saved steering is a .json + .safetensors pair")
    try:
        record = json.loads(json_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{json_path} is not valid JSON: {err}") from err
    top = _Fields(record, json_path, "")
    if top.get("format", "str") != FORMAT:
        raise DataError(f"{json_path}: key 'format' = {record['format']!r}; expected {FORMAT!r}")
    if top.get("format_version", "int") not in READABLE_VERSIONS:
        raise DataError(
            f"{json_path}: key 'format_version' = {record['format_version']!r}; this lensteer reads "
            f"versions {list(READABLE_VERSIONS)}"
        )
    d_model = top.get("d_model", "int")
    saved_fp = top.get("model", "dict", nullable=True)
    if saved_fp is not None:
        fp = _Fields(saved_fp, json_path, "model")
        for key in _FINGERPRINT_KEYS:
            fp.get(key, "str" if key in ("name", "processing_mode") else "int")
        if saved_fp["d_model"] != d_model:
            raise DataError(
                f"{json_path}: key 'model.d_model' = {saved_fp['d_model']} but 'd_model' = {d_model}"
            )
    for key in (
        ("safetensors_sha256", "record_sha256") if "record_sha256" in record else ("safetensors_sha256",)
    ):
        top.get(key, "str")  # typed before they are compared
    return record, d_model, saved_fp


def load_steering(
    path: "str | os.PathLike[str]",
    *,
    model: Bridge | ModelFingerprint | None = None,
    name: str | None = None,
    strict: bool = True,
    verify: bool = True,
) -> Steering:
    """Load one steering saved by :func:`save_steering` (or ``name`` from a :func:`save_steerings` file).

    Args:
        path: The stem (or either file) given when saving.
        model: If given, refuse a steering saved for another model (see :func:`load_steerings`).
        name: Which steering, when the file holds several.
        strict: Compare the whole model fingerprint (``False``: only the width).
        verify: Refuse a file edited after saving (``False``: load it with a warning).

    Raises:
        DataError: Missing or malformed files, an edited file, or ``name`` not in the file.
        ArtifactMismatchError: The steering belongs to another model or width.
    """
    found = load_steerings(path, model=model, strict=strict, verify=verify)
    if name is None:
        if len(found) != 1:
            raise DataError(
                f"{artifact_paths(path)[1]} holds {len(found)} steerings {sorted(found)}; pass name="
            )
        return next(iter(found.values()))
    if name not in found:
        raise DataError(f"{artifact_paths(path)[1]} has no steering {name!r}; it holds {sorted(found)}")
    return found[name]
