"""One GRPO update period over a batch of verified rollouts (policy or reward phase).

The batch is split into mini-batches of `mini_batch_size` sequences, one optimizer step each;
each mini-batch into micro-batches of `micro_batch_size` whose gradients accumulate, so
memory stays flat as the batch grows. Every micro-batch's loss is weighted by its share of
the mini-batch's response tokens, which makes the accumulated gradient exactly the
token-mean over the mini-batch (a plain mean of micro-batch means would not be).

AdamW (betas 0.9, 0.95, weight decay 0), gradient clipping at 1.0, and one learning-rate
schedule whose step counter runs through policy *and* reward periods (the authors' schedule
counted policy steps only, so reward steps ran past its end). A non-finite loss or gradient
norm skips the step (logged, `skipped` in the `updates` row) and never reaches the weights.
Optimizer and scheduler state are saved beside the Hugging Face checkpoint, so a resumed run
continues exactly where it stopped. CUDA when present, CPU otherwise, the same code.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch

from spark_core import progress
from spark_core.fsdp import is_sharded, load_optimizer_state
from spark_core.grpo import policy_loss, token_entropy, token_logprobs
from spark_core.logits import blocked_matches, response_stats, use_blocks
from spark_core.lora import is_peft

log = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.pt"  # optimizer, scheduler and step, beside the weights
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
    blocked_logits: str = "auto"  # auto | always | never: LM head over blocks of positions (spark_core/logits.py)
    gradient_checkpointing: bool = False
    bf16_autocast: bool = False  # CUDA or a native-bf16 CPU: bf16 trunk, float32 head, log-probs and optimizer state


@dataclass
class Sequence_:
    """One rollout as the trainer sees it."""

    prompt_ids: list[int]
    response_ids: list[int]
    old_logprobs: list[float]
    advantage: float
    verdict_index: int | None = None
    """`judge_reward: expected`: from this response token on, `verdict_advantage` replaces `advantage`."""
    verdict_advantage: float = 0.0


def settings_from_config(train, total_steps: int, temperature: float) -> TrainSettings:
    """TrainSettings from a config.TrainConfig section."""
    return TrainSettings(
        lr=train.lr, warmup_steps=train.warmup_steps, total_steps=total_steps, schedule=train.schedule,
        mini_batch_size=train.mini_batch_size, micro_batch_size=train.micro_batch_size, clip_low=train.clip_low,
        clip_high=train.clip_high, beta=train.beta, agg=train.agg, entropy_coef=train.entropy_coef, temperature=temperature,
        packing=train.packing, blocked_logits=train.blocked_logits,
        gradient_checkpointing=train.gradient_checkpointing, bf16_autocast=train.bf16_autocast,
    )


def lr_lambda(s: TrainSettings):
    def f(step: int) -> float:
        if step < s.warmup_steps:
            return (step + 1) / s.warmup_steps
        if s.schedule == "cosine":
            done = min(1.0, (step - s.warmup_steps) / max(1, s.total_steps - s.warmup_steps))
            return 0.5 * (1 + math.cos(math.pi * done))
        return 1.0

    return f


class Trainer:
    """Holds the policy, the frozen reference, the optimizer and the schedule.

    A peft model (LoRA, spark_core/lora.py) trains its adapters only, and with `ref_model`
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
        # foreach: the multi-tensor update, also on the CPU (torch's CPU default is one tensor at a
        # time): 2.6 s instead of 4.4 s a step for a 630M-parameter model on 2 cores.
        params = [p for p in self.model.parameters() if p.requires_grad] if self.lora else self.model.parameters()
        self.opt = torch.optim.AdamW(params, lr=settings.lr, betas=(0.9, 0.95), weight_decay=0.0,
                                     foreach=True)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(settings))
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
            with progress.bar(f"{phase} update", len(starts), "step") as bar:
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
            finite = self._reduce_stats(sums, finite, self.device) if sharded else self._all_reduce(sums, finite)
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

    def _sharded(self) -> bool:
        """The policy is sharded over torchrun's processes (train.fsdp)."""
        return rank_world()[1] > 1 and is_sharded(self.model)

    def _all_reduce(self, sums: dict, finite: bool) -> bool:
        """Sum the gradients and the metric sums over the processes (each holds its micro-batches'
        token-weighted share, weighted by the whole mini-batch's tokens, so the sum is the
        one-process gradient); every process then takes the same step. False if any was non-finite."""
        import torch.distributed as dist

        params = [p for p in self.model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])  # one collective, not one per tensor
        dist.all_reduce(flat)
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
        return self._reduce_stats(sums, finite, flat.device)

    @staticmethod
    def _reduce_stats(sums: dict, finite: bool, device: torch.device) -> bool:
        """Sum the metric sums over the processes in place; False if any process was non-finite."""
        import torch.distributed as dist

        keys = list(sums)
        stats = torch.tensor([sums[k] for k in keys] + [0.0 if finite else 1.0], dtype=torch.float64, device=device)
        dist.all_reduce(stats)
        for i, k in enumerate(keys):
            sums[k] = float(stats[i])
        return bool(stats[-1] == 0)

    def _response_batch(self, micro: Sequence[Sequence_]):
        """A micro-batch on the device: response tokens (B, R), their mask (B, R), the model
        inputs and, per response token, the flat position predicting it (B, R)."""
        B, R = len(micro), max(len(x.response_ids) for x in micro)
        tokens = torch.full((B, R), self.pad_id, dtype=torch.long)  # (B, R)
        mask = torch.zeros((B, R), dtype=torch.bool)  # (B, R)
        for i, x in enumerate(micro):
            tokens[i, : len(x.response_ids)] = torch.tensor(x.response_ids)
            mask[i, : len(x.response_ids)] = True
        inputs, where = self._layout(micro, R, packed=self._use_packing())
        return tokens.to(self.device), mask.to(self.device), inputs, where.to(self.device)

    def _micro_nll(self, micro: Sequence[Sequence_]):
        """Token-mean negative log-likelihood of one micro-batch's responses (the SFT loss)."""
        tokens, mask, inputs, where = self._response_batch(micro)
        with self._autocast():
            logp, _ = self._stats(self.net, inputs, where, tokens, mask)  # (B, R)
        loss = -(logp * mask).sum() / mask.sum().clamp(min=1)
        return loss, {"loss": float(loss.detach())}

    def _micro_loss(self, micro: Sequence[Sequence_]):
        """Loss and metrics of one micro-batch: token-mean over its response tokens."""
        tokens, mask, inputs, where = self._response_batch(micro)
        R = tokens.shape[1]
        old = torch.zeros((len(micro), R))  # (B, R)
        for i, x in enumerate(micro):
            old[i, : len(x.response_ids)] = torch.tensor(x.old_logprobs, dtype=torch.float32)
        old = old.to(self.device)
        adv = torch.tensor([x.advantage for x in micro], dtype=torch.float32)  # (B,)
        if any(x.verdict_index is not None for x in micro):
            adv = adv[:, None].repeat(1, R)  # (B, R): per-token advantages
            for i, x in enumerate(micro):
                if x.verdict_index is not None:
                    adv[i, x.verdict_index:] = x.verdict_advantage
        adv = adv.to(self.device)
        with self._autocast():
            logp, entropy = self._stats(self.net, inputs, where, tokens, mask)  # (B, R), (B, R)
            if self.s.entropy_coef == 0:
                entropy = entropy.detach()
            ref_logp = None
            if self.ref is not None and self.s.beta > 0:
                with torch.no_grad():
                    ref_logp, _ = self._stats(self.ref, inputs, where, tokens, mask)  # (B, R)
            elif self.lora and self.s.beta > 0:
                ref_logp = self.reference_logprobs(inputs, where, tokens, mask)  # (B, R)
        return policy_loss(
            logp, old, adv, mask.float(), clip_low=self.s.clip_low, clip_high=self.s.clip_high,
            ref_logprobs=ref_logp, beta=self.s.beta, agg=self.s.agg, entropy=entropy, entropy_coef=self.s.entropy_coef,
        )

    def reference_logprobs(self, inputs: dict, where: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor):
        """(B, R) log-probs under the LoRA policy's base: the same model, adapters off."""
        with torch.no_grad(), self.model.disable_adapter():
            return self._stats(self.net, inputs, where, tokens, mask)[0]

    def _stats(self, model, inputs: dict, where: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor):
        """Log-probs and entropies (B, R), float32: blocked over the LM head (no (B, R, V)
        float32 tensor) when `blocked_logits` selects it and the model passes the check."""
        if self._use_blocks():
            return response_stats(model, inputs, where, tokens, mask, self.s.temperature)
        logits = _response_logits(model, inputs, where)  # (B, R, V)
        return token_logprobs(logits, tokens, self.s.temperature), token_entropy(logits, self.s.temperature)

    def _use_blocks(self) -> bool:
        if self._blocked is None and self._sharded():
            # The blocked path calls the decoder and the head directly, past the FSDP root's hook
            # that gathers the embeddings and head: under FSDP the logits come from model(...).
            if use_blocks(self.net, self.s.blocked_logits):
                log.warning("train.fsdp: blocked log-probs are not used under FSDP (full logits: more memory)")
            self._blocked = False
        if self._blocked is None:
            self._blocked = _agree(use_blocks(self.net, self.s.blocked_logits) and blocked_matches(self.net))
            if not self._blocked and self.s.blocked_logits == "always":
                log.warning("%s: blocked log-probs do not match the model's logits; using full logits",
                            type(self.net).__name__)
        return self._blocked

    def _autocast(self):
        """bf16 autocast when configured, on CUDA or on a CPU that computes bf16 natively (AVX-512
        BF16 / AMX; on AVX2 it would be slower, so float32 stays); a no-op context otherwise."""
        from spark_core.rollout import native_bf16

        if self.s.bf16_autocast and self.device.type in ("cuda", "cpu") and native_bf16(self.device):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _layout(self, micro: Sequence[Sequence_], R: int, packed: bool) -> tuple[dict, torch.Tensor]:
        """Model inputs for a micro-batch and, per response token, the flat position predicting it.

        Padded: one right-padded row per sequence. Packed: sequences placed first-fit into rows
        as wide as the longest one, positions restarting at 0 for each, no attention mask, so
        Hugging Face's mask builder keeps every sequence to itself (it reads the restarts of
        `position_ids`); it saves work when a few long sequences would set the padded width.
        Returns (kwargs for model(...), where (B, R) long: index into the flattened (rows * W)
        positions whose logits predict each response token; 0 past a response's end, masked).
        """
        lengths = [len(x.prompt_ids) + len(x.response_ids) for x in micro]
        W = max(lengths)
        places = pack_rows(lengths, W) if packed else [(i, 0) for i in range(len(micro))]
        rows = 1 + max(r for r, _ in places)
        ids = torch.full((rows, W), self.pad_id, dtype=torch.long)  # (rows, W)
        where = torch.zeros((len(micro), R), dtype=torch.long)  # (B, R)
        for i, (x, (row, off)) in enumerate(zip(micro, places)):
            p, r = len(x.prompt_ids), len(x.response_ids)
            ids[row, off : off + p + r] = torch.tensor(x.prompt_ids + x.response_ids)
            where[i, :r] = row * W + off + p - 1 + torch.arange(r)
        if not packed:
            attn = (torch.arange(W)[None, :] < torch.tensor(lengths)[:, None]).long()  # (B, W)
            return {"input_ids": ids.to(self.device), "attention_mask": attn.to(self.device)}, where
        pos = torch.zeros((rows, W), dtype=torch.long)  # (rows, W): 0.. per sequence, the tail its own run
        used = [0] * rows
        for n, (row, off) in zip(lengths, places):
            pos[row, off : off + n] = torch.arange(n)
            used[row] = max(used[row], off + n)
        for row in range(rows):
            pos[row, used[row]:] = torch.arange(W - used[row])
        return {"input_ids": ids.to(self.device), "position_ids": pos.to(self.device), "use_cache": False}, where

    def _use_packing(self) -> bool:
        """Packing if configured and, checked once per model, it gives the padded logits.

        An architecture whose attention does not read sequence boundaries from
        `position_ids` would let packed sequences see each other: fall back to padding.
        """
        if not self.s.packing:
            return False
        if self._packing_ok is None:
            self._packing_ok = _agree(packing_matches(self.net, self.pad_id, self.device))
            if not self._packing_ok:
                log.warning("%s: packed sequences give other logits than padded ones; training with padding",
                            type(self.net).__name__)
        return self._packing_ok

    # ----------------------------------------------------------------------- state

    def save_state(self, path: Path, optimizer_state: dict | None = None) -> None:
        """Optimizer, scheduler and step counter beside a save_pretrained directory
        (`optimizer_state`: the full state gathered from FSDP shards, spark_core/fsdp.py)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        opt = optimizer_state if optimizer_state is not None else self.opt.state_dict()
        torch.save({"optimizer": opt, "scheduler": self.sched.state_dict(), "step": self.step}, path / TRAINER_STATE)

    def load_state(self, path: Path) -> None:
        sharded = self._sharded()
        state = torch.load(Path(path) / TRAINER_STATE, map_location="cpu" if sharded else self.device, weights_only=False)
        if sharded:
            load_optimizer_state(self.model, self.opt, state["optimizer"])
        else:
            self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.step = state["step"]


# --------------------------------------------------------------------------- layout helpers


def _agree(flag: bool) -> bool:
    """`flag` if every process found it (a check each rank made on its own): under torchrun the
    ranks must take the same path, or their collectives would not match."""
    if rank_world()[1] == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def rank_world() -> tuple[int, int]:
    """(rank, world size) under an initialised torch.distributed group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def pack_rows(lengths: Sequence[int], width: int) -> list[tuple[int, int]]:
    """First-fit decreasing: (row, offset) per sequence so that no row exceeds `width`.

    Deterministic (ties by index); every length must be <= width.
    """
    if any(n > width for n in lengths):
        raise ValueError(f"a sequence of {max(lengths)} tokens does not fit rows of {width}")
    fill: list[int] = []
    places: list[tuple[int, int]] = [(0, 0)] * len(lengths)
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        row = next((r for r, used in enumerate(fill) if used + lengths[i] <= width), len(fill))
        if row == len(fill):
            fill.append(0)
        places[i] = (row, fill[row])
        fill[row] += lengths[i]
    return places


