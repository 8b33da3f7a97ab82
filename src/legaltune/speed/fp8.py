"""FP8 (e4m3) GEMMs against frozen base weights: quantization, and the two products LoRA needs.

A frozen base weight ``W`` (out × in) is stored as ``float8_e4m3fn`` with one fp32 scale per output
channel: ``W ≈ W8 · s_w[:, None]``, ``s_w = amax(|W_row|) / 448``. LoRA never changes it, so it is
quantized once at load time. Two GEMMs per projection touch it:

- forward ``x Wᵀ``: the activations are quantized per token (one scale per row of ``x``, computed
  from that row's amax at every call: dynamic scaling), and ``torch._scaled_mm`` multiplies the e4m3
  operands with the row scales of ``x`` and the column scales ``s_w`` applied in its epilogue;
- input gradient ``g W``: the weight's scale runs along the contraction, so it is folded into the
  gradient first (``g · s_w``), which is then quantized per token; the weight enters as ``W8`` with
  unit scales. cuBLASLt wants that operand column-major, so ``W8`` is transposed into a transient
  copy (1 byte per weight, once per backward).

The weight gradient of a frozen base is never computed; LoRA's A/B products stay in the compute
dtype (:mod:`legaltune.speed.lora_math`).

Backends: ``scaled_mm`` (CUDA, compute capability ≥ 8.9, bf16 outputs, in/out sizes multiples of
16) or ``reference``: the same quantized operands dequantized to fp32 and multiplied there. The
reference computes what the FP8 GEMM computes up to the order of its fp32 sums (CPU tests check it
against CPU ``torch._scaled_mm``), so CPU runs see the FP8 error a GPU run sees, without its speed.

Why not TorchAO: its ``Float8DynamicActivationFloat8WeightConfig`` stores exactly this (e4m3 weights,
row scales) but is inference-only — backward fails on ``_scaled_mm``'s missing derivative (pytorch/ao
issue 4376) — and it refuses CPUs; ``convert_to_float8_training`` keeps bf16 weights and re-casts
them every step (no memory saved). Neither enters legaltune's fused LoRA op, which owns forward and
backward already; the quantization here is a few tensor ops around ``torch._scaled_mm``.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
# A row's scale is amax × (1/448), a multiplication: PyTorch's CUDA division by a Python scalar is
# one too (a·(1/b), its BinaryDivTrueKernel), its CPU one a true division, so dividing would give
# scales one ulp apart on the two devices. Written as a product, CPU, CUDA and the Triton kernel agree.
INV_FP8_MAX = 1.0 / FP8_MAX
# The smallest amax a row is scaled by: an all-zero row quantizes to zeros instead of 0/0.
_MIN_AMAX = 1e-12
# cuBLASLt's FP8 GEMM: both sizes of the second operand (the weight's in and out) multiples of 16.
ALIGN = 16
# torchao's choice: fast accumulation for the forward GEMM, full fp32 accumulation for gradients.
FAST_ACCUM_FORWARD = True
FAST_ACCUM_GRAD = False
# Tests and benchmarks force a backend ("scaled_mm" / "reference"); None = by device.
BACKEND: list[str | None] = [None]
# The per-token quantization of activations, fused into one kernel by torch.compile on CUDA
# (eager it is ~5 passes over the activation and an fp32 copy); benchmarks turn it off to compare.
COMPILED_QUANTIZE = [True]
# The same quantization as one hand-written Triton kernel (legaltune.speed.fp8_rows: one read of the
# row, bit-identical to quantize_rows), used where Triton is: on the H200 it took an 8B step with FP8
# bases from 19,144 to 20,276 tok/s (docs/fp8.md); False falls back to inductor's kernel.
TRITON_QUANTIZE = [True]


def quantize_rows(
    t: torch.Tensor, col_scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t8, scale)`` with ``t · col_scale ≈ t8 · scale``: e4m3 values, one fp32 scale per row
    (shape ``[rows, 1]``); ``col_scale`` (one per column, optional) multiplies ``t`` first, in fp32."""
    t32 = t.float() if col_scale is None else t.float() * col_scale.view(1, -1)
    amax = t32.abs().amax(dim=1, keepdim=True).clamp_min(_MIN_AMAX)
    scale = amax * INV_FP8_MAX
    return (t32 / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8), scale


@functools.cache
def _compiled_quantize() -> Any:
    return torch.compile(quantize_rows, dynamic=True)


