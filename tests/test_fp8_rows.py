"""The Triton row quantization (speed/fp8_rows.py) against the reference, on the CPU through
Triton's interpreter where Triton is installed (the GPU bytes are checked in tests/gpu). The
interpreter does not round to e4m3 as a GPU does, so here the kernel stores the scaled, clamped
values before that rounding (``dtype=float32``), and the scales: both must be the reference's.
The interpreter is chosen by an environment variable read when Triton loads, so the check runs in
a process of its own (this one may hold compiled kernels)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

CHECK = """
import torch
from legaltune.speed.fp8_rows import quantize_rows_triton
for rows, cols, with_scale in ((7, 100, False), (5, 300, True), (3, 20000, True)):
    g = torch.Generator().manual_seed(rows)
    t = (torch.randn(rows, cols, generator=g) * 1e-3).to(torch.bfloat16)
    t[0] = 0  # an all-zero row: scaled by the smallest amax, not 0/0
    cs = torch.rand(cols, generator=g) * 0.01 if with_scale else None
    values, scale = quantize_rows_triton(t, cs, torch.float32)
    t32 = t.float() if cs is None else t.float() * cs.view(1, -1)
    amax = t32.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    assert torch.equal(scale, amax / 448.0), (rows, cols)
    assert torch.equal(values, (t32 / scale).clamp(-448.0, 448.0)), (rows, cols)
    assert not values[0].any()
print("ok")
"""


def test_scales_and_scaled_values_are_the_references():
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(
        os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])
    )
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
