"""Per-row e4m3 quantization in one Triton kernel: one program per row, one read and one write.

:func:`legaltune.speed.fp8.quantize_rows` is the reference: scale the row by the per-column scales
(optional), take its amax, divide by amax / 448, clamp, round to e4m3. Compiled by inductor it took
0.45 ms for the input gradient of an 8B gate projection (8,192 × 14,336 bf16) on the H200, about 5×
the time of reading the gradient once and writing its bytes (docs/fp8.md, "Where the time goes").
Here each program holds its whole row in registers (up to 16,384 columns; wider rows are read
twice, in chunks), so the row crosses HBM once. The results are the reference's bit for bit: the
same fp32 products, a correctly rounded division (``div_rn``) and round-to-nearest-even into e4m3.

Whether it runs is ``legaltune.speed.fp8.TRITON_QUANTIZE`` (benchmarks compare the two).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from legaltune.speed.fp8 import _MIN_AMAX, FP8_MAX, INV_FP8_MAX

ONE_PASS_COLS = 16384
CHUNK = 4096


@functools.cache
def available() -> bool:
    """Triton importable (the kernel also runs under ``TRITON_INTERPRET=1`` on a CPU, for tests)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _kernels() -> tuple[Any, Any]:
    from legaltune.speed import fp8_rows_kernels as k

    return k.one_pass, k.two_pass


def quantize_rows_triton(
    t: torch.Tensor,
    col_scale: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float8_e4m3fn,
    num_warps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`legaltune.speed.fp8.quantize_rows` of a 2-D ``t`` (rows contiguous) as one kernel.
    ``dtype`` float32 stores the scaled, clamped values before their rounding to e4m3 (tests: Triton's
    CPU interpreter does not round to e4m3 as the GPU does); ``num_warps``: benchmarks sweep it."""
    import triton

    rows, cols = t.shape
    if t.stride(1) != 1:
        t = t.contiguous()
    q = torch.empty((rows, cols), dtype=dtype, device=t.device)
    scale = torch.empty((rows, 1), dtype=torch.float32, device=t.device)
    if rows == 0:
        return q, scale
    cs = col_scale.reshape(-1).float().contiguous() if col_scale is not None else scale  # unread if absent
    one_pass, two_pass = _kernels()
    common = dict(HAS_CS=col_scale is not None, LO=_MIN_AMAX, HI=FP8_MAX, INV=INV_FP8_MAX)
    args = (t, cs, q, scale, cols, t.stride(0), q.stride(0))
    if cols <= ONE_PASS_COLS:
        block = triton.next_power_of_2(cols)
        warps = num_warps or (16 if block >= 8192 else 4)  # the H200's best (benchmarks/fp8_parts.py)
        one_pass[(rows,)](*args, BLOCK=block, num_warps=warps, **common)
    else:  # the row read twice: once for its amax, once to quantize (the second read mostly from L2)
        chunks = triton.cdiv(cols, CHUNK)
        two_pass[(rows,)](*args, BLOCK=CHUNK, CHUNKS=chunks, num_warps=num_warps or 8, **common)
    return q, scale


__all__ = ["available", "quantize_rows_triton"]
