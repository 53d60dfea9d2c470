"""One writer per run directory.

An exclusive `flock` on `RUN/.lock`, held for as long as a flow run (or `spark iterate`)
works on the run. The kernel drops the lock when the holder dies, SIGKILL included, so a
crashed run never leaves a stale lock behind; the file's text (pid, host, start time) is only
for the error message.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class RunLocked(RuntimeError):
    """Another process is working on this run directory."""


@contextmanager
def run_lock(run_dir: str | Path, wait_s: float = 0.0) -> Iterator[Path]:
    """Hold the run's lock; when another process holds it, wait up to `wait_s` seconds for it
    (polling once a second: queued flow runs take their turn), then RunLocked."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(run_dir / ".lock", wait_s, what=f"{run_dir}: run") as path:
        yield path


@contextmanager
def file_lock(path: str | Path, wait_s: float = 0.0, what: str | None = None) -> Iterator[Path]:
    """An exclusive flock on `path` (created), waited for up to `wait_s` seconds, else RunLocked
    naming `what` (default: the path)."""
    path = Path(path)
    what = what or str(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                    continue
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                waited = f" (waited {wait_s:g}s)" if wait_s else ""
                raise RunLocked(f"{what} is in use by {holder}{waited}; wait for it to finish or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock
