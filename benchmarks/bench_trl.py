"""Side by side with TRL's GRPOTrainer: the same policy-only GRPO work, in one run.

Both start from the same checkpoint and get the same prompts in the same order (the pipeline's
own per-iteration draw), G samples each, the same lengths, learning rate, clip range, KL
coefficient, optimizer (AdamW 0.9/0.95, no weight decay, clip 1.0, constant LR) and number of
optimizer steps (4 per batch of 32 prompts x 8 = 256 sequences, mini-batches of 64). TRL's
defaults that would differ are set explicitly: `per_device_train_batch_size` counts completions
(64), gradient checkpointing off, `beta` 0.001 (TRL's default is 0: no reference model),
`top_k` 0 (no top-k), `loss_type` dapo (token mean over the batch, as here).

Measured: wall seconds of the training loop (sampling, rewards, reference and policy passes,
updates), sequences per second, and greedy accuracy on held-out problems after the same steps.
This project runs twice: in-process (`run_period`, the same loop TRL runs) and as the staged
pipeline (`spark.mode: policy_only` through `run_iteration`: every stage reads and writes its
files and reloads the checkpoint, which is what restartability costs).

The real model (issue 28): a config with `train.lora` (configs/qwen2.5-coder-0.5b-cpu.yaml) gives
TRL the same peft LoRA config (`peft_config`: rank, alpha, dropout, target modules; its KL
reference is the model with adapters disabled, as here), the same prompts through the same chat
template and system message, the same reward (`spark.format_penalty` included), bf16 autocast when
the config trains with it, and compares TRL with the staged pipeline (the in-process loop is
full-weight only). Both start from the base model (the warm-up is off: it is not part of the
timed work). Each system runs in a process of its own, so its peak RSS is its own.

Needs the `bench` extra (`pip install -e .[bench]`: trl, accelerate).
Run: `.venv/bin/python benchmarks/bench_trl.py [--batches 8] [--threads 2] [--seeds 0 1 2]`
Real model: `.venv/bin/python benchmarks/bench_trl.py --config configs/qwen2.5-coder-0.5b-cpu.yaml --batches 8 --held-out 100`
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spark_core.model.checkpoint import load_checkpoint  # noqa: E402
from spark_core.config import SparkConfig, load_config  # noqa: E402
from spark_core.evaluation.evaluate import policy_metrics  # noqa: E402
from spark_core.rundir import policy_problems  # noqa: E402
from spark_core.periods import in_format, reward_of, run_period, solve_tasks  # noqa: E402
from spark_core.data.problems import generate_problems  # noqa: E402
from spark_core.data.prompts import solve_prompt  # noqa: E402
from spark_core.model.rollout import HFEngine, SamplingSpec, pick_dtype  # noqa: E402
from spark_core.model.trainer import Trainer, TrainSettings  # noqa: E402
from spark_core.verify import verify_response  # noqa: E402


def prompt_batches(cfg: SparkConfig, train, batches: int):
    """The problems the pipeline's rollout stage draws for iterations 0..batches-1."""
    return [policy_problems(cfg, train, k) for k in range(batches)]


def held_out_accuracy(model, tok, held, cfg: SparkConfig) -> float:
    """Greedy accuracy as the pipeline's evaluate stage measures it: the config's prompt, system
    message, answer length and sampling dtype (bf16 on a CPU that has it natively, for the real model)."""
    model = model.to(pick_dtype(cfg.rollout.dtype, torch.device("cpu")))
    engine = HFEngine(model, tok, device="cpu", system=cfg.prompts.system)
    return policy_metrics(engine, held, 0, cfg.rollout.max_new_tokens, 0, cfg.prompts.solve)[0]["policy_accuracy"]


def run_ours(cfg, batches, held):
    model, tok = load_checkpoint(ROOT / cfg.model.path)
    ref, _ = load_checkpoint(ROOT / cfg.model.path)
    engine = HFEngine(model, tok, device="cpu")
    t = cfg.train
    trainer = Trainer(model, ref, TrainSettings(lr=t.lr, mini_batch_size=t.mini_batch_size, micro_batch_size=t.micro_batch_size,
                                                clip_low=t.clip_low, clip_high=t.clip_high, beta=t.beta), tok.pad_token_id,
                      torch.device("cpu"))
    r = cfg.rollout
    start, steps = time.monotonic(), 0
    for k, problems in enumerate(batches):
        spec = SamplingSpec(r.group_size, r.temperature, r.top_p, r.max_new_tokens, seed=cfg.seed * 1000 + 2 * k)
        steps += len(run_period(engine, trainer, solve_tasks(problems), spec, "policy")[1])
    seconds = time.monotonic() - start
    return {"system": "spark (in-process loop)", "seconds": seconds, "steps": steps,
            "held_out_accuracy": held_out_accuracy(model, tok, held, cfg)}


