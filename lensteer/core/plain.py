"""A plain Hugging Face view of a bridge: the same modules and the same weights, without the wrappers.

``TransformerBridge`` wraps every Hugging Face module in a component with hook points, and each call
passes through their Python. Decoding calls the model once per token on a tiny input, so that Python
is a large share of the step: at batch 1 on CPU the bridge decodes at ~0.75x raw Hugging Face
``generate`` (``benchmarks/RESULTS.md``). :func:`plain_view` returns the model's own Hugging Face
module tree with each bridge component replaced by the module it wraps. Every parameter and buffer
is shared (no copy, no extra memory; ``.to()`` and in-place weight edits reach both), so the view
computes what the bridge computes; the parity tests hold decoding through it to the bridge's, token
for token.

:func:`lensteer.generate` decodes through the view when it can prove nothing is lost: every steering
sits on ``resid_pre`` / ``resid_post`` (a decoder layer's input or output), no hook of any kind is on
the bridge (a user's ``model.hooks()`` or ``steer()`` block around the call keeps the bridge path),
compatibility mode (folded, processed weights) is off, and no module's ``forward`` was rebound
(accelerate's ``device_map`` dispatch does that: such models decode through the bridge). ``LENSTEER_DECODE=bridge`` in the
environment turns the view off.
"""

import copy
import inspect
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, cast
from weakref import WeakKeyDictionary

import torch
from jaxtyping import Float, Int
from torch import nn

from lensteer.core.bridge import Bridge

MIN_SHARED_PREFIX = 16  # tokens; below this, a separate prefix forward does not pay
PLAIN_SITES = ("resid_pre", "resid_post")  # the decoder layer's input and output: hookable on the plain view
_VIEWS: "WeakKeyDictionary[Any, PlainView | None]" = WeakKeyDictionary()
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


@dataclass(frozen=True, eq=False)
class PlainView:
    """The unwrapped causal LM (``module``) and its decoder layers in order (``layers[k]`` is block ``k``)."""

    module: nn.Module
    layers: tuple[nn.Module, ...]
    keeps_last: bool  # the module takes ``logits_to_keep``

    def forward(
        self,
        tokens: Int[torch.Tensor, "batch new"],
        attention_mask: Int[torch.Tensor, "batch total"],
        cache: Any,
        *,
        last_only: bool,
    ) -> tuple[torch.Tensor, Any]:
        """One cached forward over the new ``tokens`` (``attention_mask`` spans the cache and them), as
        the bridge's ``return_type="logits_and_cache"``: ``(logits, cache)``; ``last_only`` unembeds
        only the last position (``[batch, 1, d_vocab]``)."""
        keep = {"logits_to_keep": 1 if last_only else 0} if self.keeps_last else {}
        out = self.module(
            input_ids=tokens,
            attention_mask=attention_mask,
            position_ids=mask_positions(attention_mask, tokens.shape[1]),
            past_key_values=cache,
            use_cache=True,
            **keep,
        )
        logits = out.logits if self.keeps_last or not last_only else out.logits[:, -1:]
        return logits, out.past_key_values

    def final_normalized(
        self,
        tokens: Int[torch.Tensor, "batch new"],
        attention_mask: Int[torch.Tensor, "batch total"],
        cache: Any,
    ) -> Float[torch.Tensor, "batch new d_model"]:
        """The unembedding's input (after the final norm) for the new ``tokens``, from a cached forward of
        the base model (no logits: a teacher-forced pass unembeds only the positions it reads)."""
        base = cast(nn.Module, self.module.base_model)
        out = base(
            input_ids=tokens,
            attention_mask=attention_mask,
            position_ids=mask_positions(attention_mask, tokens.shape[1]),
            past_key_values=cache,
            use_cache=True,
        )
        return cast(torch.Tensor, out.last_hidden_state)


def plain_view(model: Bridge) -> "PlainView | None":
    """The plain view of ``model`` if decoding may use it now, else ``None`` (see the module docstring).

    Built once per bridge (cached weakly); the checks for hooks, compatibility mode and rebound forwards
    run every call.
    """
    if os.environ.get("LENSTEER_DECODE", "").lower() == "bridge":
        return None
    if model not in _VIEWS:
        _VIEWS[model] = _build(model)
    view = _VIEWS[model]
    if view is None or _has_hooks(model) or _compatibility_mode(model) or _rebound(model.original_model):
        return None
    return view


def mask_positions(
    attention_mask: Int[torch.Tensor, "batch total"], n_new: int
) -> Int[torch.Tensor, "batch new"]:
    """Position ids of the last ``n_new`` columns from the attention mask (over the cache and the new
    tokens): each real token's index among its row's real tokens, as Hugging Face ``generate`` and the
    bridge derive them for left padding; padding gets 1 (masked, never attended)."""
    pos = attention_mask.long().cumsum(-1) - 1
    pos.masked_fill_(attention_mask == 0, 1)
    return pos[:, -n_new:]


def common_prefix(tokens: Int[torch.Tensor, "batch pos"], attn: Int[torch.Tensor, "batch pos"]) -> int:
    """How many leading real tokens every row of a left-padded batch shares (a system prompt, few-shot
    turns), leaving each row at least one token of its own."""
    lens = attn.sum(1).cpu()
    pads = tokens.shape[1] - lens
    shortest = int(lens.min())
    if shortest <= 1:
        return 0
    real = torch.stack(
        [tokens[b, int(pads[b]) : int(pads[b]) + shortest - 1].cpu() for b in range(tokens.shape[0])]
    )
    return int((real == real[:1]).all(0).long().cumprod(0).sum())


