"""One writer per run: RUN/train.lock, held with flock for as long as `legaltune train` runs.

The file says who holds it (pid, host, process start, command). A second writer fails at once
naming that holder. The flock goes away with its process however it ends (kill -9 included), so a
lock file whose flock is free belongs to a dead writer: it is taken over, with a notice. A lock
written on another host cannot be checked from here and is never taken over silently.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from legaltune.errors import UserError


class RunLocked(UserError):
    """Another process is writing this run."""


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), to tell a reused pid apart; Linux only."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _process_start(pid)
    return start is None or now is None or now == start


def _describe(holder: dict[str, Any]) -> str:
    return (
        f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
        + (f" ({holder['command']})" if holder.get("command") else "")
    )


class RunLock:
    """An acquired RUN/train.lock; ``release()`` (or leaving the ``with`` block) removes it."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    @classmethod
    def acquire(cls, path: Path, notice: Callable[[str], None] | None = None) -> RunLock:
        notice = notice or (lambda m: print(m, file=sys.stderr))
        run = path.parent
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                raise _busy(path, holder) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file between our open and our flock: try the new one
        holder = _read(fd)
        if holder:
            host = socket.gethostname()
            if holder.get("host") not in (None, host):
                os.close(fd)
                raise RunLocked(
                    f"{run} has a lock from another machine: {_describe(holder)}. legaltune cannot check a process "
                    f"there; if it is not training this run any more, delete {path} and run again"
                )
            pid = holder.get("pid")
            if isinstance(pid, int) and pid != os.getpid() and _alive(pid, holder.get("pid_start")):
                os.close(fd)  # alive yet not holding the flock: a file system without flock; trust the pid
                raise RunLocked(f"{run} is being written by {_describe(holder)}; the lock is {path}")
            notice(f"taking over the stale lock {path}: {_describe(holder)} is no longer running")
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "pid_start": _process_start(os.getpid()),
            "command": " ".join(sys.argv[:6])[:300],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        return cls(path, fd)

    def release(self) -> None:
        if self._fd < 0:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding the flock: nobody else owns this file
        finally:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _busy(path: Path, holder: dict[str, Any]) -> RunLocked:
    return RunLocked(
        f"{path.parent} is being written by another legaltune train: {_describe(holder)}. Wait for it to "
        f"finish (or stop it), or train into another run; the lock is {path}"
    )


def check_free(path: Path) -> None:
    """Raise RunLocked now if a live writer holds ``path`` (a fast check before the slow imports; the
    lock itself is taken later with ``RunLock.acquire``)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(path, _read(fd)) from None
    finally:
        os.close(fd)


def read_holder(path: Path) -> dict[str, Any]:
    """Who holds (or last held) the lock at ``path``; {} when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return {}
    try:
        return _read(fd)
    finally:
        os.close(fd)


def _read(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