def run_pipeline(cfg: SparkConfig, batches, held):
    from spark_core.iteration import run_iteration
    from spark_core.rundir import checkpoint_dir
    from spark_core.stages.problems import prepare_problems

    run = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    data = cfg.resolved()
    data["spark"]["mode"] = "policy_only"
    data["eval"]["every"] = 10**6  # no evaluation inside the timed loop
    data["warmup"]["enabled"] = False  # the same start as TRL's: the base model
    cfg = SparkConfig.model_validate(data)
    n = len(batches)
    prepare_problems(cfg, run)
    start = time.monotonic()
    for k in range(n):
        run_iteration(cfg, run, k)
    seconds = time.monotonic() - start
    from spark_core.data.store import read_table

    steps = read_table(run, "updates").num_rows
    tokens = sum(read_table(run, "rollouts").column("response_tokens").to_pylist())
    stage_seconds: dict[str, float] = {}  # where the staged loop's time goes, summed over its iterations
    for f in sorted(run.glob("manifests/iteration=*/*.json")):
        doc = json.loads(f.read_text())
        if isinstance(doc.get("seconds"), (int, float)):
            stage_seconds[f.stem] = round(stage_seconds.get(f.stem, 0.0) + doc["seconds"], 1)
    model, tok = load_checkpoint(checkpoint_dir(run, n - 1))  # adapters merged in
    out = {"system": "spark (staged pipeline)", "seconds": seconds, "steps": steps, "completion_tokens": tokens,
           "held_out_accuracy": held_out_accuracy(model, tok, held, cfg), "stage_seconds": stage_seconds}
    shutil.rmtree(run, ignore_errors=True)
    return out


