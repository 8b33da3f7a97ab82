"""FP8 base weights (legaltune.speed.fp8, fp8_linear) on the CPU: quantization, GEMM error, layouts."""

from __future__ import annotations

import pytest
import torch

from legaltune.speed import fp8
from legaltune.speed.fp8_linear import Fp8Linear, fp8_linear_count, quantize_model_fp8
from tests.conftest import make_tiny_llama


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_weight_round_trip_is_within_e4m3_rounding_and_idempotent():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(48, 64, generator=gen) * torch.logspace(-3, 1, 48).view(
        -1, 1
    )  # rows of very different size
    w[5] = 0.0  # an all-zero row: zeros back, no 0/0
    w8, scale = fp8.quantize_weight(w)
    assert w8.dtype == torch.float8_e4m3fn and w8.shape == w.shape and scale.shape == (48,)
    back = fp8.dequantize_weight(w8, scale, torch.float32)
    assert torch.isfinite(back).all() and back[5].abs().max() == 0
    # every row's largest magnitude lands on ±448, so it is kept within e4m3's rounding (2^-4 relative)
    assert torch.equal(w8.float().abs().amax(dim=1)[w.abs().amax(1) > 0], torch.full((47,), 448.0))
    # normal values: relative error ≤ 2^-4; below e4m3's normal range (2^-6 · scale): absolute ≤ 2^-10 · scale
    bound = 2**-4 * w.abs() + 2**-10 * scale.view(-1, 1)
    assert ((back - w).abs() <= bound).all()
    w8_again, scale_again = fp8.quantize_weight(back)
    assert torch.equal(w8_again.view(torch.uint8), w8.view(torch.uint8))  # values already on the grid
    torch.testing.assert_close(scale_again, scale)


# (tokens, in, out, relative error bound of forward and input gradient vs the fp32 layer).
# Gaussian activations and weights, per-token / per-channel scales: measured 3.5-3.8 % (bf16: 0.3 %).
ERROR_TABLE = [
    (64, 64, 128, 0.045),
    (256, 576, 1536, 0.045),  # SmolLM2-135M's gate/up
    (128, 1536, 576, 0.045),  # its down_proj
    (32, 4096, 1024, 0.045),  # Llama-3.1-8B's k/v
]


