"""Models and what runs them: checkpoints and imports (`checkpoint`, `models`, `bootstrap`),
LoRA adapters (`lora`), the rollout engines (`rollout`, `kv_cache`), log-probs without a full
logits tensor (`logits`), the trainer (`trainer`, `batching`, `optimizer`; `fsdp`,
`train_worker` under torchrun) and the format warm-up (`warmup`, `shared_warmup`)."""
