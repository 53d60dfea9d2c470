"""Stage `warmup` (iteration 0, when `warmup.enabled`): the format warm-up, shared by every run
that asks for the same one.

Reads: the base model and the `problems` table. Writes: the shared checkpoint beside the model
(made once under its lock, see spark_core/model/shared_warmup.py) and `RUN/warmup/examples.parquet`."""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from spark_core.model import shared_warmup, warmup
from spark_core.model.checkpoint import check_model_dir, load_checkpoint, save_checkpoint
from spark_core.config import SparkConfig
from spark_core.periods import solve_tasks
from spark_core.model.rollout import SamplingSpec, encode_prompts, pick_device
from spark_core.rundir import base_model, iteration_hash, open_engine, problems_of, run_stage
from spark_core.runlock import file_lock
from spark_core.data.store import atomic_write_bytes, manifest_path, read_manifest
from spark_core.model.trainer import TrainSettings, Trainer

log = logging.getLogger(__name__)


def warmup_stage(cfg: SparkConfig, run_dir: Path, k: int) -> dict | None:
    """Stage `warmup` (iteration 0, when `warmup.enabled`): the format warm-up of spark_core/model/warmup.py,
    shared by every run that asks for the same one (spark_core/model/shared_warmup.py): found by its key
    and reused, or made once under its lock. The manifest names the shared checkpoint (`shared`),
    its key, whether this run reused it, and the parse rates before and after; the examples are
    copied to `RUN/warmup/examples.parquet`. None when it does not apply."""
    if k != 0 or not cfg.warmup.enabled:
        return None
    run_dir = Path(run_dir)
    doc = read_manifest(run_dir, "warmup", 0)
    if doc and doc.get("shared") and not shared_warmup.is_complete(Path(doc["shared"])):
        log.warning("%s: the shared warm-up this run used is gone or damaged; the warmup stage is redone", doc["shared"])
        manifest_path(run_dir, "warmup", 0).unlink()

    def body() -> dict:
        base = check_model_dir(base_model(cfg))
        key = shared_warmup.warmup_key(cfg, base)
        root = shared_warmup.warmups_root(base, run_dir)
        shared = root / key
        root.mkdir(parents=True, exist_ok=True)
        with file_lock(root / f"{key}.lock", wait_s=6 * 3600, what=f"warm-up {shared}"):
            reused = shared_warmup.is_complete(shared)
            if reused:
                log.info("warm-up: reusing %s (key %s)", shared, key)
            else:
                _make_warmup(cfg, run_dir, base, shared, key)
        info = shared_warmup.read_info(shared)
        side = run_dir / "warmup" / "examples.parquet"
        atomic_write_bytes(side, (shared / shared_warmup.EXAMPLES).read_bytes(), run_dir)
        return dict(outputs={"examples": side}, rows={"examples": info["examples"]}, inputs={"checkpoint": str(base)},
                    shared=str(shared), warmup_key=key, reused=reused, made_seconds=info["seconds"],
                    metrics=info["metrics"])

    return run_stage(cfg, run_dir, "warmup", 0, iteration_hash(cfg), body)


