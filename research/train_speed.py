"""Where a LoRA train stage's time goes on the real model (issue 31): load, attach, each optimizer
step's parts, save.

    .venv/bin/python research/train_speed.py MODEL [--rows 16] [--prompt 120] [--response 64]
        [--micro 4] [--beta 0.001] [--no-autocast] [--profile]
    .venv/bin/python research/train_speed.py --run RUN [--iteration 0] [--phase policy] [--profile]

Builds `--rows` sequences of `--prompt` prompt tokens and `--response` response tokens (random ids
from the model's vocabulary: the arithmetic is the same as for real text), attaches the CPU
config's LoRA adapters (rank 8 on every projection) and runs one policy period of one optimizer
step through `Trainer`, as the `train_policy` stage does, then saves the adapters and optimizer
state; prints the seconds of each part. With `--run`, the batch is that stage's own (its
rollouts and samples, as `train_<phase>` reads them), on the run's start model with fresh
adapters and the run's train settings; nothing in the run is written. The period is timed twice:
the first is what a stage pays (one-time checks, new shapes, allocator growth), the second is
the steady rate. `--profile` prints torch's operator table for the first.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from spark_core.config import LoraConfig
from spark_core.model import lora
from spark_core.model.checkpoint import load_checkpoint
from spark_core.model.trainer import Sequence_, Trainer, TrainSettings


def sequences(rows: int, prompt: int, response: int, vocab: int, seed: int = 0) -> list[Sequence_]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(rows):
        ids = torch.randint(0, vocab, (prompt + response,), generator=g).tolist()
        out.append(Sequence_(ids[:prompt], ids[prompt:], [-2.0] * response, 1.0 if i % 2 else -1.0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("--run", help="take the batch, start model and settings from this run's stage")
    ap.add_argument("--iteration", type=int, default=0)
    ap.add_argument("--phase", default="policy", choices=["policy", "reward"])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=120)
    ap.add_argument("--response", type=int, default=64)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--beta", type=float, default=0.001)
    ap.add_argument("--no-autocast", action="store_true")
    ap.add_argument("--packing", action="store_true", help="train.packing: sequences packed into rows")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = None
    if a.run:
        import json

        from spark_core.config import SparkConfig
        from spark_core.rundir import start_model
        from spark_core.stages.train import _period_batch

        cfg = SparkConfig.model_validate(json.loads((Path(a.run) / "run.json").read_text())["config"])
        a.model = str(start_model(cfg, Path(a.run)))
        batch, _, overrides = _period_batch(cfg, Path(a.run), a.iteration, a.phase)
    elif not a.model:
        ap.error("give a MODEL or --run")
    t = time.perf_counter()
    model, tok = load_checkpoint(a.model)
    print(f"load {time.perf_counter() - t:.1f} s ({a.model})")
    t = time.perf_counter()
    model = lora.attach(model, cfg.train.lora if cfg else LoraConfig(rank=8, alpha=16))
    print(f"attach {time.perf_counter() - t:.1f} s")
    if cfg:
        from spark_core.model.trainer import settings_from_config

        s = settings_from_config(cfg.train, 1000, cfg.rollout.temperature)
        s = replace(s, bf16_autocast=s.bf16_autocast and not a.no_autocast, packing=s.packing or a.packing)
    else:
        s = TrainSettings(lr=1e-5, mini_batch_size=a.rows, micro_batch_size=a.micro, beta=a.beta,
                          bf16_autocast=not a.no_autocast, packing=a.packing)
        batch, overrides = sequences(a.rows, a.prompt, a.response, len(tok)), {}
    trainer = Trainer(model, None, s, tok.pad_token_id, torch.device("cpu"))
    tokens = sum(len(x.prompt_ids) + len(x.response_ids) for x in batch)
    for rep in range(2):
        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if a.profile and rep == 0 else None
        t = time.perf_counter()
        if prof:
            with prof:
                trainer.train_period(batch, a.phase, **overrides)
        else:
            trainer.train_period(batch, a.phase, **overrides)
        dt = time.perf_counter() - t
        print(f"period {rep}: {dt:.1f} s ({tokens / dt:.0f} tokens/s over {tokens} tokens of {len(batch)} sequences)")
        if prof:
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        lora.save_adapter(model, tok, Path(tmp), Path(a.model))
        trainer.save_state(Path(tmp))
        print(f"save {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        lora.load_trainable(tmp)
        print(f"load_trainable {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
