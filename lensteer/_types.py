"""jaxtyping aliases: the one dimension vocabulary (TransformerLens names) used across lensteer."""

from typing import TypeAlias

import torch
from jaxtyping import Bool, Float, Int

Tokens: TypeAlias = Int[torch.Tensor, "batch pos"]
AttentionMask: TypeAlias = Int[torch.Tensor, "batch pos"]
Resid: TypeAlias = Float[torch.Tensor, "batch pos d_model"]
Logits: TypeAlias = Float[torch.Tensor, "batch pos d_vocab"]
ReadActs: TypeAlias = Float[torch.Tensor, "n_prompts d_model"]
DirectionVec: TypeAlias = Float[torch.Tensor, " d_model"]
Labels: TypeAlias = Bool[torch.Tensor, " n_prompts"]

__all__ = ["AttentionMask", "DirectionVec", "Labels", "Logits", "ReadActs", "Resid", "Tokens"]
