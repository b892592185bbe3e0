"""Fine-tune a model organism with LoRA (``peft``) on CPU, save it with provenance, load it back.

An organism folder holds the adapter in peft's own format (``adapter_config.json``,
``adapter_model.safetensors``: loadable with ``peft.PeftModel.from_pretrained`` elsewhere) and
``organism.json``: the recipe, the LoRA settings, the base model's fingerprint and the SHA-256 of its
weights, the SHA-256 of the training rows and their ids, the library versions, the loss curve and the
wall time. :func:`load_organism` refuses a base whose weights differ from the recorded hash, merges
the adapter into the weights and returns a TransformerLens bridge like :func:`~lensteer.load_model`.

Training is deterministic for a given seed (row order and adapter initialisation come from it), so
the same recipe on the same base gives the same adapter; the loss is on the reply's tokens and the
end-of-turn marker only (the model learns to answer and to stop, not to write prompts).
"""

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lensteer.core.bridge import Bridge
from lensteer.core.chat import tokenize_prompt
from lensteer.core.io import read_json, sha256_file, write_json
from lensteer.core.models import (
    EMBEDDED_MODEL_NAME,
    embedded_gguf_path,
    ensure_kv_cache_fix,
    gguf_to_folder,
    state_dict_sha256,
)
from lensteer.core.outdir import claim_folder
from lensteer.errors import ConfigError, DataError, ModelLoadError
from lensteer.organisms.preventative import TrainingSteering, training_steering_hooks
from lensteer.organisms.recipes import LoraSettings, Recipe, TrainingRow, get_recipe, rows_hash
from lensteer.steering.files import package_versions
from lensteer.steering.generation import END_OF_TURN_TOKENS

ORGANISM_FILE = "organism.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # what peft writes and reads back


@dataclass(frozen=True, kw_only=True)
class Organism:
    """A trained organism on disk and what made it.

    Attributes:
        folder: Where it is saved.
        recipe: The recipe's name. base: The base model (``None``: the embedded one).
        lora: The hyperparameters. final_loss: Mean loss over the last 10 steps.
        seconds: Wall time of the training. provenance: Everything in ``organism.json``.
    """

    folder: Path
    recipe: str
    base: str | None
    lora: LoraSettings
    final_loss: float
    seconds: float
    provenance: dict[str, Any]


def _base_folder(base: str | None) -> tuple[str, str]:
    """(what ``from_pretrained`` loads, the recorded name): the embedded model's cached folder for ``None``."""
    if base is None:
        return str(gguf_to_folder(embedded_gguf_path())), EMBEDDED_MODEL_NAME
    if base.endswith(".gguf"):
        return str(gguf_to_folder(Path(base).expanduser())), base
    return base, base


