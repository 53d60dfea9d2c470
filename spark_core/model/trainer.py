"""One GRPO update period over a batch of verified rollouts (policy or reward phase).

The batch is split into mini-batches of `mini_batch_size` sequences, one optimizer step each;
each mini-batch into micro-batches of `micro_batch_size` whose gradients accumulate, so
memory stays flat as the batch grows. Every micro-batch's loss is weighted by its share of
the mini-batch's response tokens, which makes the accumulated gradient exactly the
token-mean over the mini-batch (a plain mean of micro-batch means would not be).

The mini-batch's sequences are ordered by length before they are cut into micro-batches (less
padding, the same token-mean). Gradient clipping at 1.0; the optimizer, its schedule and its saved state are
spark_core/model/optimizer.py, the rows and packing spark_core/model/batching.py. A non-finite
loss or gradient norm skips the step (logged, `skipped` in the `updates` row) and never reaches
the weights. CUDA when present, CPU otherwise, the same code.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch

from spark_core import progress
from spark_core.maths.grpo import policy_loss, token_entropy, token_logprobs
from spark_core.model import optimizer
from spark_core.model.batching import (Sequence_, advantages, layout, old_logprobs, pack_rows, packing_matches,
                                       response_logits, response_tokens)
from spark_core.model.fsdp import is_sharded
from spark_core.model.logits import blocked_matches, response_stats, use_blocks
from spark_core.model.lora import frozen_as as lora_frozen_as, is_peft
from spark_core.model.optimizer import TRAINER_STATE, agree, rank_world

__all__ = ["TRAINER_STATE", "Sequence_", "TrainSettings", "Trainer", "pack_rows", "packing_matches", "rank_world",
           "settings_from_config"]

log = logging.getLogger(__name__)

_GRPO_METRICS = ("loss", "policy_loss", "kl", "entropy", "clip_frac_low", "clip_frac_high")  # per `updates` row


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation knobs (from the config's `train:` section)."""

    lr: float = 1e-4
    warmup_steps: int = 0
    total_steps: int = 1000  # optimizer steps over the whole run, policy and reward together
    schedule: str = "constant"  # constant | cosine (after warm-up)
    mini_batch_size: int = 64
    micro_batch_size: int = 16
    clip_low: float = 0.2
    clip_high: float = 0.28
    beta: float = 0.001
    agg: str = "token-mean"
    entropy_coef: float = 0.0
    temperature: float = 1.0  # the sampling temperature: log-probs are recomputed under it
    max_grad_norm: float = 1.0
    packing: bool = False  # several sequences per row instead of one padded row each (checked once)
    blocked_logits: str = "auto"  # auto | always | never: LM head over blocks of positions (spark_core/model/logits.py)
    gradient_checkpointing: bool = False
    bf16_autocast: bool = False  # CUDA or a native-bf16 CPU: bf16 trunk, float32 head, log-probs and optimizer state


def settings_from_config(train, total_steps: int, temperature: float) -> TrainSettings:
    """TrainSettings from a config.TrainConfig section."""
    return TrainSettings(
        lr=train.lr, warmup_steps=train.warmup_steps, total_steps=total_steps, schedule=train.schedule,
        mini_batch_size=train.mini_batch_size, micro_batch_size=train.micro_batch_size, clip_low=train.clip_low,
        clip_high=train.clip_high, beta=train.beta, agg=train.agg, entropy_coef=train.entropy_coef, temperature=temperature,
        packing=train.packing, blocked_logits=train.blocked_logits,
        gradient_checkpointing=train.gradient_checkpointing, bf16_autocast=train.bf16_autocast,
    )


class Trainer:
    """Holds the policy, the frozen reference, the optimizer and the schedule.

    A peft model (LoRA, spark_core/model/lora.py) trains its adapters only, and with `ref_model`
    None its reference is itself with the adapters switched off (no second copy)."""

    def __init__(self, model, ref_model, settings: TrainSettings, pad_id: int, device: torch.device | None = None):
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device)
        self.lora = is_peft(self.model)
        # The forward passes go through the causal LM itself (its LoRA layers injected in place):
        # the blocked log-probs need its decoder and head, which the peft wrapper hides.
        self.net = self.model.get_base_model() if self.lora else self.model
        self.ref = ref_model.to(self.device).eval() if ref_model is not None else None
        if self.ref is not None:
            for p in self.ref.parameters():
                p.requires_grad_(False)
        self.s = settings
        self.pad_id = pad_id
        self.opt, self.sched = optimizer.make_optimizer(self.model, settings, trainable_only=self.lora)
        self.step = 0
        self._packing_ok: bool | None = None
        self._blocked: bool | None = None
        if settings.gradient_checkpointing:
            self.net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.net.config.use_cache = False

    # ----------------------------------------------------------------------- one period

    def train_period(self, batch: Sequence[Sequence_], phase: str, lr_scale: float = 1.0, **overrides) -> list[dict]:
        """One pass over `batch`; returns one `updates` row per optimizer step.

        `overrides` replace loss settings for this period only (the reward period's own
        temperature, clip_high or entropy_coef); the optimizer and schedule are shared.
        """
        rows = []
        self.model.train()
        base, self.s = self.s, replace(self.s, **overrides)
        starts = range(0, len(batch), self.s.mini_batch_size)
        try:
            with self._frozen_cast(), progress.bar(f"{phase} update", len(starts), "step") as bar:
                for start in starts:
                    rows.append(self._optimizer_step(batch[start : start + self.s.mini_batch_size], phase, lr_scale))
                    bar.update(1, tokens=rows[-1]["tokens"])
        finally:
            self.s = base
        return rows

    def sft_period(self, batch: Sequence[Sequence_], phase: str = "warmup", what: str | None = None) -> list[dict]:
        """Supervised steps on `batch` (token-mean negative log-likelihood of the responses; the
        advantages and old log-probs are ignored), through the same optimizer step as GRPO; one
        row per optimizer step, with `loss` its only metric (`what`: the progress bar's name)."""
        self.model.train()
        mb = self.s.mini_batch_size
        rows = []
        with progress.bar(what or f"{phase} supervised", -(-len(batch) // mb), "step") as bar:
            for i in range(0, len(batch), mb):
                rows.append(self._optimizer_step(batch[i : i + mb], phase, 1.0, self._micro_nll, ("loss",)))
                bar.update(1, tokens=rows[-1]["tokens"])
        return rows

    def _optimizer_step(self, mini: Sequence[Sequence_], phase: str, lr_scale: float, micro_loss=None,
                        keys: tuple[str, ...] = _GRPO_METRICS) -> dict:
        """One optimizer step over `mini`: `micro_loss` (default: the GRPO loss) per micro-batch,
        token-weighted; `keys` are the metrics its row carries."""
        micro_loss = micro_loss or self._micro_loss
        t0 = time.monotonic()
        # Micro-batches of similar lengths pad less (19% fewer tokens on the real model's policy
        # batch); each is weighted by its share of the tokens, so the gradient is the same token-mean.
        mini = sorted(mini, key=lambda x: len(x.prompt_ids) + len(x.response_ids))
        total_tokens = sum(len(x.response_ids) for x in mini)
        self.opt.zero_grad(set_to_none=True)
        sums = {k: 0.0 for k in keys}
        finite = True
        rank, world = rank_world()
        sharded = self._sharded()
        if world > 1:  # the one-time checks are collectives there: every rank makes them here, even one
            self._use_blocks()  # without a micro-batch in this step
            self._use_packing()
        starts = list(range(0, len(mini), self.s.micro_batch_size))
        mine = starts[rank::world]  # under torchrun: micro-batches dealt round-robin to the processes
        # FSDP's gathers and reductions are collectives: every process runs as many passes; one
        # with a micro-batch fewer repeats its first at weight 0 (it adds nothing to the sum).
        passes = [(m, True) for m in mine] + ([(0, False)] if sharded and len(mine) < -(-len(starts) // world) else [])
        for m, counts in passes:
            micro = mini[m : m + self.s.micro_batch_size]
            weight = sum(len(x.response_ids) for x in micro) / max(1, total_tokens) if counts else 0.0
            loss, metrics = micro_loss(micro)
            if not torch.isfinite(loss):
                finite = False
                if not sharded:
                    break
            (loss * weight).backward()  # sharded and non-finite: the pass still runs; the step is skipped
            if counts:
                for k in sums:
                    sums[k] += metrics.get(k, 0.0) * weight
        if world > 1:
            # FSDP has reduced the gradients already: only the metric sums are left to add up.
            finite = (optimizer.reduce_stats(sums, finite, self.device) if sharded
                      else optimizer.all_reduce_grads(self.model, sums, finite))
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.s.max_grad_norm) if finite else torch.tensor(float("nan"))
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP (already the norm over every shard)
            grad_norm = grad_norm.full_tensor()
        finite = finite and bool(torch.isfinite(grad_norm))
        base_lr = self.sched.get_last_lr()[0]
        if finite:
            for g in self.opt.param_groups:
                g["lr"] = base_lr * lr_scale
            self.opt.step()
        else:
            log.warning("%s step %d: non-finite loss or gradient, step skipped", phase, self.step)
        self.opt.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # torch warns when a skipped step leaves opt.step() uncalled
            warnings.simplefilter("ignore", UserWarning)
            self.sched.step()  # the schedule advances either way: a skipped step still used its slot
        row = dict(phase=phase, step=self.step, **{k: float(v) if finite else float("nan") for k, v in sums.items()},
                   grad_norm=float(grad_norm), lr=base_lr * lr_scale, tokens=total_tokens,
                   seconds=time.monotonic() - t0, skipped=not finite)
        log.info("%s step %d: loss %.4f, %d tokens, %.1fs", phase, self.step, row["loss"], total_tokens, row["seconds"])
        self.step += 1
        return row

    @contextlib.contextmanager
    def _frozen_cast(self):
        """A LoRA policy under bf16 autocast: its frozen weights held in bf16 for the period, cast
        once instead of at every pass (the same bf16 values, so the same results; a few seconds a
        stage on the real model on this CPU), and restored after it."""
        dtype = self._autocast_dtype() if self.lora else None
        if dtype is None:
            yield
            return
        self._use_blocks()  # the one-time checks run the model outside autocast: before the cast
        self._use_packing()
        with lora_frozen_as(self.net, dtype):
            yield

    def _sharded(self) -> bool:
        """The policy is sharded over torchrun's processes (train.fsdp)."""
        return rank_world()[1] > 1 and is_sharded(self.model)

    def _response_batch(self, micro: Sequence[Sequence_]):
        """A micro-batch on the device: response tokens (B, R), their mask (B, R), the model
        inputs and, per response token, the flat position predicting it (B, R)."""
        tokens, mask = response_tokens(micro, self.pad_id)  # (B, R), (B, R)
        inputs, where = self._layout(micro, tokens.shape[1], packed=self._use_packing())
        return tokens.to(self.device), mask.to(self.device), inputs, where.to(self.device)

    def _micro_nll(self, micro: Sequence[Sequence_]):
        """Token-mean negative log-likelihood of one micro-batch's responses (the SFT loss)."""
        tokens, mask, inputs, where = self._response_batch(micro)
        with self._autocast():
            logp, _ = self._stats(self.net, inputs, where, tokens, mask, "none")  # (B, R)
        loss = -(logp * mask).sum() / mask.sum().clamp(min=1)
        return loss, {"loss": float(loss.detach())}

    def _micro_loss(self, micro: Sequence[Sequence_]):
        """Loss and metrics of one micro-batch: token-mean over its response tokens."""
        tokens, mask, inputs, where = self._response_batch(micro)
        R = tokens.shape[1]
        old = old_logprobs(micro, R).to(self.device)  # (B, R)
        adv = advantages(micro, R).to(self.device)  # (B,) or (B, R)
        with self._autocast():
            logp, entropy = self._stats(self.net, inputs, where, tokens, mask)  # (B, R), (B, R)
            if self.s.entropy_coef == 0:
                entropy = entropy.detach()
            ref_logp = None
            if self.ref is not None and self.s.beta > 0:
                with torch.no_grad():
                    ref_logp, _ = self._stats(self.ref, inputs, where, tokens, mask, "none")  # (B, R)
            elif self.lora and self.s.beta > 0:
                ref_logp = self.reference_logprobs(inputs, where, tokens, mask)  # (B, R)
        return policy_loss(
            logp, old, adv, mask.float(), clip_low=self.s.clip_low, clip_high=self.s.clip_high,
            ref_logprobs=ref_logp, beta=self.s.beta, agg=self.s.agg, entropy=entropy, entropy_coef=self.s.entropy_coef,
        )

    def reference_logprobs(self, inputs: dict, where: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor):
        """(B, R) log-probs under the LoRA policy's base: the same model, adapters off."""
        with torch.no_grad(), self.model.disable_adapter():
            return self._stats(self.net, inputs, where, tokens, mask, "none")[0]

    def _stats(self, model, inputs: dict, where: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
               entropy: str | None = None):
        """Log-probs and entropies (B, R), float32: blocked over the LM head (no (B, R, V)
        float32 tensor) when `blocked_logits` selects it and the model passes the check.
        `entropy` (blocked path): grad | value | none; by default grad when it is trained on."""
        if self._use_blocks():
            entropy = entropy or ("grad" if self.s.entropy_coef != 0 else "value")
            return response_stats(model, inputs, where, tokens, mask, self.s.temperature, entropy=entropy)
        logits = response_logits(model, inputs, where)  # (B, R, V)
        return token_logprobs(logits, tokens, self.s.temperature), token_entropy(logits, self.s.temperature)

    def _use_blocks(self) -> bool:
        if self._blocked is None and self._sharded():
            # The blocked path calls the decoder and the head directly, past the FSDP root's hook
            # that gathers the embeddings and head: under FSDP the logits come from model(...).
            if use_blocks(self.net, self.s.blocked_logits):
                log.warning("train.fsdp: blocked log-probs are not used under FSDP (full logits: more memory)")
            self._blocked = False
        if self._blocked is None:
            self._blocked = agree(use_blocks(self.net, self.s.blocked_logits) and blocked_matches(self.net))
            if not self._blocked and self.s.blocked_logits == "always":
                log.warning("%s: blocked log-probs do not match the model's logits; using full logits",
                            type(self.net).__name__)
        return self._blocked

    def _autocast(self):
        """bf16 autocast when configured, on CUDA or on a CPU that computes bf16 natively (AVX-512
        BF16 / AMX; on AVX2 it would be slower, so float32 stays); a no-op context otherwise."""
        dtype = self._autocast_dtype()
        return torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def _autocast_dtype(self) -> torch.dtype | None:
        """bfloat16 where `_autocast` casts to it, else None."""
        from spark_core.model.rollout import native_bf16

        if self.s.bf16_autocast and self.device.type in ("cuda", "cpu") and native_bf16(self.device):
            return torch.bfloat16
        return None

    def _layout(self, micro: Sequence[Sequence_], R: int, packed: bool) -> tuple[dict, torch.Tensor]:
        """Model inputs on the device and the (B, R) positions predicting each response token
        (spark_core/model/batching.py `layout`)."""
        return layout(micro, R, packed, self.pad_id, self.device)

    def _use_packing(self) -> bool:
        """Packing if configured and, checked once per model, it gives the padded logits.

        An architecture whose attention does not read sequence boundaries from
        `position_ids` would let packed sequences see each other: fall back to padding.
        """
        if not self.s.packing:
            return False
        if self._packing_ok is None:
            self._packing_ok = agree(packing_matches(self.net, self.pad_id, self.device))
            if not self._packing_ok:
                log.warning("%s: packed sequences give other logits than padded ones; training with padding",
                            type(self.net).__name__)
        return self._packing_ok

    # ----------------------------------------------------------------------- state

    def save_state(self, path: Path, optimizer_state: dict | None = None) -> None:
        """Optimizer, scheduler and step counter beside a save_pretrained directory
        (`optimizer_state`: the full state gathered from FSDP shards, spark_core/model/fsdp.py)."""
        optimizer.save_state(path, self.opt, self.sched, self.step, optimizer_state)

    def load_state(self, path: Path) -> None:
        self.step = optimizer.load_state(path, self.model, self.opt, self.sched, self.device, self._sharded())
