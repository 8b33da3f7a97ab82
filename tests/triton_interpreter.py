"""Run a check of a Triton kernel on the CPU, through Triton's interpreter, in a process of its own:
the interpreter is chosen by an environment variable read when Triton loads, and the test process
may already hold compiled kernels."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_interpreted(code: str) -> None:
    """Run ``code`` under ``TRITON_INTERPRET=1``; it must print ``ok`` (its stderr is the failure)."""
    env = dict(
        os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