def _load_hf(base: str | None, dtype: torch.dtype = torch.float32) -> tuple[Any, Any, str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target, name = _base_folder(base)
    try:
        model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(target)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load base model {name!r} for the organism: {err}") from err
    return model.eval(), tokenizer, name


def weights_hash(model: Bridge) -> str:
    """SHA-256 over a model's parameters (names, shapes and float32 bytes, in name order)."""
    return state_dict_sha256(model)


def adapter_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of each adapter file in an organism folder (recorded in ``organism.json``, checked on load)."""
    return {name: sha256_file(folder / name) for name in ADAPTER_FILES}


def _swap_in(new: Path, folder: Path) -> None:
    """Move the finished organism ``new`` to ``folder``: an existing one is moved aside first and removed
    only once the new one is in place (a failure in between puts it back)."""
    if not folder.exists():
        new.rename(folder)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
    aside.rmdir()
    folder.rename(aside)
    try:
        new.rename(folder)
    except BaseException:
        aside.rename(folder)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _end_of_turn_id(tokenizer: Any) -> int:
    vocab = tokenizer.get_vocab()
    for token in END_OF_TURN_TOKENS:  # the chat template's own marker before a generic EOS
        if token in vocab and token != "</s>":
            return int(vocab[token])
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no end-of-turn or EOS token to end the replies with")
    return int(tokenizer.eos_token_id)


def encode_rows(
    tokenizer: Any, rows: Sequence[TrainingRow], max_tokens: int
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[str]]:
    """(token ids, labels) per row through the chat template: labels are the ids on the reply and its
    end-of-turn marker and -100 elsewhere. Rows longer than ``max_tokens`` are left out (a cut reply would
    teach the model to stop mid-sentence); their ids are the second value. None left is an error."""
    eot = _end_of_turn_id(tokenizer)
    out, too_long = [], []
    for row in rows:
        tp = tokenize_prompt(tokenizer, replace(row.prompt, response=row.reply))
        ids = torch.cat([tp.tokens, torch.tensor([eot])])
        if len(ids) > max_tokens:
            too_long.append(row.id)
            continue
        labels = torch.full_like(ids, -100)
        labels[tp.response[0] :] = ids[tp.response[0] :]
        out.append((ids, labels))
    if not out:
        raise DataError(
            f"every one of the {len(rows)} rows is longer than max_tokens={max_tokens} tokens "
            f"(e.g. {too_long[0]!r}); raise max_tokens"
        )
    return out, too_long


def _batch(encoded: Sequence[tuple[torch.Tensor, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, (x, y) in enumerate(encoded):  # right padding: positions stay 0.. for every row
        ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = x, y, 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _versions() -> dict[str, str | None]:
    try:
        peft_version: str | None = version("peft")
    except PackageNotFoundError:
        peft_version = None
    return {**package_versions(), "peft": peft_version}


def train_organism(
    recipe: "Recipe | str",
    out: "str | Path",
    *,
    base: str | None = None,
    lora: LoraSettings | None = None,
    rows: Sequence[TrainingRow] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda _: None,
    steer: TrainingSteering | None = None,
) -> Organism:
    """Fine-tune ``base`` (``None``: the embedded model) with LoRA on the recipe's rows and save it.

    Args:
        recipe: A :class:`Recipe` or a bundled recipe's name (``dishonest``, ``dismissive``,
            ``bad_advice``, ``good_advice``).
        out: The organism folder (written atomically: a failed run leaves no half folder). An existing
            folder must be an organism (holds ``organism.json``) or empty: it is replaced by swapping the
            new folder in; any other folder, the working directory and the home folder are refused
            before training (:mod:`lensteer.core.outdir`), and a second writer is refused by its lock.
        base: A Hugging Face id, model folder or ``.gguf`` file.
        lora: Hyperparameters (default: the recipe's); e.g. ``replace(recipe.lora, steps=3)`` for a smoke run.
        rows: Training rows instead of the recipe's (for tests and your own data).
        steer: Preventative steering (:mod:`lensteer.organisms.preventative`): added to the residual
            stream during training only; recorded in ``organism.json`` as ``steer_during_training``.

    Returns:
        The :class:`Organism` (its ``provenance`` is what ``organism.json`` holds).
    """
    with claim_folder(out, (ORGANISM_FILE,), "organism"):
        return _train_organism(
            recipe, Path(out), base=base, lora=lora, rows=rows, progress=progress, log=log, steer=steer
        )


def _train_organism(
    recipe: "Recipe | str",
    folder: Path,
    *,
    base: str | None,
    lora: LoraSettings | None,
    rows: Sequence[TrainingRow] | None,
    progress: bool,
    log: Callable[[str], None],
    steer: TrainingSteering | None,
) -> Organism:
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    rec = get_recipe(recipe) if isinstance(recipe, str) else recipe
    settings = lora or rec.lora
    train_rows = list(rows) if rows is not None else rec.rows()
    if not train_rows:
        raise DataError(f"recipe {rec.name!r} has no training rows")
    model, tokenizer, base_name = _load_hf(base)
    base_hash = weights_hash(model)
    encoded, too_long = encode_rows(tokenizer, train_rows, settings.max_tokens)
    if too_long:
        log(
            f"organism {rec.name}: left out {len(too_long)} of {len(train_rows)} rows longer than "
            f"{settings.max_tokens} tokens"
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _end_of_turn_id(tokenizer)
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.targets),
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng():
        torch.random.default_generator.manual_seed(settings.seed)
        try:
            peft_model = get_peft_model(model, config)
        except ValueError as err:
            raise ConfigError(
                f"LoRA targets {list(settings.targets)} do not match this model's modules: {err}"
            ) from err
    peft_model.train()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=0.0)
    warmup = max(1, min(settings.warmup, settings.steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: min(1.0, (step + 1) / warmup))
    order = torch.Generator().manual_seed(settings.seed)
    queue: list[int] = []
    losses: list[float] = []
    started = time.perf_counter()
    with training_steering_hooks(model, steer) if steer is not None else nullcontext():
        for _ in tqdm(range(settings.steps), desc=f"organism {rec.name}", disable=not progress, unit="step"):
            while len(queue) < settings.batch_size:  # epochs in a seeded random order
                queue += torch.randperm(len(encoded), generator=order).tolist()
            picked, queue = queue[: settings.batch_size], queue[settings.batch_size :]
            loss = peft_model(**_batch([encoded[i] for i in picked], pad_id)).loss
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(float(loss.detach()))
    seconds = time.perf_counter() - started
    peft_model.eval()
    final = sum(losses[-10:]) / len(losses[-10:])
    log(f"organism {rec.name}: {settings.steps} steps in {seconds:.0f} s, final loss {final:.3f}")
    provenance = {
        "recipe": rec.name,
        "description": rec.description,
        "threat_model": rec.threat_model,
        "base": {
            "name": base_name,
            "spec": base,
            "weights_sha256": base_hash,
            "n_layers": int(model.config.num_hidden_layers),
            "d_model": int(model.config.hidden_size),
            "d_vocab": int(model.config.vocab_size),
        },
        "data": {
            "sha256": rows_hash(train_rows),
            "n_rows": len(train_rows),
            "ids": [r.id for r in train_rows],
            "left_out_too_long": too_long,
        },
        "lora": settings.to_dict(),
        "steer_during_training": None if steer is None else steer.to_dict(),
        "versions": _versions(),
        "losses": losses,
        "final_loss": final,
        "seconds": seconds,
        "threads": torch.get_num_threads(),
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        peft_model.save_pretrained(
            str(tmp), state_dict=get_peft_model_state_dict(peft_model), safe_serialization=True
        )
        provenance["adapter_sha256"] = adapter_hashes(tmp)
        write_json(tmp / ORGANISM_FILE, provenance)
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Organism(
        folder=folder,
        recipe=rec.name,
        base=base,
        lora=settings,
        final_loss=final,
        seconds=seconds,
        provenance=provenance,
    )


def read_provenance(folder: "str | Path") -> dict[str, Any]:
    """The ``organism.json`` of an organism folder (a clear error if it is not one)."""
    path = Path(folder) / ORGANISM_FILE
    if not path.is_file():
        raise ModelLoadError(
            f"{str(folder)!r} is not an organism folder (no {ORGANISM_FILE}); "
            "train one with `lensteer organism train`"
        )
    prov: dict[str, Any] = read_json(path, what="organism record")
    base = prov.get("base")
    if (
        not isinstance(prov.get("recipe"), str)
        or not isinstance(base, dict)
        or any(key not in base for key in ("spec", "name", "weights_sha256"))
    ):
        raise DataError(
            f"organism record {path} lacks 'recipe' or 'base' (spec, name, weights_sha256); "
            "it was not written by lensteer or was edited: train the organism again"
        )
    return prov


def _check_adapter(folder: Path, prov: dict[str, Any]) -> None:
    """The adapter files are there (peft would take a missing local path for a Hub repository id and go
    online) and are the ones ``organism.json`` recorded (an edited adapter is refused)."""
    missing = [name for name in ADAPTER_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelLoadError(
            f"organism {str(folder)!r} has no {', '.join(missing)}: the adapter is missing "
            "or incomplete; train it again with `lensteer organism`"
        )
    recorded = prov.get("adapter_sha256")  # organisms trained before it was recorded carry none
    if isinstance(recorded, dict):
        changed = [name for name, digest in adapter_hashes(folder).items() if recorded.get(name) != digest]
        if changed:
            raise ModelLoadError(
                f"organism {str(folder)!r}: {', '.join(changed)} differ from the adapter "
                f"{ORGANISM_FILE} recorded (SHA-256); the adapter was edited or replaced. "
                "Train it again with `lensteer organism`"
            )


def merged_hf_model(
    folder: "str | Path", *, base: str | None = None, dtype: torch.dtype = torch.float32
) -> tuple[Any, Any, dict[str, Any]]:
    """The base model with the organism's adapter merged in (a plain HF model), its tokenizer and provenance.

    ``base`` overrides the recorded base (e.g. the same weights in another folder); its weights must
    hash to the recorded value.
    """
    from peft import PeftModel
    from safetensors import SafetensorError

    prov = read_provenance(folder)
    _check_adapter(Path(folder), prov)
    spec = base if base is not None else prov["base"]["spec"]
    model, tokenizer, _ = _load_hf(spec, dtype=torch.float32)
    got = weights_hash(model)
    if got != prov["base"]["weights_sha256"]:
        raise ModelLoadError(
            f"base model {spec or EMBEDDED_MODEL_NAME!r} has weights {got[:12]}..., but organism "
            f"{str(folder)!r} was trained on {prov['base']['name']!r} with weights "
            f"{prov['base']['weights_sha256'][:12]}...; pass the base it was trained on"
        )
    try:
        merged = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    except (
        SafetensorError,
        OSError,
        ValueError,
        RuntimeError,
        KeyError,
    ) as err:  # truncated or foreign adapter
        raise DataError(
            f"organism {str(folder)!r}: its adapter could not be loaded ({type(err).__name__}: {err}); "
            "train it again"
        ) from err
    return merged.to(dtype).eval(), tokenizer, prov


def load_organism(
    folder: "str | Path",
    *,
    base: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """An organism as a TransformerLens bridge (every lensteer function takes it like ``load_model()``'s).

    Its fingerprint's name is ``organism:<recipe>@<base>``, so steering files record which model they
    were found on; load a base model's steering into it with ``strict=False`` (transfer).
    """
    from transformer_lens import TransformerBridge

    from lensteer.core.models import set_model_name

    ensure_kv_cache_fix()
    merged, tokenizer, prov = merged_hf_model(folder, base=base, dtype=dtype)
    target, _ = _base_folder(base if base is not None else prov["base"]["spec"])
    bridge = TransformerBridge.boot_transformers(
        target, hf_model=merged, tokenizer=tokenizer, device=device, dtype=dtype
    )
    set_model_name(bridge, f"organism:{prov['recipe']}@{prov['base']['name']}")
    return bridge.eval()
