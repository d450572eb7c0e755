"""One run at a time per output: an exclusive lock on the output's state.

Two runs sharing OUTPUT would share its cache and journal and both issue the same requests, so the second
run stops at once and names the first. The lock is `flock` on `OUTPUT.lock`, which the kernel releases
when the holding process ends however it ends, so a killed run never blocks the next one. The lock file
itself stays (deleting it would let two runs lock two different files).
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from distillery.errors import UserError
from distillery.io import sidecar

_held: dict[str, int] = {}


def lock_path(output: str | os.PathLike[str]) -> Path:
    return sidecar(output, ".lock")


def lock_output(output: str | os.PathLike[str]) -> None:
    """Hold OUTPUT's lock until this process exits; taking it again in the same process is a no-op, so a
    program may run several recipes on one output one after the other."""
    path = lock_path(output)
    key = os.path.realpath(path)
    if key in _held:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "a process that is starting"
        os.close(fd)
        raise UserError(f"{output}: another run is using this output ({holder}); wait for it to finish or "
                        "stop it") from None
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode(), 0)
    _held[key] = fd


def release_output(output: str | os.PathLike[str]) -> None:
    """Give OUTPUT's lock back before this process ends: a pooled worker (a Ray task's process) lives on
    after the shard it locked, and the next run's shard must be able to take it."""
    fd = _held.pop(os.path.realpath(lock_path(output)), None)
    if fd is not None:
        os.close(fd)
