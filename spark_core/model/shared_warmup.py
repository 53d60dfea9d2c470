"""One format warm-up per (base model, warm-up recipe, seed), shared by every run that asks for it.

The warm-up (spark_core/model/warmup.py) is a function of the base model's weights, the warm-up
config, the seed and what the stage reads besides (the training problems it draws from, the
solve prompt and system message, the sampling settings, the judge templates, the trainer
knobs it uses). `warmup_key` hashes exactly those, so every run, arm and seed that would make
the same warm-up finds it instead of making it again, and a changed recipe makes a new one.

Where: `<base model>/warmups/<key>/` (or `$SPARK_WARMUP_DIR/<key>/`), a folder holding the
warmed-up checkpoint, `examples.parquet` and `warmup.json` (the stage's metrics, seconds and
key). It is written beside as `<key>.tmp` and renamed into place whole, under an exclusive
lock (`<key>.lock`), so two runs starting together make it once: the second waits, then
reuses it. A base-model folder that cannot be written falls back to `RUN/warmups/`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from spark_core.config import SparkConfig, config_hash, stable_resolved

ENV_DIR = "SPARK_WARMUP_DIR"
INFO = "warmup.json"
EXAMPLES = "examples.parquet"
#: The rollout / train / spark fields the warm-up stage reads (the rest do not change it).
_ROLLOUT = ("engine", "device", "dtype", "temperature", "top_p", "max_new_tokens", "judge_max_new_tokens")
_TRAIN = ("micro_batch_size", "blocked_logits", "gradient_checkpointing", "bf16_autocast")
_SPARK = ("template_set", "judge_input", "reward_temperature")


def model_fingerprint(path: Path) -> dict:
    """What identifies a model folder's weights cheaply: its config, its import stamp when it has
    one, and the name and size of every weight file (a re-fetch of the same model matches)."""
    path = Path(path)
    out = {"config": hashlib.sha256((path / "config.json").read_bytes()).hexdigest()}
    stamp = path / "spark_model.json"
    if stamp.is_file():
        out["stamp"] = hashlib.sha256(stamp.read_bytes()).hexdigest()
    out["weights"] = sorted((f.name, f.stat().st_size) for f in path.iterdir()
                            if f.is_file() and f.suffix in (".safetensors", ".bin"))
    return out


def _file_digest(source: str) -> str | None:
    """sha256 of a problem file (its content decides the problems), None for `synthetic`."""
    p = Path(source)
    return hashlib.sha256(p.read_bytes()).hexdigest() if source != "synthetic" and p.is_file() else None


def warmup_key(cfg: SparkConfig, base: Path) -> str:
    """The hash of everything the warm-up of `cfg` on model folder `base` depends on."""
    r, t, sp = cfg.rollout.model_dump(mode="json"), cfg.train.model_dump(mode="json"), cfg.spark.model_dump(mode="json")
    return config_hash({
        "model": model_fingerprint(base), "seed": cfg.seed, "warmup": stable_resolved(cfg).get("warmup", cfg.warmup.model_dump(mode="json")),
        "problems": cfg.problems.model_dump(mode="json"), "problem_file": _file_digest(cfg.problems.source),
        "prompts": cfg.prompts.model_dump(mode="json"), "rollout": {k: r[k] for k in _ROLLOUT},
        "train": {k: t[k] for k in _TRAIN}, "spark": {k: sp[k] for k in _SPARK},
    })


def warmups_root(base: Path, run_dir: Path) -> Path:
    """`$SPARK_WARMUP_DIR`, else `<base>/warmups`, else (base folder not writable) `RUN/warmups`."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    root = Path(base) / "warmups"
    if root.is_dir() and os.access(root, os.W_OK) or not root.exists() and os.access(base, os.W_OK):
        return root
    return Path(run_dir) / "warmups"


def is_complete(path: Path) -> bool:
    """Whether a shared warm-up folder is whole (it is renamed into place only once it is)."""
    from spark_core.data.store import checkpoint_problem

    return (Path(path) / INFO).is_file() and (Path(path) / EXAMPLES).is_file() and checkpoint_problem(path) is None


def read_info(path: Path) -> dict:
    return json.loads((Path(path) / INFO).read_text())
