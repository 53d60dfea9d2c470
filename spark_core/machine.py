"""This machine in one line, for the header of a result table (which CPU, its bf16, memory, threads).

A result table states where it was measured; a hand-written default goes stale as soon as the
job lands on another host (issue 31's tables were labelled "AVX2, float32" on an AVX-512 BF16
CPU that ran them in bf16), so the line is read from the machine itself.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def _cpu_model_and_flags() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), set()
    model, flags = platform.machine(), set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == platform.machine():
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return None


def describe(threads: int | None = None) -> str:
    """E.g. "2-core AMD EPYC 9R14 (AVX-512 BF16), 24 GiB, 2 threads"."""
    import torch

    model, flags = _cpu_model_and_flags()
    simd = ("AVX-512 BF16" if "avx512_bf16" in flags else "AVX-512" if "avx512f" in flags
            else "AVX2" if "avx2" in flags else None)
    mem = _memory_gib()
    parts = [f"{os.cpu_count()}-core {model}" + (f" ({simd})" if simd else "")]
    if mem is not None:
        parts.append(f"{mem:.0f} GiB")
    parts.append(f"{threads or torch.get_num_threads()} threads")
    return ", ".join(parts)