@pytest.mark.parametrize("tokens,d_in,d_out,bound", ERROR_TABLE)
@pytest.mark.parametrize("kind", ["reference", "scaled_mm"])
def test_layer_error_table_vs_the_fp32_layer(tokens, d_in, d_out, bound, kind, fp8_backend):
    fp8_backend(kind)
    gen = torch.Generator().manual_seed(tokens + d_in)
    lin = torch.nn.Linear(d_in, d_out, bias=True)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(d_out, d_in, generator=gen) * d_in**-0.5)
    x = torch.randn(2, tokens // 2, d_in, generator=gen, requires_grad=True)
    g = torch.randn(2, tokens // 2, d_out, generator=gen)
    ref = lin(x)
    grad_ref = torch.autograd.grad(ref, x, g)[0]
    layer = Fp8Linear.from_linear(lin)
    out = layer(x)
    grad = torch.autograd.grad(out, x, g)[0]
    assert out.shape == ref.shape and grad.shape == x.shape
    assert _rel(out, ref) <= bound and _rel(grad, grad_ref) <= bound
    assert _rel(out, ref) > 1e-3  # really quantized (an fp32 fallback would be ~1e-7)
    assert layer.weight.grad is None and not layer.weight.requires_grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scaled_mm_call_computes_what_the_reference_computes(dtype, fp8_backend):
    """The torch._scaled_mm path (CPU kernel; layouts checked as CUDA requires them) against the
    dequantize-then-matmul reference: the same quantized operands, so equal up to sum order."""
    gen = torch.Generator().manual_seed(1)
    w8, scale = fp8.quantize_weight(torch.randn(96, 128, generator=gen))
    x = torch.randn(40, 128, generator=gen).to(dtype)
    g = torch.randn(40, 96, generator=gen).to(dtype)
    got = {}
    for kind in ("scaled_mm", "reference"):
        fp8_backend(kind)
        got[kind] = (fp8.fp8_linear(x, w8, scale, dtype), fp8.fp8_input_grad(g, w8, scale, dtype))
    tol = {torch.float32: 1e-5, torch.bfloat16: 8e-3}[dtype]
    for a, b in zip(got["scaled_mm"], got["reference"], strict=True):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol * b.float().abs().max().item())


def test_input_grad_reads_a_kept_transpose_instead_of_copying(fp8_backend):
    """fp8_input_grad with ``w8_t`` (quantization.fp8_keep_transpose) equals the one that makes
    its own transposed copy, and really reads ``w8_t``: a different one changes the result."""
    fp8_backend("scaled_mm")
    gen = torch.Generator().manual_seed(3)
    w8, scale = fp8.quantize_weight(torch.randn(96, 128, generator=gen))
    g = torch.randn(40, 96, generator=gen)
    copied = fp8.fp8_input_grad(g, w8, scale, torch.float32)
    kept = fp8.fp8_input_grad(g, w8, scale, torch.float32, w8.t().contiguous())
    torch.testing.assert_close(kept, copied, rtol=0, atol=0)
    other = fp8.quantize_weight(torch.randn(96, 128, generator=gen))[0].t().contiguous()
    assert not torch.allclose(fp8.fp8_input_grad(g, w8, scale, torch.float32, other), copied)


def test_layer_keeps_its_transpose_out_of_the_state_dict_and_computes_the_same(fp8_backend):
    fp8_backend("scaled_mm")
    gen = torch.Generator().manual_seed(4)
    layer = Fp8Linear.from_linear(torch.nn.Linear(64, 32, bias=False))
    x = torch.randn(8, 64, generator=gen, requires_grad=True)
    g = torch.randn(8, 32, generator=gen)
    before = torch.autograd.grad(layer(x), x, g)[0]
    assert layer.weight_t is None
    layer.keep_transpose()
    assert layer.weight_t.shape == (64, 32) and layer.weight_t.is_contiguous()
    assert set(layer.state_dict()) == {"weight", "weight_scale"}  # a copy of the weight: never saved
    torch.testing.assert_close(torch.autograd.grad(layer(x), x, g)[0], before, rtol=0, atol=0)


def test_scaled_mm_refuses_layouts_cuda_rejects():
    a8, sa = fp8.quantize_rows(torch.randn(8, 32))
    b8, sb = fp8.quantize_rows(torch.randn(48, 32))
    with pytest.raises(RuntimeError, match="column-major"):
        fp8.scaled_mm(a8, b8.t().contiguous(), sa, sb.view(1, -1), torch.float32, fast_accum=False)
    c8, sc = fp8.quantize_rows(torch.randn(8, 24))
    d8, sd = fp8.quantize_rows(torch.randn(48, 24))
    with pytest.raises(RuntimeError, match="multiples of 16"):
        fp8.scaled_mm(c8, d8.t(), sc, sd.view(1, -1), torch.float32, fast_accum=False)


def test_backend_by_device_and_shape():
    w8 = torch.zeros(32, 48, dtype=fp8.FP8)
    assert fp8.backend(torch.zeros(2, 48), w8, torch.bfloat16) == "reference"  # CPU
    if torch.cuda.is_available():  # pragma: no cover - the GPU file tests this
        pytest.skip("CUDA rules are tested in tests/gpu/test_gpu_fp8.py")


def test_quantize_model_converts_decoder_projections_only():
    model = make_tiny_llama(97, layers=2, seed=4)
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    assert quantize_model_fp8(model) == 2 * 7
    assert fp8_linear_count(model) == 14 and type(model.lm_head) is torch.nn.Linear
    q = model.model.layers[0].self_attn.q_proj
    assert (
        isinstance(q, Fp8Linear)
        and q.weight.dtype == torch.float8_e4m3fn
        and q.compute_dtype == torch.float32
    )
    assert quantize_model_fp8(model) == 0  # idempotent: converted layers are not plain nn.Linear
    with torch.no_grad():
        out = model(input_ids=ids).logits
    assert 1e-4 < _rel(out, ref) < 0.05


def test_quantizing_a_peft_model_converts_base_layers_not_adapters():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        make_tiny_llama(97, layers=1, seed=5), LoraConfig(r=4, target_modules=["q_proj", "up_proj"])
    )
    assert quantize_model_fp8(model) == 7
    q = model.get_base_model().model.layers[0].self_attn.q_proj
    assert isinstance(q.base_layer, Fp8Linear) and type(q.lora_A["default"]) is torch.nn.Linear
    assert q.lora_A["default"].weight.dtype == torch.float32 and q.lora_A["default"].weight.requires_grad
