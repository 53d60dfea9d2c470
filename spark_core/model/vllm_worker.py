"""The vLLM engine's own process: `python -m spark_core.model.vllm_worker --model DIR ...`.

Started by `VLLMProcessEngine` (spark_core/model/vllm_process.py) with the interpreter that has
vLLM (`.venv-vllm` on a CPU, whose pins differ from the project's: README set-up), as the leader
of its own process group, which vLLM's engine-core process joins. Protocol, one JSON object per
line: requests `{"prompts": [...], "spec": {SamplingSpec fields}}` on stdin; replies
`{"ready": true, "eos_ids": [...]}` once, then `{"groups": [[Sample fields, ...], ...]}` or
`{"error": "one line"}` per request, on the stdout the process started with (vLLM's own logs are
sent to stderr). stdin at its end: close the engine and exit. The parent gone (killed, even with
SIGKILL): the whole group is killed, engine core included, so no engine outlives its stage.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict


def _die_with_parent(every_s: float = 0.5) -> None:
    """Kill this process group (this worker and vLLM's engine core) once the process that
    started this one is gone (this process is then re-parented)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--system", default=None)
    p.add_argument("--compile", action="store_true", help="let vLLM compile (slower start, faster steps)")
    p.add_argument("--max-model-len", type=int, default=None)
    a = p.parse_args(argv)
    _die_with_parent()
    # The protocol keeps the stdout this process was given; everything else printed here (vLLM
    # logs to stdout) goes to stderr, in the engine-core process too (it inherits fd 1).
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(obj: dict) -> None:
        reply.write(json.dumps(obj) + "\n")

    from spark_core.model.rollout import SamplingSpec, VLLMEngine

    try:
        engine = VLLMEngine(a.model, dtype=a.dtype, seed=a.seed, system=a.system, enforce_eager=not a.compile,
                            max_model_len=a.max_model_len)
    except Exception as e:  # noqa: BLE001  (the parent raises it as one line)
        send({"error": f"{type(e).__name__}: {e}"})
        return 1
    send({"ready": True, "eos_ids": sorted(engine.eos_ids)})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            groups = engine.generate(req["prompts"], SamplingSpec(**req["spec"]))
            send({"groups": [[asdict(s) for s in g] for g in groups]})
        except Exception as e:  # noqa: BLE001
            send({"error": f"{type(e).__name__}: {e}"})
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
