"""The Triton kernel of :mod:`legaltune.speed.host_embedding` (imported only where Triton is)."""

import triton
import triton.language as tl


@triton.jit
def gather_rows(table_ptr, ids_ptr, out_ptr, rows, DIM: tl.constexpr, BLOCK: tl.constexpr):
    """``out[i] = table[ids[i]]``, one program per token. ``table`` may be pinned host memory: its
    device mapping is read over the host link, so nothing waits for the CPU. An id outside the
    table gives a row of NaN (the loss shows it) instead of a read outside the table."""
    tok = tl.program_id(0).to(tl.int64)
    row = tl.load(ids_ptr + tok).to(tl.int64)
    inside = (row >= 0) & (row < rows)
    for start in range(0, DIM, BLOCK):  # DIM, the model's width, a constant: one compile per model
        offs = start + tl.arange(0, BLOCK)
        mask = offs < DIM
        x = tl.load(table_ptr + row * DIM + offs, mask=mask & inside, other=float("nan"))
        tl.store(out_ptr + tok * DIM + offs, x, mask=mask)
