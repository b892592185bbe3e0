"""Exact activation patching that recomputes only what a patch can change.

A patch at (layer ``s``, position ``p``) of the residual stream cannot change any layer below ``s``
nor, under causal attention, any position before ``p``. :class:`Replayer` runs the target prompt
once through the bridge's own blocks, keeps every layer's residual stream and keys/values, and then
recomputes a patched row from layer ``s`` upward for positions ``>= p`` only: a cache stand-in hands
each attention layer the target's keys/values of positions ``< p`` (a KV-cache prefix), and the
positions/rotary tables/masks the model itself passed to its blocks are sliced to the suffix.

All rows that share the first changed position ``p`` run together as a *staircase*: one pass up the
layers where a row joins the batch at its own start layer, so no layer below a patch is computed and
no work is repeated. Rows whose patched activation equals the target's (bit for bit) are the target
run itself and are not recomputed. The cost of a (layer, position) cell falls from
``n_layers * n_pos`` token-layers to ``(n_layers - s) * (n_pos - p)``.

Blocks that take no KV cache (TransformerLens' native models) still get the layer skipping, with
``p = 0``. A replay of the unpatched target (and, with a prefix, of a suffix) must reproduce the
model's own last-position output, or the caller falls back to one full forward per cell.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lensteer.core.bridge import Bridge
from lensteer.core.forward import final_normalized
from lensteer.core.models import ensure_kv_cache_fix

_CACHE_KEYS = ("cache", "past_key_values", "layer_past")
_SELF_CHECK_ATOL = 1e-4


@dataclass(frozen=True)
class Row:
    """One (cell, example) to recompute.

    Attributes:
        start: Layer whose input (resid_pre) carries the patch; ``n_layers`` means the final residual.
        pos: First position whose value differs from the target's.
        example: Example (batch row of the target).
        head: ``[k, d_model]`` patched residual at positions ``pos .. pos + k - 1`` (the rest is the target's).
    """

    start: int
    pos: int
    example: int
    head: torch.Tensor


class _PrefixCache:
    """Stand-in for a transformers ``Cache``: records keys/values, or prepends a stored prefix."""

    def __init__(self) -> None:
        self.record: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.prefix: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(  # signature of transformers' Cache.update
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *_args: Any, **_kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.record is not None:
            self.record[layer_idx] = (key, value)
            return key, value
        if layer_idx in self.prefix:
            pk, pv = self.prefix[layer_idx]
            return torch.cat([pk, key], dim=-2), torch.cat([pv, value], dim=-2)
        return key, value

    def get_seq_length(self, layer_idx: int = 0) -> int:
        if layer_idx in self.prefix:
            return int(self.prefix[layer_idx][0].shape[-2])
        return 0


class Unsupported(Exception):
    """The model's blocks cannot be replayed one by one (the caller falls back)."""


class NonFinite(Exception):
    """The replayed run has NaN or Inf in its residual stream (``layer`` is the first such input)."""

    def __init__(self, layer: int) -> None:
        super().__init__(f"NaN or Inf in the residual stream entering layer {layer}")
        self.layer = layer


class _StopAtBlock0(Exception):
    pass


def _block0_input(model: Bridge, tokens: torch.Tensor) -> torch.Tensor:
    """The residual stream entering block 0 (the embedding), without running the blocks."""
    seen: list[torch.Tensor] = []

    def pre(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:  # noqa: ARG001
        seen.append(args[0] if args else kwargs["hidden_states"])
        raise _StopAtBlock0

    handle = model.blocks[0].register_forward_pre_hook(pre, with_kwargs=True)
    try:
        with torch.inference_mode():
            model(tokens)
    except _StopAtBlock0:
        pass
    finally:
        handle.remove()
    if not seen:
        raise Unsupported("block 0 was never called")
    return seen[0].clone()


def _capture_block_inputs(
    model: Bridge, tokens: torch.Tensor
) -> tuple[torch.Tensor, list[dict[str, Any]], torch.Tensor]:
    """Block 0's input, every block's keyword arguments, and the model's last-position final-norm output."""
    captured: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = {}

    def make(i: int) -> Callable[..., None]:
        def pre(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:  # noqa: ARG001
            captured.setdefault(i, (args, dict(kwargs)))

        return pre

    handles = [
        block.register_forward_pre_hook(make(i), with_kwargs=True) for i, block in enumerate(model.blocks)
    ]
    try:
        with torch.inference_mode():
            final = final_normalized(model, tokens)[:, -1]
    finally:
        for h in handles:
            h.remove()
    if len(captured) != len(model.blocks):
        raise Unsupported("not every block was called exactly as a module")
    args0, kwargs0 = captured[0]
    x0 = args0[0] if args0 else kwargs0.get("hidden_states")
    if not isinstance(x0, torch.Tensor) or x0.shape[:2] != tokens.shape:
        raise Unsupported("block 0 received no [batch, pos, d_model] hidden states")
    kwargs = []
    for i in range(len(model.blocks)):
        args, kw = captured[i]
        kw.pop("hidden_states", None)
        if len(args) > 1:
            raise Unsupported("blocks take positional arguments beyond the hidden states")
        kwargs.append(kw)
    return x0.clone(), kwargs, final.clone()


class Replayer:
    """The target run, replayable block by block from any layer and position.

    Args:
        model: A ``TransformerBridge`` whose blocks are ``model.blocks`` and final norm ``model.ln_final``.
        tokens: ``[n_examples, pos]`` target tokens (no padding).
        capture: Hook names whose activations to keep (for comparing source and target sites).
        use_prefix: Try the KV-cache prefix (skip positions before a patch); else only skip layers.
        like: A verified replayer of same-shaped, unpadded tokens whose block arguments (positions,
            masks) this one reuses; it then records without the self-check and without a prefix.

    Raises:
        Unsupported: The blocks cannot be replayed, or the replay does not reproduce the model.
        NonFinite: The run has NaN or Inf in its residual stream.
    """

    def __init__(
        self,
        model: Bridge,
        tokens: torch.Tensor,
        *,
        capture: Sequence[str] = (),
        use_prefix: bool = True,
        like: "Replayer | None" = None,
    ) -> None:
        if not hasattr(model, "blocks") or not hasattr(model, "ln_final"):
            raise Unsupported("the model has no blocks / ln_final")
        ensure_kv_cache_fix()  # TL 4.3's attention reads only past_key_values, transformers passes cache=
        self.model = model
        self.device = next(iter(model.parameters())).device
        self.tokens = tokens.to(self.device)
        self.n_ex, self.n_pos = tokens.shape
        self.n_layers = len(model.blocks)
        reference: torch.Tensor | None = None
        self.kwargs: list[dict[str, Any]]
        if like is not None and like.tokens.shape == self.tokens.shape:
            x0, self.kwargs, use_prefix = _block0_input(model, self.tokens), like.kwargs, False
        else:
            x0, self.kwargs, reference = _capture_block_inputs(model, self.tokens)
        for kw in self.kwargs:
            for key, value in kw.items():
                if key in _CACHE_KEYS or value is None or isinstance(value, bool | int | float | str):
                    continue
                if key not in ("attention_mask", "position_ids", "cache_position", "position_embeddings"):
                    raise Unsupported(
                        f"block keyword {key!r} of type {type(value).__name__} is not understood"
                    )
        self.use_prefix = use_prefix and any(k in kw for kw in self.kwargs for k in _CACHE_KEYS)
        self.cache = _PrefixCache()
        self.acts: dict[str, torch.Tensor] = {}
        self.resid: list[torch.Tensor] = [x0]
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._record(capture)
        bad = [i for i, r in enumerate(self.resid) if not torch.isfinite(r).all()]
        if bad:
            raise NonFinite(bad[0])
        self.final = self._final(self.resid[-1][:, -1])
        if reference is None:
            return
        if not torch.allclose(
            self.final, reference.to(self.final.dtype), atol=_SELF_CHECK_ATOL, rtol=_SELF_CHECK_ATOL
        ):
            raise Unsupported("replaying the blocks does not reproduce the model's output")
        if self.use_prefix and self.n_pos > 1:
            p = self.n_pos // 2
            rows = [Row(start=0, pos=p, example=e, head=x0[e, p : p + 1]) for e in range(self.n_ex)]
            if not torch.allclose(self.run(rows), self.final, atol=_SELF_CHECK_ATOL, rtol=_SELF_CHECK_ATOL):
                self.use_prefix = False  # the cache stand-in is not honoured: skip layers only

    # ---------------------------------------------------------------- replay

    def _record(self, capture: Sequence[str]) -> None:
        def keep(name: str) -> Callable[..., torch.Tensor]:
            def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001 - TL signature
                self.acts[name] = act.detach().clone()
                return act

            return hook

        everyone = torch.arange(self.n_ex, device=self.device)
        self.cache.record = {}
        try:
            with torch.inference_mode(), self.model.hooks(fwd_hooks=[(n, keep(n)) for n in capture]):
                for layer in range(self.n_layers):
                    self.resid.append(self._block(layer, self.resid[-1], everyone, 0))
        finally:
            recorded, self.cache.record = self.cache.record, None
        if self.use_prefix:
            if sorted(recorded) != list(range(self.n_layers)):
                self.use_prefix = False  # keys/values never reached the cache
            else:
                self.keys = [recorded[i][0].detach() for i in range(self.n_layers)]
                self.values = [recorded[i][1].detach() for i in range(self.n_layers)]
                if any(k.shape[0] != self.n_ex or k.shape[-2] != self.n_pos for k in self.keys):
                    self.use_prefix = False

    def _final(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.ln_final(x[:, None])[:, 0]

    def _kwargs(self, layer: int, ex_idx: torch.Tensor, p: int) -> dict[str, Any]:
        def rows(t: torch.Tensor) -> torch.Tensor:
            if t.shape[0] == 1 or self.n_ex == 1:
                return t
            if t.shape[0] != self.n_ex:
                raise Unsupported(f"a block argument has batch size {t.shape[0]}, not {self.n_ex}")
            return t.index_select(0, ex_idx)

        out: dict[str, Any] = {}
        for key, value in self.kwargs[layer].items():
            if key in _CACHE_KEYS:
                out[key] = self.cache
            elif key == "attention_mask" and isinstance(value, torch.Tensor):
                value = rows(value)
                out[key] = value[..., p:, :] if value.ndim == 4 else value
            elif key == "position_ids" and isinstance(value, torch.Tensor):
                out[key] = rows(value)[..., p:]
            elif key == "cache_position" and isinstance(value, torch.Tensor):
                out[key] = value[p:]
            elif key == "position_embeddings" and isinstance(value, tuple | list):
                out[key] = tuple(rows(t)[:, p:] for t in value)
            else:
                out[key] = value
        return out

    def _block(self, layer: int, x: torch.Tensor, ex_idx: torch.Tensor, p: int) -> torch.Tensor:
        if p > 0:
            self.cache.prefix = {
                layer: (
                    self.keys[layer].index_select(0, ex_idx)[..., :p, :],
                    self.values[layer].index_select(0, ex_idx)[..., :p, :],
                )
            }
        else:
            self.cache.prefix = {}
        try:
            out = self.model.blocks[layer](x, **self._kwargs(layer, ex_idx, p))
        finally:
            self.cache.prefix = {}
        return out[0] if isinstance(out, tuple) else out

    def block_outputs(
        self, layer: int, hooks: list[tuple[str, Callable[..., torch.Tensor]]], n_variants: int
    ) -> torch.Tensor:
        """``[n_variants * n_examples, pos, d_model]`` output of block ``layer`` on the target's input,
        ``n_variants`` copies (variant-major), with ``hooks`` active (they patch their own copies)."""
        ex_idx = torch.arange(self.n_ex, device=self.device).repeat(n_variants)
        with torch.inference_mode(), self.model.hooks(fwd_hooks=hooks):
            return self._block(layer, self.resid[layer].repeat(n_variants, 1, 1), ex_idx, 0)

    def run(
        self, rows: Sequence[Row], *, max_rows: int = 256, on_group: Callable[[], None] | None = None
    ) -> torch.Tensor:
        """Final-norm output at the last position ``[len(rows), d_model]`` of every patched row."""
        with torch.inference_mode():
            return self._run(rows, max_rows, on_group)

    def _run(self, rows: Sequence[Row], max_rows: int, on_group: Callable[[], None] | None) -> torch.Tensor:
        out = torch.empty(len(rows), self.final.shape[-1], dtype=self.final.dtype, device=self.device)
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            if r.start >= self.n_layers:  # the final residual: only the last position is read
                last = r.pos + r.head.shape[0] - 1 == self.n_pos - 1
                x = r.head[-1] if last else self.resid[-1][r.example, -1]
                out[i] = self._final(x[None].to(self.device))[0]
            else:
                groups.setdefault(r.pos if self.use_prefix else 0, []).append(i)
        for p, members in sorted(groups.items()):
            members.sort(key=lambda i: rows[i].start)
            for lo in range(0, len(members), max(1, max_rows)):
                chunk = members[lo : lo + max(1, max_rows)]
                out[chunk] = self._staircase([rows[i] for i in chunk], p)
            if on_group is not None:
                on_group()
        return out

    def _suffix(self, r: Row, p: int) -> torch.Tensor:
        x = self.resid[r.start][r.example, p:].clone()
        x[r.pos - p : r.pos - p + r.head.shape[0]] = r.head.to(x.device, x.dtype)
        return x

    def _staircase(self, chunk: list[Row], p: int) -> torch.Tensor:
        """Rows sorted by start layer share one pass up the layers; each joins at its start."""
        hidden: torch.Tensor | None = None
        ex: list[int] = []
        k = 0
        with torch.inference_mode():
            for layer in range(chunk[0].start, self.n_layers):
                joining = []
                while k < len(chunk) and chunk[k].start == layer:
                    joining.append(self._suffix(chunk[k], p))
                    ex.append(chunk[k].example)
                    k += 1
                if joining:
                    new = torch.stack(joining)
                    hidden = new if hidden is None else torch.cat([hidden, new])
                assert hidden is not None
                hidden = self._block(layer, hidden, torch.tensor(ex, device=self.device), p)
            assert hidden is not None
            return self._final(hidden[:, -1])
