"""Applying a :class:`~lensteer.steering.spec.Steering`: the pure edit of one residual tensor, and the hooks.

``with steer(model, s1, s2):`` puts the hooks on the model for exactly the body of the block; they
come off on any exit, error or not. The edit itself (:func:`steer_resid`) is a pure function, tested
on its own; the hooks only compute the position mask and call it.
"""

import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, ParamSpec, TypeVar
from weakref import WeakKeyDictionary

import torch
from jaxtyping import Bool, Float

from lensteer._types import Resid
from lensteer.core.bridge import Bridge
from lensteer.core.plain import PLAIN_SITES, PlainView
from lensteer.core.sites import layer_of, site_of
from lensteer.errors import ConfigError
from lensteer.steering.positions import position_mask
from lensteer.steering.spec import Steering

_LOCKS: "WeakKeyDictionary[Any, threading.RLock]" = WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
_P = ParamSpec("_P")
_R = TypeVar("_R")


def model_lock(model: object) -> threading.RLock:
    """The model's lock: held by :func:`steer`, :func:`steer_plain` and :func:`lensteer.generate` while their
    hooks are on the model (or on its shared plain view), so a call in another thread never runs under
    them. Re-entrant: a ``generate`` inside a ``steer()`` block of the same thread goes ahead."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


def holding_model_lock(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``fn(model, ...)`` holding :func:`model_lock` of its first argument."""

    @functools.wraps(fn)
    def locked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        model = args[0] if args else kwargs["model"]
        with model_lock(model):
            return fn(*args, **kwargs)

    return locked


@dataclass(frozen=True, kw_only=True)
class Edit:
    """The result of steering one residual tensor: the new values and per-token bookkeeping
    (``projection``: each token's ``h . unit`` before the edit)."""

    resid: Resid
    fired: Bool[torch.Tensor, "batch pos"]
    shift: Float[torch.Tensor, "batch pos"]
    projection: Float[torch.Tensor, "batch pos"]


