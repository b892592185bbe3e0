"""Builders for tests: tiny models, tokenizers and planted directions (library code never imports this)."""

import json
import string
from pathlib import Path

import torch

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]
CHAT_TEMPLATE = (
    "<s>{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_char_tokenizer(folder: Path):
    """A character-level fast tokenizer with a chat template, saved to disk and reloaded by path
    (TransformerLens reloads tokenizers by ``name_or_path``)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    chars = sorted(set(string.printable) - set("\x0b\x0c"))
    vocab = {tok: i for i, tok in enumerate(SPECIALS + chars)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=SPECIALS[4:],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    (folder / "lensteer_test.json").write_text(json.dumps({"vocab_size": len(vocab)}))
    return AutoTokenizer.from_pretrained(folder)


def make_tiny_bridge(seed: int = 0, n_layers: int = 4):
    """A 4-layer native bridge (d_model 32): tokens only, no tokenizer."""
    from transformer_lens import TransformerBridge
    from transformer_lens.config import TransformerBridgeConfig

    cfg = TransformerBridgeConfig(
        d_model=32,
        d_head=8,
        n_heads=4,
        n_layers=n_layers,
        n_ctx=64,
        d_vocab=64,
        d_mlp=64,
        act_fn="gelu",
        seed=seed,
    )
    return TransformerBridge.boot_native(cfg, device="cpu").eval()


def make_tiny_llama_bridge(tokenizer, seed: int = 0):
    """A 2-layer random Llama (RMSNorm, RoPE, GQA) through TransformerLens' real HF adapter."""
    from transformer_lens import TransformerBridge
    from transformers import LlamaConfig, LlamaForCausalLM

    gen = torch.random.fork_rng()
    with gen:
        torch.random.default_generator.manual_seed(seed)
        hf = LlamaForCausalLM(
            LlamaConfig(
                num_hidden_layers=2,
                hidden_size=32,
                intermediate_size=64,
                num_attention_heads=4,
                num_key_value_heads=2,
                vocab_size=len(tokenizer),
                max_position_embeddings=1024,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        ).eval()
    return TransformerBridge.boot_transformers(
        "tiny-llama", hf_model=hf, tokenizer=tokenizer, device="cpu"
    ).eval()


def make_tiny_family_bridge(tokenizer, family: str, seed: int = 0):
    """A 2-layer random model of another Hugging Face family (``"qwen2"``: QKV biases; ``"gemma"``: scaled
    embeddings, (1 + w) RMSNorm; ``"gpt2"``: LayerNorm, learned positions, fused QKV) through TL's adapter."""
    import transformers as tf
    from transformer_lens import TransformerBridge

    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "vocab_size": len(tokenizer),
    }
    if family == "gpt2":
        config, cls = (
            tf.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=256, **special),
            tf.GPT2LMHeadModel,
        )
    else:
        config_cls, cls = {
            "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
            "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM),
        }[family]
        config = config_cls(
            num_hidden_layers=2,
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=1024,
            **special,
        )
    with torch.random.fork_rng():
        torch.random.default_generator.manual_seed(seed)
        hf = cls(config).eval()
    return TransformerBridge.boot_transformers(
        f"tiny-{family}", hf_model=hf, tokenizer=tokenizer, device="cpu"
    ).eval()


def random_unit(d_model: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(d_model, generator=g)
    return v / v.norm()


def planted_probe_report(shifts: list[float]):
    """A probing report over ``len(shifts)`` layers of 8-dim activations where layer ``k`` separates the
    classes by ``shifts[k]`` along one planted direction (60 examples per class and split)."""
    import lensteer

    g = torch.Generator().manual_seed(0)
    u = random_unit(8, seed=3)
    acts = {}
    for split in ("train", "val", "test"):
        acts[f"pos_{split}"] = (
            torch.randn(60, len(shifts), 8, generator=g) + torch.tensor(shifts)[None, :, None] * u
        )
        acts[f"neg_{split}"] = torch.randn(60, len(shifts), 8, generator=g)
    return lensteer.locate.probe_layers(acts, layers=list(range(len(shifts))), n_boot=50)


# issue 28's report.json contract: the fields of every site-choice candidate
CANDIDATE_CONTRACT = {
    "source",
    "layer",
    "position",
    "decision_shift",
    "decision_shift_ci",
    "val_trait",
    "kl_heldout",
    "ablation_kl",
    "from_patching",
}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def save_tiny_llama_folder(folder, tokenizer, **config):
    """A random Llama (fixed seed; 2 layers of width 16 unless ``config`` says otherwise) saved with
    ``tokenizer`` as a Hugging Face folder, loadable by path."""
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = {
        "num_hidden_layers": 2,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
    }
    with torch.random.fork_rng():  # fixed weights, whatever ran before (unseeded weights made a test flaky)
        torch.random.default_generator.manual_seed(0)
        hf = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), **{**shape, **config}))
    hf.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
