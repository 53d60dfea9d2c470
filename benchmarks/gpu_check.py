"""A few-minute GPU check: short SPARK iterations on a ~100M-parameter tiny-architecture model.

Builds a Llama with the tiny model's byte tokenizer (hidden 768, 12 layers, 12 heads, MLP 3072:
about 85M parameters; random weights, so it measures speed, not learning), runs
`--iterations` SPARK iterations through the pipeline stages on it (rollout with the
Hugging Face engine, or vLLM with `--engine vllm`), and prints rollout tokens/s, training
tokens/s and the training MFU against the card's bf16 dense peak. Training FLOPs per token:
6N for the policy's forward and backward plus 2N for the reference forward (N parameters).
The trainer keeps float32 weights and does not autocast, so the MFU it shows against a bf16
peak is that of fp32 training.

Run on a GPU machine: `python benchmarks/gpu_check.py` (about 2-4 minutes on an H100).
A CPU smoke test: `python benchmarks/gpu_check.py --device cpu --small --iterations 1`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spark_core.model.checkpoint import build_model, build_tokenizer, save_checkpoint  # noqa: E402
from spark_core.config import TinyModelConfig, load_config  # noqa: E402
from spark_core.iteration import run_iteration  # noqa: E402
from spark_core.stages.problems import prepare_problems  # noqa: E402

#: bf16 dense peak FLOP/s by card name fragment (vendor datasheets, without sparsity).
PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12}
BIG = {"hidden": 768, "layers": 12, "heads": 12, "intermediate": 3072, "max_positions": 512}
SMALL = {"hidden": 128, "layers": 4, "heads": 4, "intermediate": 512, "max_positions": 256}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--engine", default="hf", choices=("hf", "vllm"))
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--small", action="store_true", help="the 0.9M shape (a CPU smoke test)")
    a = ap.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device; pass --device cpu --small for a smoke test")
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    tok = build_tokenizer()
    model = build_model(tok, TinyModelConfig(**(SMALL if a.small else BIG)), seed=0)
    params = sum(p.numel() for p in model.parameters())
    save_checkpoint(model, tok, work / "model")
    del model
    cfg_data = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    cfg_data |= {
        "model": {"path": str(work / "model")},
        "rollout": {"engine": a.engine, "device": a.device, "dtype": "bfloat16" if a.device == "cuda" else "float32",
                    "batch_prompts": a.prompts, "group_size": 8, "max_new_tokens": a.max_new_tokens,
                    "judge_max_new_tokens": a.max_new_tokens},
        "train": {"mini_batch_size": 128, "micro_batch_size": 32},
        "eval": {"every": 10**6},
    }
    (work / "c.yaml").write_text(yaml.safe_dump(cfg_data))
    cfg = load_config(work / "c.yaml")
    run = work / "run"
    prepare_problems(cfg, run)
    start = time.monotonic()
    metrics = [run_iteration(cfg, run, k)["metrics"] for k in range(a.iterations)]
    wall = time.monotonic() - start
    last = metrics[-1]  # the first iteration pays warm-up (CUDA context, kernels)
    name = torch.cuda.get_device_name() if a.device == "cuda" else "cpu"
    peak = next((v for k, v in PEAKS.items() if k in name), None)
    train_tps = [last.get(f"{p}/train_tokens_per_s") for p in ("policy", "reward")]
    out = {
        "device": name, "parameters": params, "iterations": a.iterations, "wall_seconds": round(wall, 1),
        "rollout_tokens_per_s": {p: round(last.get(f"{p}/rollout_tokens_per_s", 0.0)) for p in ("policy", "reward")},
        "train_tokens_per_s": {p: round(v) if v else None for p, v in zip(("policy", "reward"), train_tps)},
    }
    if peak:
        out["train_mfu_vs_bf16_peak"] = {p: round(8 * params * v / peak, 4) if v else None
                                         for p, v in zip(("policy", "reward"), train_tps)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
