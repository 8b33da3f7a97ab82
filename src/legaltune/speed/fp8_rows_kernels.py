"""The Triton kernels of :mod:`legaltune.speed.fp8_rows` (imported only where Triton is)."""

import triton
import triton.language as tl


@triton.jit
def load_scaled(t_row, cs_ptr, offs, mask, HAS_CS: tl.constexpr):
    x = tl.load(t_row + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_CS:
        x = x * tl.load(cs_ptr + offs, mask=mask, other=0.0)
    return x


@triton.jit
def store_quantized(q_row, x, scale, offs, mask, HI: tl.constexpr):
    y = tl.minimum(tl.maximum(tl.math.div_rn(x, scale), -HI), HI)
    tl.store(q_row + offs, y.to(q_row.dtype.element_ty), mask=mask)


@triton.jit
def one_pass(t_ptr, cs_ptr, q_ptr, s_ptr, cols, stride_t, stride_q,
             HAS_CS: tl.constexpr, BLOCK: tl.constexpr, LO: tl.constexpr, HI: tl.constexpr, INV: tl.constexpr):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < cols
    x = load_scaled(t_ptr + row * stride_t, cs_ptr, offs, mask, HAS_CS)
    scale = tl.maximum(tl.max(tl.abs(x), axis=0), LO) * INV
    store_quantized(q_ptr + row * stride_q, x, scale, offs, mask, HI)
    tl.store(s_ptr + row, scale)


@triton.jit
def two_pass(t_ptr, cs_ptr, q_ptr, s_ptr, cols, stride_t, stride_q, HAS_CS: tl.constexpr,
             BLOCK: tl.constexpr, CHUNKS: tl.constexpr, LO: tl.constexpr, HI: tl.constexpr,
             INV: tl.constexpr):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    amax = tl.zeros((BLOCK,), dtype=tl.float32)
    for chunk in range(CHUNKS):
        offs = chunk * BLOCK + tl.arange(0, BLOCK)
        amax = tl.maximum(
            amax, tl.abs(load_scaled(t_ptr + row * stride_t, cs_ptr, offs, offs < cols, HAS_CS))
        )
    scale = tl.maximum(tl.max(amax, axis=0), LO) * INV
    for chunk in range(CHUNKS):
        offs = chunk * BLOCK + tl.arange(0, BLOCK)
        x = load_scaled(t_ptr + row * stride_t, cs_ptr, offs, offs < cols, HAS_CS)
        store_quantized(q_ptr + row * stride_q, x, scale, offs, offs < cols, HI)
    tl.store(s_ptr + row, scale)
