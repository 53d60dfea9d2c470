"""Where a flow run's time goes, per component (issue 19, item 2): `spark bench` reads these.

Functions decorated with `@timed("component")` add their *exclusive* wall time (their own,
less that of timed calls inside them) to a process-wide total, keyed by component and by
whether a stage's work (`timed("stage")`, rundir.run_stage's body) encloses the call. So
`stage` is the stages' compute less their model loads, Parquet and manifest I/O, and what the
flow run's wall time leaves over after every component is Prefect and the flow's own code.
The cost is two perf_counter calls and a dict update per call (a few hundred per iteration).
"""

from __future__ import annotations

import functools
import threading
import time
from collections import defaultdict
from typing import Callable

_lock = threading.Lock()
_totals: dict[tuple[str, bool], float] = defaultdict(float)
_calls: dict[tuple[str, bool], int] = defaultdict(int)
_local = threading.local()


def _stack() -> list:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def timed(component: str) -> Callable:
    """Decorator: add the function's exclusive wall time to `component`'s total."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            stack = _stack()
            in_stage = any(frame[0] == "stage" for frame in stack)
            frame = [component, 0.0]  # [component, seconds spent in timed calls inside]
            stack.append(frame)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                stack.pop()
                if stack:
                    stack[-1][1] += elapsed
                with _lock:
                    _totals[(component, in_stage)] += elapsed - frame[1]
                    _calls[(component, in_stage)] += 1

        return inner

    return wrap


def reset() -> None:
    with _lock:
        _totals.clear()
        _calls.clear()


def totals() -> list[dict]:
    """One row per (component, inside a stage or not): exclusive seconds and calls so far."""
    with _lock:
        return [dict(component=c, in_stage=s, seconds=v, calls=_calls[(c, s)]) for (c, s), v in sorted(_totals.items())]