def quantize_activation(
    t: torch.Tensor, col_scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`quantize_rows` of a 2-D activation or gradient, as one fused kernel on CUDA."""
    from legaltune.speed.compile import compile_supported

    if t.is_cuda and TRITON_QUANTIZE[0] and not torch.compiler.is_compiling():
        from legaltune.speed.fp8_rows import available, quantize_rows_triton

        if available():
            return quantize_rows_triton(t, col_scale)
    if t.is_cuda and COMPILED_QUANTIZE[0] and compile_supported() and not torch.compiler.is_compiling():
        return _compiled_quantize()(t, col_scale)
    return quantize_rows(t, col_scale)


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A dense ``out × in`` weight as ``(W8, s_w)``: e4m3 values and one fp32 scale per output channel."""
    w8, scale = quantize_rows(weight.detach())
    return w8, scale.view(-1)


def dequantize_weight(w8: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``W8 · s_w[:, None]`` in ``dtype`` (merges, exports and the reference path's checks)."""
    return (w8.float() * scale.view(-1, 1)).to(dtype)


def is_fp8(weight: torch.Tensor) -> bool:
    return weight.dtype == FP8


@functools.cache
def _device_supports_fp8(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (8, 9)


def backend(x: torch.Tensor, w8: torch.Tensor, dtype: torch.dtype) -> str:
    """``scaled_mm`` where cuBLASLt's FP8 GEMM takes these operands, else ``reference``."""
    forced = BACKEND[0]
    if forced is not None:
        return forced
    if not x.is_cuda or dtype != torch.bfloat16:
        return "reference"
    if w8.shape[0] % ALIGN or w8.shape[1] % ALIGN:
        return "reference"
    return "scaled_mm" if _device_supports_fp8(x.device.index or 0) else "reference"


def fp8_gemm_label(device: torch.device) -> str:
    """How FP8 GEMMs run on ``device``, for the speed report."""
    probe = torch.empty(0, device=device)
    kind = backend(probe, torch.empty(ALIGN, ALIGN, dtype=FP8, device=device), torch.bfloat16)
    if kind == "scaled_mm":
        return "torch._scaled_mm, per-token activation scales"
    return "reference path: dequantized to fp32 per matmul, no FP8 tensor cores on this device"


def scaled_mm(
    a8: torch.Tensor,
    b8: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    dtype: torch.dtype,
    *,
    fast_accum: bool,
) -> torch.Tensor:
    """``(a8 · scale_a) @ (b8 · scale_b)`` by ``torch._scaled_mm`` with row-wise scales.

    The layout rules of the CUDA kernel are checked here on every device (the CPU kernel accepts
    more), so a CPU test of the call catches what would fail on the GPU: ``b8`` column-major
    (``a8`` is made row-major), contraction and output sizes multiples of 16, fp32 scales of shape
    ``[M, 1]`` and ``[1, N]``."""
    m, k = a8.shape
    n = b8.shape[1]
    if a8.stride(1) != 1:  # an activation quantized from a column slice: copy (a weight must never need one)
        a8 = a8.contiguous()
    if b8.stride(0) != 1:
        raise RuntimeError(f"FP8 GEMM layout: b {tuple(b8.stride())} must be column-major")
    if k % ALIGN or n % ALIGN:
        raise RuntimeError(f"FP8 GEMM sizes: {m}×{k} @ {k}×{n}; in and out must be multiples of {ALIGN}")
    if scale_a.shape != (m, 1) or scale_b.shape != (1, n):
        raise RuntimeError(
            f"FP8 GEMM scales: {tuple(scale_a.shape)} and {tuple(scale_b.shape)}, want ({m}, 1) and (1, {n})"
        )
    return torch._scaled_mm(
        a8, b8, scale_a=scale_a, scale_b=scale_b, out_dtype=dtype, use_fast_accum=fast_accum
    )


@functools.cache
def _ones(n: int, device: torch.device) -> torch.Tensor:
    return torch.ones(1, n, dtype=torch.float32, device=device)


def fp8_linear(
    x2: torch.Tensor,
    w8: torch.Tensor,
    scale: torch.Tensor,
    dtype: torch.dtype,
    quantized: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``x2 Wᵀ`` (``tokens × out`` in ``dtype``) for ``W = W8 · s_w``; ``quantized``: ``x2`` already
    quantized by :func:`quantize_activation` (projections sharing an input quantize it once)."""
    x8, sx = quantized if quantized is not None else quantize_activation(x2)
    if backend(x2, w8, dtype) == "scaled_mm":
        return scaled_mm(x8, w8.t(), sx, scale.view(1, -1), dtype, fast_accum=FAST_ACCUM_FORWARD)
    return ((x8.float() * sx) @ (w8.float() * scale.view(-1, 1)).t()).to(dtype)


def fp8_input_grad(
    g: torch.Tensor,
    w8: torch.Tensor,
    scale: torch.Tensor,
    dtype: torch.dtype,
    w8_t: torch.Tensor | None = None,
) -> torch.Tensor:
    """``g W`` (``tokens × in`` in ``dtype``) for ``W = W8 · s_w``: the weight scale folded into ``g``.

    ``w8_t``: ``W8ᵀ`` kept contiguous (``quantization.fp8_keep_transpose``); otherwise a transient copy
    is made here (0.36 ms for an 8B MLP projection on an H200, about the FP8 GEMM's gain)."""
    g8, sg = quantize_activation(g, scale)
    if backend(g, w8, dtype) == "scaled_mm":
        # b must be column-major [out, in]: the transpose of a contiguous [in, out] copy
        if w8_t is None:
            w8_t = w8.t().contiguous()
        return scaled_mm(g8, w8_t.t(), sg, _ones(w8.shape[1], g.device), dtype, fast_accum=FAST_ACCUM_GRAD)
    return ((g8.float() * sg) @ w8.float()).to(dtype)


def fp8_compute_dtype(x: torch.Tensor, default: torch.dtype) -> torch.dtype:
    """The dtype an FP8 projection computes and returns in: autocast's, else the input's floating dtype."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype if x.dtype in (torch.bfloat16, torch.float16, torch.float32) else default


__all__ = [
    "BACKEND",
    "FP8",
    "FP8_MAX",
    "backend",
    "dequantize_weight",
    "fp8_compute_dtype",
    "fp8_gemm_label",
    "fp8_input_grad",
    "fp8_linear",
    "is_fp8",
    "quantize_activation",
    "quantize_rows",
    "quantize_weight",
    "scaled_mm",
]
