"""Parent side of the child processes: starting rows (prestarted or not), forwarding their output,
stopping them, and the background saver process."""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

# Nothing heavy at module level: an Unsloth child must import unsloth before torch/transformers.
from bench_settings import MARK, SCRIPT, SRC

# --------------------------------------------------------------------------------------------
# Child processes and the saver, as the parent sees them
# --------------------------------------------------------------------------------------------


@dataclass
class Saver:
    """The background process writing the local model directory, and when it ran."""

    proc: subprocess.Popen[bytes]
    started: float
    ended: float | None = None

    def watch(self) -> None:
        """Note when the saver ends (a daemon thread), to flag the rows that ran beside it."""
        self.proc.wait()
        self.ended = time.monotonic()

    def running_during(self, start: float, end: float) -> bool:
        return self.started < end and (self.ended is None or self.ended > start)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # legaltune importable from the checkout whatever the caller's PYTHONPATH (and the cwd is a scratch dir).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    # No hub here (the GPU machine has no network): fail fast instead of waiting for timeouts;
    # Unsloth otherwise pings the hub for statistics on load.
    for key in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "UNSLOTH_DISABLE_STATISTICS",
    ):
        env.setdefault(key, "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _pump(
    stream: Any, prefix: str, records: list[dict[str, Any]] | None, tail: collections.deque[str]
) -> None:
    """Forward a child's output line by line (live progress), collecting result lines."""
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\n")
        if records is not None and line.startswith(MARK):
            records.append(json.loads(line[len(MARK) :]))
            continue
        tail.append(line)
        print(f"{prefix}{line}", file=sys.stderr, flush=True)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a child and whatever it started (it runs in its own process group)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Child:
    """One row's process. Started early (``prestart``), it imports its libraries while the previous
    row measures and waits for ``go()`` before it touches the GPU; otherwise it runs at once."""

    def __init__(
        self, variant: str, args: argparse.Namespace, cwd: str, *, prestart: bool, deadline: float = 0.0
    ) -> None:
        self.variant, self.waiting = variant, prestart
        cmd = [sys.executable, str(SCRIPT), "--child", variant, "--arch", args.arch]
        cmd += ["--shapes", args.shapes, "--warmup", str(args.warmup), "--steps", str(args.steps)]
        if args.layers:
            cmd += ["--layers", str(args.layers)]
        if getattr(args, "find_max_seq", None):
            cmd += ["--find-max-seq", str(args.find_max_seq)]
        if args.model_dir:
            cmd += ["--model-dir", str(args.model_dir)]
        if getattr(args, "profile", None):
            cmd += ["--profile", str(args.profile)]
        if getattr(args, "cprofile", None):
            cmd += ["--cprofile", str(args.cprofile)]
        if getattr(args, "sync_sites", False):
            cmd += ["--sync-sites"]
        # A prestarted child learns its deadline (time.time() by which it must be done) with "go".
        cmd += ["--wait-go"] if prestart else ["--deadline", str(deadline)]
        env = _child_env()
        if args.jobs > 1:
            # Parallel smoke rows would each start one thread per core and spin against each other.
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE if prestart else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,  # its own process group: a timeout stops it and all it started
        )
        self.records: list[dict[str, Any]] = []
        self.tail: collections.deque[str] = collections.deque(maxlen=8)
        prefix = f"[{variant}] "
        self.pumps = [
            threading.Thread(
                target=_pump, args=(self.proc.stdout, prefix, self.records, self.tail), daemon=True
            ),
            threading.Thread(target=_pump, args=(self.proc.stderr, prefix, None, self.tail), daemon=True),
        ]
        for pump in self.pumps:
            pump.start()

    def _tell(self, line: str) -> None:
        if not self.waiting:
            return
        self.waiting = False
        assert self.proc.stdin is not None
        # The child may already have exited (a row it had to skip): nothing to tell then.
        with contextlib.suppress(BrokenPipeError, OSError):
            self.proc.stdin.write(line.encode())
            self.proc.stdin.close()

    def go(self, deadline: float) -> None:
        self._tell(f"go {deadline}\n")

    def cancel(self) -> None:
        self._tell("stop\n")
        _kill_group(self.proc)
        for pump in self.pumps:
            pump.join(timeout=10)

    def wait(self, timeout: float) -> tuple[list[dict[str, Any]], str]:
        """Its result records and, if it failed, why."""
        problem = ""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(self.proc)
            problem = f"timeout: stopped after {timeout:.0f} s (--budget-s)"
        for pump in self.pumps:
            pump.join(timeout=10)
        if not problem and self.proc.returncode != 0:
            last = next((line for line in reversed(self.tail) if line.strip()), "")
            problem = f"error: child exited with status {self.proc.returncode}: {last[:300]}"
        return self.records, problem


def start_saver(args: argparse.Namespace) -> Saver:
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--save-model",
        str(args.model_dir),
        "--arch",
        args.arch,
    ]
    if args.layers:
        cmd += ["--layers", str(args.layers)]
    env = _child_env()
    env["CUDA_VISIBLE_DEVICES"] = ""  # the saver works on the CPU only: no context, no GPU memory
    print(f"saving the random model to {args.model_dir} in the background (once; reused later)", flush=True)
    proc = subprocess.Popen(cmd, env=env, stdout=sys.stderr, start_new_session=True)
    saver = Saver(proc, time.monotonic())
    threading.Thread(target=saver.watch, daemon=True).start()
    return saver