def relay_after_prefix(
    tokens: Int[torch.Tensor, "batch pos"], attn: Int[torch.Tensor, "batch pos"], prefix: int
) -> tuple[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"]]:
    """A left-padded batch re-laid as ``[prefix][pads][rest]`` (tokens, mask): padding moves to just after
    the ``prefix`` every row shares, so the prefix runs once; masked, with positions from the mask
    (:func:`mask_positions`), the layout gives the same states as left padding, and every token after
    the prefix keeps its column."""
    pads = (tokens.shape[1] - attn.sum(1)).tolist()
    rows, masks = [], []
    for b, k in enumerate(pads):
        own = tokens[b, k:]
        rows.append(torch.cat([own[:prefix], tokens[b, :k], own[prefix:]]))
        masks.append(torch.cat([attn[b, k : k + prefix], attn[b, :k], attn[b, k + prefix :]]))
    return torch.stack(rows), torch.stack(masks)


def share_cache(cache: Any, rows: "int | Int[torch.Tensor, ' batch']") -> bool:
    """Copy a KV cache's rows in place: a batch-1 cache to ``rows`` rows (an int), or row ``rows[b]`` of
    the cache to row ``b`` (a tensor of row indices: one prefix per group of rows). ``False`` (nothing
    changed) if it is not a transformers cache whose keys and values can be copied across rows."""
    layers = getattr(cache, "layers", None)
    if not layers or not all(
        getattr(layer, "keys", None) is not None and getattr(layer, "values", None) is not None
        for layer in layers
    ):
        return False
    for layer in layers:
        if isinstance(rows, int):
            layer.keys = layer.keys.expand(rows, *layer.keys.shape[1:]).contiguous()
            layer.values = layer.values.expand(rows, *layer.values.shape[1:]).contiguous()
        else:
            layer.keys, layer.values = layer.keys[rows], layer.values[rows]
    return True


def _build(model: Bridge) -> "PlainView | None":
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
    from transformer_lens.utilities.position_ids import accepts_mask_derived_position_ids
    from transformers import PreTrainedModel

    root, blocks = getattr(model, "original_model", None), getattr(model, "blocks", None)
    if not isinstance(root, PreTrainedModel) or blocks is None or len(blocks) == 0:
        return None
    originals = [getattr(b, "original_component", None) for b in blocks]
    if any(o is None for o in originals):
        return None
    copies: dict[int, nn.Module] = {}

    def unwrap(mod: nn.Module) -> nn.Module:
        while isinstance(mod, GeneralizedComponent):
            mod = cast(nn.Module, mod.original_component)  # set for every component of a booted bridge
        if id(mod) in copies:
            return copies[id(mod)]
        new = copy.copy(mod)  # shares _parameters and _buffers: the same tensors
        for name in _HOOK_DICTS:  # its own (empty) hooks: the view's steering never reaches the bridge
            if hasattr(mod, name):
                setattr(new, name, OrderedDict())
        new._modules = {k: (None if c is None else unwrap(c)) for k, c in mod._modules.items()}
        copies[id(mod)] = new
        return new

    if not accepts_mask_derived_position_ids(root):
        return None  # the model derives its own positions (mRoPE, fairseq-style): only the bridge knows how
    module = unwrap(root)
    if any(isinstance(m, GeneralizedComponent) for m in module.modules()):
        return None
    if {id(p) for p in module.parameters()} != {id(p) for p in root.parameters()}:
        return None  # the bridge holds weights of its own (GPT-2's split QKV): only it knows what it computes
    layers = tuple(copies.get(id(o)) for o in originals)
    if any(layer is None for layer in layers):
        return None
    keeps_last = "logits_to_keep" in inspect.signature(module.forward).parameters
    return PlainView(module=module, layers=layers, keeps_last=keeps_last)  # type: ignore[arg-type]


def _has_hooks(model: Bridge) -> bool:
    return bool(foreign_hooks(model))


def foreign_hooks(module: "nn.Module | Bridge") -> list[str]:
    """Names of the submodules of ``module`` that carry a hook of anyone's (a user's, TransformerLens'
    hook points, ``steer()``) except the two kinds libraries keep for themselves and that change nothing
    here: the capture hooks TransformerLens' blocks wire on first use (they feed its own hook points) and
    the output-capturing hooks transformers installs on first forward (inactive unless hidden states
    or attentions are requested)."""
    own = {h.id for m in module.modules() for h in getattr(m, "_capture_hook_handles", ())}

    def foreign(hooks: Any) -> bool:
        return any(
            key not in own and "output_capturing_hook" not in getattr(fn, "__qualname__", "")
            for key, fn in hooks.items()
        )

    return [
        name
        for name, m in module.named_modules()
        if foreign(m._forward_hooks)
        or foreign(m._forward_pre_hooks)
        or m._backward_hooks
        or m._backward_pre_hooks
    ]


def _rebound(root: nn.Module) -> bool:
    """Whether accelerate's ``device_map`` dispatch (or anyone) rebound a module's ``forward`` to the
    original module: the view's copy would call the original, past the view's hooks."""
    return any("forward" in vars(m) or hasattr(m, "_hf_hook") for m in root.modules())


def _compatibility_mode(model: Bridge) -> bool:
    return any(getattr(m, "compatibility_mode", False) for m in model.modules())
