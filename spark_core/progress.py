"""What a long command is doing, while it does it.

Two forms, one source:
- **plain lines** (logger `spark_core.progress`, INFO): a stage's start and its end with its
  seconds, and the end of each piece of work inside it (sampling, an update period) with its
  count, seconds and tokens/s. Under Prefect they reach the flow run's log (prefect.toml's
  `extra_loggers`); the `spark` CLI prints them to stderr (`show_on_stderr`), never stdout.
- **bars** on a terminal (stderr is a TTY): one tqdm bar per piece of work, named by its stage,
  with items done / total, elapsed, ETA and tokens/s.

`stage(name)` names the stage the pieces inside it belong to (a context variable, so nested
calls need no argument passing).
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger(__name__)
_STAGE: contextvars.ContextVar[str | None] = contextvars.ContextVar("spark_stage", default=None)
_HANDLER_MARK = "_spark_progress_handler"
EVERY_S = 30.0  # without a terminal, a line on work still going after this many seconds


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Log the stage's start and end (with seconds, or the error's type) and name it for the bars inside."""
    token = _STAGE.set(name)
    start = time.monotonic()
    log.info("%s: started", name)
    try:
        yield
    except BaseException as e:
        log.info("%s: failed after %.1fs (%s)", name, time.monotonic() - start, type(e).__name__)
        raise
    else:
        log.info("%s: done in %.1fs", name, time.monotonic() - start)
    finally:
        _STAGE.reset(token)


class Bar:
    """Progress of one piece of work: `update(n, tokens)` as it goes, `close()` at the end."""

    def __init__(self, what: str, total: int, unit: str):
        where = _STAGE.get()
        self.desc = f"{where}: {what}" if where else what
        self.total, self.unit, self.done, self.tokens = total, unit, 0, 0
        self.start = self._said = time.monotonic()
        self._bar = None
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=self.desc, unit=unit, leave=False, file=sys.stderr)

    def update(self, n: int = 1, tokens: int = 0) -> None:
        self.done += n
        self.tokens += tokens
        now = time.monotonic()
        if self._bar is not None:
            self._bar.update(n)
            if self.tokens:
                self._bar.set_postfix_str(f"{self.tokens / max(1e-9, now - self.start):.1f} tok/s")
        elif now - self._said >= EVERY_S and self.done < self.total:  # no terminal: a line now and then on long work
            self._said = now
            log.info("%s: %d/%d %s, %.0fs so far, %.1f tok/s", self.desc, self.done, self.total, self.unit,
                     now - self.start, self.tokens / max(1e-9, now - self.start))

    def close(self) -> None:
        seconds = time.monotonic() - self.start
        if self._bar is not None:
            self._bar.close()
        rate = f", {self.tokens / seconds:.1f} tok/s" if self.tokens and seconds > 0 else ""
        log.info("%s: %d/%d %s in %.1fs%s", self.desc, self.done, self.total, self.unit, seconds, rate)


@contextmanager
def bar(what: str, total: int, unit: str = "seq") -> Iterator[Bar]:
    b = Bar(what, total, unit)
    try:
        yield b
    finally:
        b.close()


def show_on_stderr() -> None:
    """Print the plain progress lines to stderr (the CLI: they are not data, and stdout may be).
    Idempotent; they stop propagating, so `--verbose` does not print them twice."""
    for h in list(log.handlers):
        if getattr(h, _HANDLER_MARK, False):
            log.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    setattr(handler, _HANDLER_MARK, True)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