def _response_logits(model, inputs: dict, where: torch.Tensor) -> torch.Tensor:
    """(B, R, V): the logits at the flat positions `where` (B, R) of model(**inputs)."""
    logits = model(**inputs).logits  # (rows, W, V)
    flat = logits.reshape(-1, logits.shape[-1])  # (rows * W, V)
    return flat[where]  # (B, R, V)


def packing_matches(model, pad_id: int, device, atol: float = 1e-4) -> bool:
    """Whether two packed sequences give the logits they give padded (one short forward each)."""
    a, b = [5, 6, 7, 8, 9, 10], [11, 12, 13]
    vocab = model.get_input_embeddings().num_embeddings
    a, b = [t % vocab for t in a], [t % vocab for t in b]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            ids = torch.tensor([a, b + [pad_id] * 3], device=device)
            attn = torch.tensor([[1] * 6, [1] * 3 + [0] * 3], device=device)
            padded = model(input_ids=ids, attention_mask=attn).logits  # (2, 6, V)
            packed = model(input_ids=torch.tensor([a + b], device=device),
                           position_ids=torch.tensor([list(range(6)) + list(range(3))], device=device),
                           use_cache=False).logits  # (1, 9, V)
        return bool(torch.allclose(packed[0, :6], padded[0], atol=atol) and torch.allclose(packed[0, 6:], padded[1, :3], atol=atol))
    finally:
        model.train(was)
