"""Real server processes for tests: `legaltune serve` / `legaltune ui` on a free localhost port.

The server runs as a child process of the test (the installed CLI code, through ``python -m
legaltune.cli``), is polled on ``/health`` until it answers, and is stopped with SIGINT (then SIGKILL
if it hangs), so a test sees exactly what a user would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
# How tests run Debian's chromium: headless, sandbox off (root), nothing fetched from the network.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def http(method: str, url: str, body: bytes | dict | None = None, timeout: float = 60) -> tuple[int, Any]:
    """(status, parsed JSON body) of one request; a non-JSON body comes back as text."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_embedded_run(root: Path, embedded_dir: Path, *, lora_std: float = 0.01, seed: int = 1) -> Path:
    """root/run: a legaltune run directory over the embedded SmolLM2 with a small random LoRA adapter
    (q/v projections, r=4), so that tuned and base answer alike but not identically."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from legaltune.config.load import build_config, save_config

    cfg = build_config(
        {
            "model": {"model_name": str(embedded_dir), "device_map": "cpu", "attn_implementation": "sdpa"},
            "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
            "logging": {"output_dir": str(root), "report_to": ["none"]},
        }
    )
    run = root / "run"
    save_config(cfg, run / "config.yaml")
    model = AutoModelForCausalLM.from_pretrained(str(embedded_dir))
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, lora_std)
    peft_model.save_pretrained(run / "adapter")
    AutoTokenizer.from_pretrained(str(embedded_dir)).save_pretrained(run / "adapter")
    return run


@contextlib.contextmanager
def running(args: list[str], *, startup_s: float = 240.0, log: Path | None = None) -> Iterator[str]:
    """Run ``legaltune ARGS --port P`` and yield ``http://127.0.0.1:P`` once /health answers 200."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    out = open(log, "w", encoding="utf-8") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "legaltune.cli", *args, "--port", str(port)], env=env, stdout=out, stderr=out
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                text = log.read_text(encoding="utf-8") if log else ""
                raise RuntimeError(f"server exited with {proc.returncode} before answering:\n{text[-3000:]}")
            with contextlib.suppress(OSError):
                if http("GET", f"{url}/health", timeout=2)[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not answer /health within {startup_s} s")
            time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()
