"""The model type of lensteer's signatures: what lensteer reads from a ``TransformerBridge``.

Every function that takes a model takes a :data:`Bridge`. It is a structural type (a
``typing.Protocol``, :class:`BridgeProtocol`): ``transformer_lens.TransformerBridge`` satisfies it without knowing about it, and
so does a test double that carries the same members. It names the surface lensteer depends on, so a
TransformerLens change that touches it is found by mypy, not by a run:

- ``cfg`` (``n_layers``, ``d_model``, ``n_heads``, ``d_vocab``), ``tokenizer`` (a Hugging Face tokenizer);
- ``hook_dict`` (hook name to hook point) and ``hooks(fwd_hooks=..., bwd_hooks=...)`` (a ``with`` block);
- calling the model (``model(tokens, attention_mask=...)`` returns logits) and ``run_with_cache``;
- ``blocks``, ``ln_final``, ``W_U`` / ``b_U`` (the incremental patching engine and the unembedding);
- ``parameters()`` (for the device), ``eval()``, ``training``, ``modules()`` / ``named_modules()``,
  ``original_model`` (the wrapped Hugging Face model the plain decoding view runs).

Members are typed loosely (``Any`` where TransformerLens itself is loose): the protocol documents and
checks which names are used; the tensor shapes are checked where they are read.
"""

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import torch

HookFn: TypeAlias = Callable[..., Any]
"""A TransformerLens hook: ``fn(tensor, hook) -> tensor | None``."""
HookList: TypeAlias = list[tuple[str, HookFn]]
"""``[(hook name, hook function), ...]`` as ``Bridge.hooks(fwd_hooks=...)`` takes it."""


class BridgeProtocol(Protocol):
    """A loaded language model as lensteer uses it (``transformer_lens.TransformerBridge``)."""

    @property
    def cfg(self) -> Any:
        """Model config: ``n_layers``, ``d_model``, ``n_heads``, ``d_vocab``, ``device``."""

    @property
    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer (``encode``, ``decode``, ``apply_chat_template``, ``pad_token_id``)."""

    @property
    def hook_dict(self) -> Any:
        """Hook name to hook point, for the names :mod:`lensteer.core.sites` spells."""

    @property
    def blocks(self) -> Any:
        """The transformer blocks, indexable by layer."""

    @property
    def ln_final(self) -> Any:
        """The final norm (the unembedding's input is its output)."""

    @property
    def W_U(self) -> torch.Tensor:
        """Unembedding matrix ``[d_model, d_vocab]``."""

    @property
    def training(self) -> bool:
        """``True`` in training mode (dropout on); lensteer refuses to read activations then."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Forward pass: ``model(tokens, attention_mask=...)`` returns logits ``[batch, pos, d_vocab]``."""

    def hooks(self, *args: Any, **kwargs: Any) -> AbstractContextManager[Any]:
        """A ``with`` block that installs ``fwd_hooks`` (a :data:`HookList`) and removes them on exit."""

    def run_with_cache(self, *args: Any, **kwargs: Any) -> Any:
        """Forward pass returning ``(logits, cache)`` of the hooks selected by ``names_filter``."""

    def parameters(self, recurse: bool = ...) -> Iterator[torch.nn.Parameter]:
        """The weights (lensteer reads the first one's device)."""

    @property
    def original_model(self) -> torch.nn.Module:
        """The wrapped Hugging Face model (the plain decoding view runs it directly)."""

    def modules(self) -> Iterator[torch.nn.Module]:
        """Every submodule (lensteer looks for compatibility-mode components)."""

    def named_modules(self) -> Iterator[tuple[str, torch.nn.Module]]:
        """Every submodule with its name (lensteer looks for hooks it did not install)."""

    def eval(self) -> Any:
        """Switch to evaluation mode (returns the model)."""


if TYPE_CHECKING:
    Bridge: TypeAlias = BridgeProtocol
else:
    # At run time the annotation is ``Any``: the tests' runtime checker (beartype) would otherwise need a
    # ``runtime_checkable`` protocol, whose isinstance test evaluates every property (``W_U`` builds a
    # tensor) on each call and refuses the small stand-ins tests pass for a model.
    Bridge: TypeAlias = Any
"""The model type of lensteer's signatures (:class:`BridgeProtocol` to the type checker)."""

__all__ = ["Bridge", "BridgeProtocol", "HookFn", "HookList"]
