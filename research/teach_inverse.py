"""Probe: can the tiny model learn the inverse computations an inverse-check judge needs?

`check_ceiling.py` found that checking `a+b=c` by solving `c-b` (and `a-b=c` by `c+b`) almost
never passes a wrong c (false pass 1-3%), but passes a right one only 27-41% of the time,
because c can have 3 digits or a sign and the tiny model only saw 1-2 digit operands. This
continues the model's supervised training on solve problems of exactly those inverse forms
(built from training problems: c is the right answer or a near miss, as a judge would see),
mixed half and half with the original solve problems, then measures both checks again.

Run: `.venv/bin/python research/teach_inverse.py --steps 300 [--from data/tiny-model] [--out DIR]`;
on a GPU: `--device cuda --steps 12000 --measure-at 1200 3000 6000`.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "research"))

from check_ceiling import ONE_STEP, ceilings, held_out_one_step, print_ceilings  # noqa: E402

from spark_core.model.bootstrap import inverse_problem, train_sft  # noqa: E402
from spark_core.model.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from spark_core.config import load_config  # noqa: E402
from spark_core.data.problems import fresh_problems, generate_problems  # noqa: E402
from spark_core.model.rollout import HFEngine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="source", default=str(ROOT / "data" / "tiny-model"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--problems", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="save the checkpoint here")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda: the SFT and the checks run there")
    ap.add_argument("--pool", type=int, default=None, metavar="SEED",
                    help="train on a fresh synthetic pool (this generator seed) minus the run's training "
                         "problems, so the RL run's problems stay unseen")
    ap.add_argument("--measure-at", type=int, nargs="*", default=[],
                    help="also measure the ceilings after these step counts (each below --steps)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    train = (generate_problems(cfg.problems, cfg.seed)[0] if a.pool is None
             else fresh_problems(cfg.problems, a.pool, cfg.seed))
    rng = random.Random(0)
    one_step = [p for p in train if ONE_STEP.fullmatch(p.question)]
    mixed = one_step + [inverse_problem(p, rng) for p in one_step for _ in range(2)][: len(one_step)]
    held = held_out_one_step(a.problems)
    model, tok = load_checkpoint(a.source)
    model.to(a.device)
    print_ceilings("before", ceilings(HFEngine(model, tok), held, 4))
    s = cfg.bootstrap.model_copy(update={"lr": a.lr, "warmup_steps": 20})
    start, measuring = time.monotonic(), 0.0

    def stop(step: int, _secs: float) -> bool:
        nonlocal measuring
        if step in a.measure_at or step >= a.steps:  # measured inside the one SFT run: Adam keeps its moments
            t = time.monotonic()
            print(f"solve SFT {step} steps (half inverse forms), lr {a.lr}, {a.device}: "
                  f"{t - start - measuring:.0f}s", flush=True)
            print_ceilings(f"after {step}", ceilings(HFEngine(model, tok), held, 4))
            measuring += time.monotonic() - t
        return step >= a.steps

    train_sft(model, tok, mixed, s, rng, False, stop=stop, mix=(1.0, 0.0, 0.0, 0.0))
    model.eval()
    if a.out:
        save_checkpoint(model, tok, Path(a.out))


if __name__ == "__main__":
    main()
