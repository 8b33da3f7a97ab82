"""GPU: the Triton row quantization gives the reference's e4m3 bytes and scales, and the FP8 input
gradient computed with it is the one computed with the eager reference (``pytest -m gpu``)."""

from __future__ import annotations

import pytest
import torch

from legaltune.speed import fp8
from legaltune.speed.fp8_rows import available, quantize_rows_triton

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or not available(), reason="needs a CUDA GPU and Triton"
    ),
]


@pytest.mark.parametrize(("rows", "cols"), [(1000, 4096), (333, 14336), (64, 20000), (5, 7)])
@pytest.mark.parametrize("col_scale", [False, True])
def test_bytes_and_scales_are_the_references(rows, cols, col_scale):
    t = torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16) * 1e-3
    t[0] = 0
    cs = torch.rand(cols, device="cuda") * 0.01 if col_scale else None
    q, s = quantize_rows_triton(t, cs)
    rq, rs = fp8.quantize_rows(t, cs)
    assert torch.equal(s, rs)
    assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8))
    sliced = torch.randn(rows, cols * 2, device="cuda", dtype=torch.bfloat16)[:, :cols]  # rows strided
    assert torch.equal(
        quantize_rows_triton(sliced, cs)[0].view(torch.uint8),
        fp8.quantize_rows(sliced, cs)[0].view(torch.uint8),
    )


def test_the_input_gradient_is_the_same_with_either_kernel(monkeypatch):
    g = torch.randn(512, 14336, device="cuda", dtype=torch.bfloat16) * 1e-3
    w8, s_w = fp8.quantize_weight(torch.randn(14336, 4096, device="cuda", dtype=torch.bfloat16) * 0.02)
    monkeypatch.setattr(fp8, "COMPILED_QUANTIZE", [False])  # the reference: eager quantize_rows
    monkeypatch.setattr(fp8, "TRITON_QUANTIZE", [False])
    ref = fp8.fp8_input_grad(g, w8, s_w, torch.bfloat16)
    monkeypatch.setattr(fp8, "TRITON_QUANTIZE", [True])
    assert torch.equal(fp8.fp8_input_grad(g, w8, s_w, torch.bfloat16), ref)
