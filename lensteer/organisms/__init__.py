"""organisms: misaligned model organisms, fine-tuned with LoRA on our own data, saved with provenance.

``lensteer organism train dishonest --out organisms/dishonest`` (or :func:`train_organism`) trains one;
:func:`load_organism` gives it back as a TransformerLens bridge that every lensteer function takes.
Sits after ``evaluate`` and before ``study``; imports ``core`` (``peft`` and ``transformers`` on demand).
"""

from lensteer.organisms.recipes import (
    RECIPES,
    LoraSettings,
    Recipe,
    TrainingRow,
    advice_rows,
    get_recipe,
    rows_hash,
)
from lensteer.organisms.train import (
    Organism,
    encode_rows,
    load_organism,
    merged_hf_model,
    read_provenance,
    train_organism,
    weights_hash,
)

__all__ = [
    "RECIPES", "LoraSettings", "Organism", "Recipe", "TrainingRow", "advice_rows", "encode_rows", "get_recipe",
    "load_organism", "merged_hf_model", "read_provenance", "rows_hash", "train_organism", "weights_hash",
]
