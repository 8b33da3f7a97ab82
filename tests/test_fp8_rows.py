"""The Triton row quantization (speed/fp8_rows.py) against the reference, on the CPU through
Triton's interpreter where Triton is installed (the GPU bytes are checked in tests/gpu). The
interpreter does not round to e4m3 as a GPU does, so here the kernel stores the scaled, clamped
values before that rounding (``dtype=float32``), and the scales: both must be the reference's."""

from __future__ import annotations

import pytest

from tests.triton_interpreter import run_interpreted

pytest.importorskip("triton")

CHECK = """
import torch
from legaltune.speed.fp8 import quantize_rows
from legaltune.speed.fp8_rows import quantize_rows_triton
for rows, cols, with_scale in ((7, 100, False), (5, 300, True), (3, 20000, True)):
    g = torch.Generator().manual_seed(rows)
    t = (torch.randn(rows, cols, generator=g) * 1e-3).to(torch.bfloat16)
    t[0] = 0  # an all-zero row: scaled by the smallest amax, not 0/0
    cs = torch.rand(cols, generator=g) * 0.01 if with_scale else None
    values, scale = quantize_rows_triton(t, cs, torch.float32)
    t32 = t.float() if cs is None else t.float() * cs.view(1, -1)
    assert torch.equal(scale, quantize_rows(t, cs)[1]), (rows, cols)
    assert torch.equal(values, (t32 / scale).clamp(-448.0, 448.0)), (rows, cols)
    assert not values[0].any()
print("ok")
"""


def test_scales_and_scaled_values_are_the_references():
    run_interpreted(CHECK)
