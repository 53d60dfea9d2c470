"""Hugging Face checkpoints: the tiny model this project builds, and loading any causal LM.

The tiny model is a Llama-architecture `LlamaForCausalLM` (vLLM supports it) over a byte-level
tokenizer made with `tokenizers` (256 byte symbols plus five special tokens, no merges), saved
as a `PreTrainedTokenizerFast` with a chat template, so prompts go through
`apply_chat_template` exactly as for a real instruct model::

    <|user|>12+34<|end|><|assistant|>12+34=46. \\boxed{46}<|end|>

Any Hugging Face causal-LM directory with a chat template loads through the same
`load_checkpoint`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging
from spark_core.timing import timed

# Every stage loads and saves checkpoints: transformers' per-load progress bars would drown
# the stage logs (the Prefect UI, serve.log) in "Loading weights" lines.
hf_logging.disable_progress_bar()

SPECIAL_TOKENS = ("<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>")
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


class CheckpointError(ValueError):
    """A model directory that cannot be used, with a one-line reason."""


def build_tokenizer():
    """The byte-level tokenizer with chat template (a `PreTrainedTokenizerFast`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(list(SPECIAL_TOKENS) + alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # No regex pre-split and no merges: one token per byte, so digits are always single tokens.
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<|pad|>",
        eos_token="<|end|>",
        additional_special_tokens=list(SPECIAL_TOKENS[2:]),
        padding_side="left",
        model_max_length=1024,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_model(tokenizer, arch, seed: int):
    """A randomly initialised `LlamaForCausalLM` sized by `arch` (a config.TinyModelConfig), float32."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden,
        num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads,
        num_key_value_heads=arch.heads,
        intermediate_size=arch.intermediate,
        max_position_embeddings=arch.max_positions,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=True, temperature=1.0
    )
    return model


@timed("model load/save")
def save_checkpoint(model, tokenizer, path: Path) -> None:
    """save_pretrained for model (safetensors), tokenizer and generation config."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def check_model_dir(path: str | Path) -> Path:
    """The directory if it looks like a Hugging Face causal-LM checkpoint (or LoRA adapters on
    one, spark_core/model/lora.py), else CheckpointError."""
    from spark_core.model.lora import adapter_base, is_adapter_dir

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such model directory")
    if is_adapter_dir(path):
        adapter_base(path)  # one-line CheckpointError when the base is gone
        return path
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: not a Hugging Face model directory (no config.json)")
    return path


def load_tokenizer(path: str | Path):
    """The checkpoint's tokenizer, left padding, with a pad token; CheckpointError without a chat template."""
    from transformers import AutoTokenizer

    path = check_model_dir(path)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot load the tokenizer ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    if not getattr(tok, "chat_template", None):
        raise CheckpointError(f"{path}: the tokenizer has no chat template; SPARK formats every prompt as chat")
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


@timed("model load/save")
def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """(model, tokenizer) from a directory, model in eval mode on `device`; a LoRA checkpoint
    loads as its base with the adapters merged in (spark_core/model/lora.py)."""
    from transformers import AutoModelForCausalLM

    from spark_core.model import lora

    tok = load_tokenizer(path)
    if lora.is_adapter_dir(path):
        return lora.merged(path, device, dtype), tok
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot load the model ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    return model.to(device).eval(), tok


def chat_prompt(tokenizer, user: str) -> str:
    """The generation prompt for one user message, through the checkpoint's chat template."""
    return tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False)


def read_metrics(path: str | Path) -> dict:
    """The `metrics.json` a bootstrap wrote beside its checkpoint ({} if none)."""
    f = Path(path) / "metrics.json"
    return json.loads(f.read_text()) if f.is_file() else {}
