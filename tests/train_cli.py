"""Helpers for tests that run `legaltune train` as a real subprocess (kill -9, two writers, full disk).

The run is the embedded model (SmolLM2-135M) on a few records of the bundled sample, LoRA r=4 on
q/v, 128 tokens, a checkpoint every step: seconds per step on a CPU, checkpoints of a few MB.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def write_config(path: Path, output_dir: Path, *, max_steps: int = 4, **logging: Any) -> Path:
    cfg = {
        "model": {"model_name": "smollm2-135m-instruct", "max_seq_length": 128, "device_map": "cpu"},
        "lora": {
            "r": 4,
            "lora_alpha": 8,
            "target_modules": ["q_proj", "v_proj"],
            "use_gradient_checkpointing": False,
        },
        "training": {
            "per_device_train_batch_size": 1,
            "gradient_accumulation_steps": 1,
            "max_steps": max_steps,
            "learning_rate": 1e-3,
            # a warm-up as long as the run is an error lint that stops `train` before it loads weights
            "warmup_steps": 1 if max_steps > 1 else 0,
            "lr_scheduler_type": "cosine",
        },
        "optimization": {"gradient_checkpointing": False},
        "data": {
            "train_file": str(REPO / "data" / "vi_legal_qa" / "train.jsonl"),
            "use_context": False,
            "max_train_examples": 8,
            "dataloader_num_workers": 0,
            "system_prompt": None,
        },
        "logging": {
            "output_dir": str(output_dir),
            "run_name": "k",
            "logging_steps": 1,
            "save_strategy": "steps",
            "save_steps": 1,
            "save_total_limit": 2,
            "eval_strategy": "no",
            "report_to": ["none"],
            **logging,
        },
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def env() -> dict[str, str]:
    e = dict(os.environ)
    src = str(REPO / "src")
    e["PYTHONPATH"] = src + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    # one thread: bit-identical arithmetic from run to run, and no contention on a shared CPU
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return e


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "legaltune.cli", *args]


def start(*args: str, wrap: list[str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [*(wrap or []), *command(*args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), capture_output=True, text=True, env=env(), timeout=timeout)


def kill9(proc: subprocess.Popen) -> tuple[str, str]:
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    return out, err


def wait_until(
    predicate, proc: subprocess.Popen | None = None, timeout: float = 300, poll: float = 0.002
) -> bool:
    """Poll ``predicate`` until it holds (True), the process ends or the time is up (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(poll)
    return False


def metrics_steps(run_dir: Path) -> list[int]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return [r["step"] for r in rows if "loss" in r]


def summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "train_summary.json").read_text(encoding="utf-8"))