def _make_warmup(cfg: SparkConfig, run_dir: Path, base: Path, shared: Path, key: str) -> None:
    """Make the warm-up of `cfg` from `base` into the shared folder `shared` (written beside, then
    renamed whole): checkpoint, examples and `warmup.json` (metrics, seconds, key)."""
    start = time.monotonic()
    w, r, sp = cfg.warmup, cfg.rollout, cfg.spark
    tasks = solve_tasks(warmup.warmup_problems(problems_of(run_dir, "train"), w.problems, cfg.seed), cfg.prompts.solve)
    seed = cfg.seed * 1000 + 900
    solve_spec = SamplingSpec(w.samples, r.temperature, r.top_p, r.max_new_tokens, seed=seed)
    with open_engine(cfg, base, seed) as engine:
        groups = engine.generate([t.prompt for t in tasks], solve_spec)
        jtasks = warmup.recycled_judge_tasks(tasks, groups, w.judge_prompts, cfg.seed, sp.template_set, sp.judge_input)
        judge_spec = SamplingSpec(w.samples, sp.reward_temperature, r.top_p, r.judge_max_new_tokens, seed=seed + 1)
        jgroups = engine.generate([t.prompt for t in jtasks], judge_spec) if jtasks else []
    before = warmup.parse_rates(tasks + jtasks, groups + jgroups)
    rng = random.Random(f"{cfg.seed}|warmup-examples")
    refl = [(t, g) for t, g in zip(jtasks, jgroups) if t.kind == "reflection"]
    judg = [(t, g) for t, g in zip(jtasks, jgroups) if t.kind != "reflection"]
    # a budget of 1 filters nothing (a finished response is within its limit): the draw is as before
    solve_cap = int(w.answer_budget * r.max_new_tokens) if w.answer_budget < 1 else None
    judge_cap = int(w.answer_budget * r.judge_max_new_tokens) if w.answer_budget < 1 else None
    examples = (warmup.solve_examples(tasks, groups, rng, w.shortest_answers, solve_cap)
                + warmup.solve_examples([t for t, _ in refl], [g for _, g in refl], rng, w.shortest_answers, judge_cap)
                + warmup.judge_examples([t for t, _ in judg], [g for _, g in judg], rng, w.balance_verdicts, judge_cap))
    if not examples:
        raise ValueError("warm-up: no sampled response was usable (none correct and finished, no readable "
                         "verdict); raise warmup.samples or rollout.max_new_tokens, or choose another prompts.solve")
    torch.manual_seed(seed)
    model, tok = load_checkpoint(base)
    stops = Counter(s.token_ids[-1] for g in groups + jgroups for s in g if s.finish_reason == "stop" and s.token_ids)
    eos_id = stops.most_common(1)[0][0] if stops else tok.eos_token_id  # the end token the model itself uses
    seqs = warmup.training_sequences(examples, lambda ps: encode_prompts(tok, ps, cfg.prompts.system), tok, eos_id)
    settings = TrainSettings(lr=w.lr, mini_batch_size=w.batch_size, micro_batch_size=min(w.batch_size, cfg.train.micro_batch_size),
                             beta=0.0, blocked_logits=cfg.train.blocked_logits,
                             gradient_checkpointing=cfg.train.gradient_checkpointing, bf16_autocast=cfg.train.bf16_autocast)
    trainer = Trainer(model, None, settings, tok.pad_token_id, pick_device(r.device))
    updates: list[dict] = []
    for epoch in range(w.epochs):
        order = list(range(len(seqs)))
        random.Random(f"{cfg.seed}|warmup-epoch|{epoch}").shuffle(order)
        updates += trainer.sft_period([seqs[i] for i in order], what=f"supervised epoch {epoch + 1}/{w.epochs}")
    tmp = shared.with_name(shared.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(model.cpu(), tok, tmp)
    del model, trainer  # free the weights and optimizer state before the check loads the checkpoint
    check_spec = SamplingSpec(w.check_samples, r.temperature, r.top_p, r.max_new_tokens, seed=seed + 2)
    with open_engine(cfg, tmp, seed + 2) as engine:
        after_groups = engine.generate([t.prompt for t in tasks], check_spec)
        after_jgroups = engine.generate([t.prompt for t in jtasks], replace(check_spec, seed=seed + 3,
                                        temperature=sp.reward_temperature, max_new_tokens=r.judge_max_new_tokens)) if jtasks else []
    after = warmup.parse_rates(tasks + jtasks, after_groups + after_jgroups)
    pq.write_table(pa.Table.from_pylist([asdict(e) for e in examples]), tmp / shared_warmup.EXAMPLES)
    metrics = {f"{m}_before": v for m, v in before.items()} | {f"{m}_after": v for m, v in after.items()}
    shares = lambda gs: warmup.verdict_shares(jtasks, [[s.text for s in g] for g in gs])
    metrics |= {f"{m}_before": v for m, v in shares(jgroups).items()} | {f"{m}_after": v for m, v in shares(after_jgroups).items()}
    jex = [e for e in examples if e.kind in ("pointwise", "pairwise")]
    metrics |= {f"{m}_examples": v for m, v in warmup.verdict_shares(jex, [[e.target] for e in jex]).items()}
    metrics |= {f"examples_{kind}": n for kind, n in Counter(e.kind for e in examples).items()}
    metrics["rewritten_share"] = sum(e.rewritten for e in examples) / len(examples)
    losses = [u["loss"] for u in updates if not u["skipped"]]
    metrics |= {"sft_steps": len(updates), "sft_loss_first": losses[0] if losses else None,
                "sft_loss_last": losses[-1] if losses else None}
    info = {"key": key, "base": str(Path(base).resolve()), "made_by": str(Path(run_dir).resolve()),
            "examples": len(examples), "seconds": time.monotonic() - start,
            "metrics": {m: v for m, v in metrics.items() if v is not None}}
    (tmp / shared_warmup.INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(shared, ignore_errors=True)  # a damaged earlier copy
    tmp.rename(shared)