def steer_resid(
    resid: Resid, steering: Steering, mask: Bool[torch.Tensor, "batch pos"], max_norm: float | None = None
) -> Edit:
    """Apply ``steering``'s edit to the tokens ``mask`` selects (pure; other tokens stay bit-identical).
    Tokens whose norm exceeds ``max_norm`` (massive activations) are never edited."""
    v = steering.unit.to(resid.device, resid.dtype)
    s = resid @ v
    if max_norm is not None:
        mask = mask & (resid.norm(dim=-1) <= max_norm)
    new, selected = steering.edit.apply(resid, v, s)
    fired = mask if selected is None else mask & selected
    if steering.edit.preserve_norm:
        new = new * (resid.norm(dim=-1, keepdim=True) / new.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    out = torch.where(fired[..., None], new, resid)
    return Edit(resid=out, fired=fired, shift=(out - resid).norm(dim=-1), projection=s)


# -- hooks ------------------------------------------------------------------------------------------


class StepRecord(NamedTuple):
    """What one hook call did: steering number ``steering_index`` (its place among ``steer()``'s
    steerings) at ``layer``, per (row, position) of the forward.

    ``fired``: the residual was changed; ``shift``: L2 size of the change; ``projection``: ``h . unit``
    of the residual *before* the edit (recorded whether or not the steering fired).
    """

    steering_index: int
    layer: int
    fired: Bool[torch.Tensor, "batch pos"]
    shift: Float[torch.Tensor, "batch pos"]
    projection: Float[torch.Tensor, "batch pos"]


@dataclass
class SteeringContext:
    """What the hooks need to know about the current forward, and what they record.

    :func:`lensteer.generate` fills in ``prompt_lens``, ``pads``, ``offset`` and ``rows`` before
    every forward. In a plain forward pass every token is a prompt token, and the padding comes from
    the ``attention_mask`` the forward was called with (``steer`` reads it), so a left-padded batch
    steers the same tokens as each row alone.
    ``records`` holds one :class:`StepRecord` per hook call (in the order the hooks ran): per token,
    the fired mask, the edit size (``shift``) and the projection on the steering's unit before the edit.
    """

    prompt_lens: torch.Tensor | None = None
    pads: torch.Tensor | None = None
    offset: int = 0
    prefix: int = 0  # shared prefix before the padding (0: left padding)
    # rows the steerings may edit: [batch] bool (the same rows for every steering: the gates let them
    # through) or [n_steerings, batch] bool (each steering its own rows: several conditions in one batch)
    rows: torch.Tensor | None = None
    record: bool = True
    records: list[StepRecord] = field(default_factory=list)
    # the attention mask of the plain forward in progress (captured by steer(); unused when pads are set)
    seen_mask: torch.Tensor | None = None

    def layout(self, batch: int, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prompt_lens, pads)`` of the forward in progress: as set by :func:`lensteer.generate`, else
        from the forward's attention mask (the first real token of each row), else no padding."""
        if self.pads is not None and self.prompt_lens is not None:
            return self.prompt_lens, self.pads
        mask = self.seen_mask
        if self.pads is None and mask is not None and tuple(mask.shape) == (batch, self.offset + seq):
            real = mask.bool().cpu()
            return real.sum(1), (real.long().cumsum(1) == 0).sum(1)
        prompt_lens = (
            self.prompt_lens if self.prompt_lens is not None else torch.full((batch,), self.offset + seq)
        )
        pads = self.pads if self.pads is not None else torch.zeros(batch, dtype=torch.long)
        return prompt_lens, pads

    def clear(self) -> None:
        self.records.clear()

    def steered_rows(self, index: int) -> torch.Tensor:
        """``[batch]`` bool: the rows steering number ``index`` may edit."""
        assert self.rows is not None
        return self.rows if self.rows.ndim == 1 else self.rows[index]

    def fired_share(self) -> float:
        """Share of steerable (row, position) cells where any steering fired, over all records."""
        if not self.records:
            return 0.0
        fired = sum(int(r.fired.sum()) for r in self.records)
        total = sum(r.fired.numel() for r in self.records)
        return fired / total


def _make_hook(
    steering: Steering, index: int, layer: int, ctx: SteeringContext, max_norm: float | None = None
) -> Any:
    def hook(resid: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001 - TL signature
        batch, seq = resid.shape[0], resid.shape[1]
        prompt_lens, pads = ctx.layout(batch, seq)
        if prompt_lens.shape[0] != batch:
            raise ConfigError(
                f"steering context describes {prompt_lens.shape[0]} rows but the forward has {batch}"
            )
        mask = position_mask(
            steering.positions,
            prompt_lens=prompt_lens,
            pads=pads,
            offset=ctx.offset,
            seq_len=seq,
            prefix=ctx.prefix,
        )
        if ctx.rows is not None:
            mask = mask & ctx.steered_rows(index)[:, None]
        mask = mask.to(resid.device)
        if steering.is_identity or not bool(mask.any()):
            if ctx.record:  # the projection is read only, never written back: the forward is unchanged
                proj = resid.detach() @ steering.unit.to(resid.device, resid.dtype)
                ctx.records.append(
                    StepRecord(
                        index,
                        layer,
                        torch.zeros(batch, seq, dtype=torch.bool),
                        torch.zeros(batch, seq),
                        proj.float().cpu(),
                    )
                )
            return resid
        edit = steer_resid(resid, steering, mask, max_norm)
        if ctx.record:
            ctx.records.append(
                StepRecord(
                    index,
                    layer,
                    edit.fired.cpu(),
                    edit.shift.detach().float().cpu(),
                    edit.projection.detach().float().cpu(),
                )
            )
        return edit.resid

    return hook


def steering_hooks(
    model: Bridge, steerings: Sequence[Steering], ctx: SteeringContext
) -> list[tuple[str, Any]]:
    """``(hook name, hook function)`` for every site of every steering, in the steerings' order; each
    function takes and returns the residual (TransformerLens' signature) and records into ``ctx``."""
    return [
        (name, _make_hook(s, i, layer_of(name), ctx, s.norm_limit(j)))
        for i, s in enumerate(steerings)
        for j, name in enumerate(s.hook_names(model))
    ]


def plain_steerable(model: Bridge, steerings: Sequence[Steering]) -> bool:
    """Whether every site of every steering is a decoder layer's input or output (hookable on the plain view)."""
    return all(site_of(name) in PLAIN_SITES for s in steerings for name in s.hook_names(model))


@contextmanager
def steer_plain(
    model: Bridge, view: PlainView, *steerings: Steering, context: SteeringContext
) -> Iterator[SteeringContext]:
    """:func:`steer` on the model's :class:`~lensteer.core.plain.PlainView`: the same hook functions as
    PyTorch hooks on the decoder layers (``resid_pre``: a pre-hook on the layer's input; ``resid_post``:
    a hook on its output), so they run in the order the bridge's hook points would. Removed on exit,
    error or not. Callers check :func:`plain_steerable` first."""
    handles: list[Any] = []
    with model_lock(model), _removing(handles):
        for name, fn in steering_hooks(model, steerings, context):
            layer = view.layers[layer_of(name)]
            if site_of(name) == "resid_pre":
                handles.append(layer.register_forward_pre_hook(_on_input(fn), with_kwargs=True))
            else:
                handles.append(layer.register_forward_hook(_on_output(fn)))
        yield context


@contextmanager
def _removing(handles: list[Any]) -> Iterator[None]:
    """Remove every hook handle in ``handles`` on exit, error or not."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _on_input(fn: Any) -> Any:
    def pre_hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:  # noqa: ARG001
        if args:
            return (fn(args[0], None), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"], None)}

    return pre_hook


def _on_output(fn: Any) -> Any:
    def hook(module: Any, args: Any, output: Any) -> Any:  # noqa: ARG001
        if isinstance(output, torch.Tensor):
            return fn(output, None)
        return (fn(output[0], None), *output[1:])  # older transformers: (hidden_states, ...)

    return hook


@contextmanager
def steer(
    model: Bridge, *steerings: Steering, context: SteeringContext | None = None
) -> Iterator[SteeringContext]:
    """Apply steerings to ``model`` for the body of a ``with`` block; yields the :class:`SteeringContext`.

    Example::

        with lensteer.steer(model, steering) as ctx:
            logits = model(tokens)
        ctx.fired_share()

    Several steerings compose (their hooks run in the order given); contexts nest. Hooks are
    removed on exit, also when the body raises. Everything is validated before any hook is added.

    Raises:
        ArtifactMismatchError: A steering vector's width differs from the model's ``d_model``.
        HookSiteError: A layer or site the model lacks.
    """
    if not steerings:
        raise ConfigError("steer() needs at least one Steering")
    for s in steerings:
        if not isinstance(s, Steering):
            raise ConfigError(f"steer() takes Steering values, got {type(s).__name__}")
    ctx = context if context is not None else SteeringContext()
    hooks = steering_hooks(model, steerings, ctx)

    def read_mask(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:  # noqa: ARG001
        ctx.seen_mask = kwargs.get("attention_mask")

    with model_lock(model):  # no call in another thread runs under these hooks
        # a plain PyTorch pre-hook that only reads the mask; removed with the steering hooks, error or not
        reader = (
            model.register_forward_pre_hook(read_mask, with_kwargs=True)
            if hasattr(model, "register_forward_pre_hook")
            else None
        )
        try:
            with model.hooks(fwd_hooks=hooks):
                yield ctx
        finally:
            if reader is not None:
                reader.remove()
            ctx.seen_mask = None
