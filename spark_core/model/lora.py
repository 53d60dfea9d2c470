"""LoRA adapters through peft (`train.lora`): train a few million adapter weights, not the model.

A LoRA checkpoint is a folder with peft's `adapter_config.json` and `adapter_model.safetensors`,
the tokenizer, the trainer state (optimizer over the adapters only, spark_core/model/trainer.py) and
`spark_adapter.json`, which names the base model the adapters were made on (the run's start
model: the base, or its format warm-up). It is megabytes, not gigabytes, and every reader
resolves it against that base:

- sampling, evaluation and every other inference use `load_checkpoint`, which returns the
  base with the adapters merged into its weights: a plain model, decoded at the speed of the
  base (unmerged adapters add two small matmuls per projection and step);
- training loads the base with its adapters trainable (`load_trainable`), or attaches fresh
  ones (`attach`, B = 0 so the first forward equals the base's); the KL reference is the same
  model with its adapters switched off (`peft`'s `disable_adapter`), so no second copy of the
  model is loaded.
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path

ADAPTER_MARK = "spark_adapter.json"  # {"base": absolute path of the model the adapters apply to}
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@contextmanager
def _quiet():
    """peft asks transformers a deprecated question (`is_gradient_checkpointing`) on load and save."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def is_adapter_dir(path: str | Path) -> bool:
    """Whether `path` is a LoRA checkpoint written by `save_adapter`."""
    return (Path(path) / ADAPTER_MARK).is_file()


def adapter_problem(path: Path) -> str | None:
    """Why an adapter checkpoint is incomplete, or None."""
    missing = [f for f in ADAPTER_FILES if not (Path(path) / f).is_file()]
    return f"incomplete adapter checkpoint: no {missing[0]}" if missing else None


def adapter_base(path: str | Path) -> Path:
    """The base model directory an adapter checkpoint applies to; CheckpointError if it is gone."""
    from spark_core.model.checkpoint import CheckpointError

    path = Path(path)
    try:
        base = Path(json.loads((path / ADAPTER_MARK).read_text())["base"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path / ADAPTER_MARK}: unreadable ({type(e).__name__}); the adapters' base is unknown") from e
    if not (base / "config.json").is_file():
        raise CheckpointError(f"{path}: LoRA adapters on {base}, which is no longer a model directory; "
                              f"restore it (or re-run its warm-up) to use this checkpoint")
    return base


def peft_config(lora):
    """peft's LoraConfig from a config.LoraConfig section."""
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM")


def attach(model, lora):
    """`model` wrapped with fresh trainable adapters (A random under torch's current seed, B = 0),
    every base weight frozen."""
    from peft import get_peft_model

    with _quiet():
        return get_peft_model(model, peft_config(lora))


def load_trainable(path: str | Path, device="cpu"):
    """(peft model with the checkpoint's adapters trainable, tokenizer)."""
    from peft import PeftModel

    from spark_core.model.checkpoint import load_checkpoint, load_tokenizer

    base, _ = load_checkpoint(adapter_base(path), device)
    with _quiet():
        model = PeftModel.from_pretrained(base, str(path), is_trainable=True)
    return model.to(device), load_tokenizer(path)


def merged(path: str | Path, device="cpu", dtype=None):
    """The base with the checkpoint's adapters merged into its weights: a plain causal LM
    (`dtype`: the base's, float32 when None).

    A plain LoRA checkpoint (this project's `peft_config`) is merged by hand, W += (alpha / r) B A
    per adapted layer, the arithmetic of peft's `merge_and_unload` (tested bit for bit) without
    building peft's wrapper first: that took longer than loading the base (3-6 s of every
    sampling stage on the real model here). Any other adapter config goes through peft."""
    import torch
    from peft import PeftModel

    from spark_core.model.checkpoint import load_checkpoint

    path = Path(path)
    base, _ = load_checkpoint(adapter_base(path), device, dtype or torch.float32)
    if _merge_by_hand(base, path):
        return base
    with _quiet():
        model = PeftModel.from_pretrained(base, str(path)).merge_and_unload().eval()
    # peft leaves every merged weight frozen (requires_grad False); a plain load has them True, and
    # the flag changes torch.matmul's plan (HFEngine._decode no longer depends on it, see there).
    return model.requires_grad_(True)


_PLAIN = {"peft_type": "LORA", "fan_in_fan_out": False, "bias": "none", "use_dora": False, "use_rslora": False,
          "lora_bias": False, "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}, "layer_replication": None}
_PREFIX, _A, _B = "base_model.model.", ".lora_A.weight", ".lora_B.weight"


def _merge_by_hand(base, path: Path) -> bool:
    """Add each adapter's (alpha / r) B A to its base weight in place, as peft computes it (float32
    product, scaled, added to the weight in its own dtype); False, untouched, for a config or
    tensor layout this does not cover."""
    import torch
    from safetensors.torch import load_file

    conf = json.loads((path / "adapter_config.json").read_text())
    if any(conf.get(k, v) != v for k, v in _PLAIN.items()) or not conf.get("r"):
        return False
    tensors = load_file(str(path / "adapter_model.safetensors"))
    pairs = {}
    for key in tensors:
        if not key.startswith(_PREFIX) or not key.endswith((_A, _B)):
            return False
        pairs.setdefault(key[len(_PREFIX):-len(_A)], set()).add(key[-len(_A):])
    if not pairs or any(ends != {_A, _B} for ends in pairs.values()):
        return False
    scaling = conf["lora_alpha"] / conf["r"]
    with torch.no_grad():
        targets = {name: base.get_submodule(name) for name in pairs}
        if any(not isinstance(m, torch.nn.Linear) for m in targets.values()):
            return False
        for name, module in targets.items():
            a, b = tensors[_PREFIX + name + _A].float(), tensors[_PREFIX + name + _B].float()
            module.weight += (b @ a) * scaling
    return True


def save_adapter(model, tokenizer, path: Path, base: Path) -> None:
    """Adapters (safetensors), tokenizer and the mark naming `base` into `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with _quiet():
        model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / ADAPTER_MARK).write_text(json.dumps({"base": str(Path(base).resolve())}, indent=2) + "\n")


@contextmanager
def frozen_as(model, dtype):
    """Within the block, the frozen base weight and bias of every adapted linear layer of peft
    `model` are held as `dtype` copies; the originals come back after it, untouched (yields the
    number of tensors swapped). Under autocast to that dtype this changes no result, since
    autocast casts them to it at every call, and saves those casts: 630M weights read and
    written per pass on Qwen2.5-0.5B. Outside autocast the model cannot run inside the block
    (a float32 input meets a bf16 weight). Adapters, norms, embeddings and head stay as they are."""
    from peft.tuners.lora import LoraLayer

    kept = []
    try:
        for module in model.modules():
            if isinstance(module, LoraLayer):
                for t in (module.base_layer.weight, getattr(module.base_layer, "bias", None)):
                    if t is not None and not t.requires_grad and t.dtype != dtype:
                        kept.append((t, t.data))
                        t.data = t.data.to(dtype)
        yield len(kept)
    finally:
        for t, original in kept:
            t.data = original


def is_peft(model) -> bool:
    """Whether `model` is a peft wrapper (its adapters train, its base does not)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")