def run_trl(cfg, batches, held):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from spark_core.model import lora

    model, tok = load_checkpoint(ROOT / cfg.model.path)
    system = [{"role": "system", "content": cfg.prompts.system}] if cfg.prompts.system else []
    rows = [{"prompt": system + [{"role": "user", "content": solve_prompt(cfg.prompts.solve, p.question)}], "answer": p.answer}
            for b in batches for p in b]

    def reward(completions, answer, **_):  # the pipeline's solve reward (spark_core/periods.py: score)
        out = []
        for c, a in zip(completions, answer):
            v = verify_response(c[0]["content"], a)
            out.append(reward_of(v.correct, in_format("solve", v.rule, v.extracted, a), cfg.spark.format_penalty))
        return out

    r, t = cfg.rollout, cfg.train
    bf16 = t.bf16_autocast and pick_dtype("bf16_if_native", torch.device("cpu")) == torch.bfloat16
    per_step = t.mini_batch_size
    gen_batch = r.batch_prompts * r.group_size
    out_dir = tempfile.mkdtemp(prefix="bench-trl-")
    args = GRPOConfig(
        output_dir=out_dir, per_device_train_batch_size=per_step, steps_per_generation=gen_batch // per_step,
        gradient_accumulation_steps=1, num_generations=r.group_size, max_completion_length=r.max_new_tokens,
        temperature=r.temperature, top_p=r.top_p, top_k=0, learning_rate=t.lr, lr_scheduler_type="constant",
        warmup_steps=0, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0, max_grad_norm=1.0, beta=t.beta,
        epsilon=t.clip_low, epsilon_high=t.clip_high, loss_type="dapo", num_iterations=1, gradient_checkpointing=False,
        use_cpu=True, bf16=bf16, max_steps=len(batches) * gen_batch // per_step, shuffle_dataset=False,
        logging_steps=gen_batch // per_step, save_strategy="no", report_to="none", seed=cfg.seed, disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tok, peft_config=lora.peft_config(t.lora) if t.lora else None)
    start = time.monotonic()
    result = trainer.train()
    seconds = time.monotonic() - start
    shutil.rmtree(out_dir, ignore_errors=True)
    # One log entry per generation batch (logging_steps): its completions' mean length.
    tokens = sum(h["completions/mean_length"] * gen_batch for h in trainer.state.log_history if "completions/mean_length" in h)
    trained = trainer.model.merge_and_unload() if t.lora else trainer.model
    return {"system": f"TRL {__import__('trl').__version__} GRPOTrainer" + (" + peft LoRA" if t.lora else ""),
            "seconds": seconds, "steps": result.global_step, "completion_tokens": round(tokens),
            "held_out_accuracy": held_out_accuracy(trained, tok, held, cfg)}


SYSTEMS = {"trl": run_trl, "ours": run_ours, "pipeline": run_pipeline}


def seed_config(config: Path, seed: int) -> SparkConfig:
    data = load_config(config).resolved()
    data["seed"] = seed
    return SparkConfig.model_validate(data)


def run_system(name: str, config: Path, seed: int, batches: int, held_out: int) -> dict:
    """One system on one seed, in this process: its row, with this process's peak RSS."""
    cfg = seed_config(config, seed)
    train, held = generate_problems(cfg.problems, cfg.seed)
    row = SYSTEMS[name](cfg, prompt_batches(cfg, train, batches), held[:held_out])
    peak_kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return row | {"peak_rss_gb": round(peak_kb / 2**20, 2)}


def run_isolated(name: str, a, seed: int) -> dict:
    """`run_system` in a child process (its own peak RSS; nothing left over from the system before)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([sys.executable, __file__, "--config", a.config, "--batches", str(a.batches), "--threads",
                        str(a.threads), "--held-out", str(a.held_out), "--one", name, str(seed), f.name], check=True)
        return json.loads(Path(f.name).read_text())


def one_seed(a, seed: int) -> tuple[list[dict], float]:
    """The systems on one seed (prompt draw, sampling, TRL's seed), each in its own process:
    rows and the base model's accuracy."""
    cfg = seed_config(Path(a.config), seed)
    _, held = generate_problems(cfg.problems, cfg.seed)
    model, tok = load_checkpoint(ROOT / cfg.model.path)
    base = held_out_accuracy(model, tok, held[: a.held_out], cfg)
    del model
    rows = [run_isolated(name, a, seed) for name in a.systems]
    for row in rows:
        row["seed"] = seed
    return rows, base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"))
    ap.add_argument("--batches", type=int, default=8, help="batches of 32 prompts x 8 samples (4 steps each)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--held-out", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="one comparison per seed; the summary averages them")
    ap.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=None,
                    help="default: trl ours pipeline; trl pipeline for a LoRA config (the in-process loop is full-weight)")
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    ap.add_argument("--one", nargs=3, metavar=("SYSTEM", "SEED", "OUT"), help=argparse.SUPPRESS)  # run_isolated's child
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.one:
        name, seed, out = a.one
        Path(out).write_text(json.dumps(run_system(name, Path(a.config), int(seed), a.batches, a.held_out)))
        return
    cfg = load_config(a.config)
    a.systems = a.systems or (["trl", "pipeline"] if cfg.train.lora else ["trl", "ours", "pipeline"])
    seqs = a.batches * cfg.rollout.batch_prompts * cfg.rollout.group_size
    print(f"{a.batches} batches x {cfg.rollout.batch_prompts} prompts x {cfg.rollout.group_size} samples = {seqs} sequences "
          f"per seed; {a.threads} threads; held-out greedy accuracy on {a.held_out} problems")
    print(f"{'seed':>4} {'system':34} {'steps':>5} {'seconds':>8} {'seq/s':>7} {'s/1000 seq':>10} {'held-out acc':>12}")
    rows = []
    for seed in a.seeds:
        seed_rows, base = one_seed(a, seed)
        trl = next((r for r in seed_rows if r["system"].startswith("TRL")), None)
        trl_rate = seqs / trl["seconds"] if trl else float("nan")
        for row in seed_rows:
            row |= {"sequences": seqs, "seq_per_s": seqs / row["seconds"], "s_per_1000": 1000 * row["seconds"] / seqs,
                    "ratio_vs_trl": seqs / row["seconds"] / trl_rate, "base_accuracy": base, "threads": a.threads}
            if row.get("completion_tokens"):
                row["completion_tokens_per_s"] = row["completion_tokens"] / row["seconds"]
            print(f"{seed:>4} {row['system']:34} {row['steps']:>5} {row['seconds']:>8.1f} {row['seq_per_s']:>7.3g} "
                  f"{row['s_per_1000']:>10.2f} {row['held_out_accuracy']:>12.3f}   x{row['ratio_vs_trl']:.2f} vs TRL "
                  f"(base {base:.3f}; {row.get('completion_tokens_per_s', 0):.1f} completion tokens/s, "
                  f"peak RSS {row['peak_rss_gb']:.1f} GB)")
        rows += seed_rows
    print(f"mean over {len(a.seeds)} seed(s):")
    for system in dict.fromkeys(r["system"] for r in rows):
        mine = [r for r in rows if r["system"] == system]
        mean = lambda k: sum(r[k] for r in mine) / len(mine)  # noqa: E731
        print(f"     {system:34} seq/s {mean('seq_per_s'):7.3g}  x{mean('ratio_vs_trl'):.2f} vs TRL  "
              f"held-out acc {mean('held_out_accuracy'):.3f}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
