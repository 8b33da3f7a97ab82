"""NF4 dequantization of a bitsandbytes 4-bit weight in one Triton kernel.

The fused LoRA path dequantizes every 4-bit base weight right before its matmul, forward and
backward (plus the MLP's gate/up again in the checkpoint recompute): ~16 dequantizations per
Llama-3.1-8B layer and step, 35 GB of bf16 written per 8k-token step. bitsandbytes does it in two
launches when the block scales are themselves quantized (``double quant``, the seed's QLoRA
setting): one dequantizes the scales into an fp32 buffer, the next the weight. Here one kernel
reads the packed weight, the quantized scales and their second-level scales and writes the weight;
the arithmetic is bitsandbytes' (fp32 ``code[q] * absmax``, rounded once to the output dtype), so
the result is bitwise equal (GPU test).

Anything else — FP4, a CPU tensor, no Triton — goes to ``bitsandbytes.functional.dequantize_4bit``.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from legaltune.speed.compile import compile_supported

# Output elements per program: 2 KiB of bf16 written, 512 B of packed weight read. The H100 sweep
# (`benchmarks/nf4_dequant.py --sweep`, Llama-3.1-8B's 7 projections): 1,848 GB/s at 1024 x 4 warps,
# 1,701 at 4096 x 4 — ~1.5 ms of an 8k-token QLoRA step.
_BLOCK = 1024
_WARPS = 4


@functools.cache
def _kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def nf4_dequant(
        packed_ptr,
        out_ptr,
        code_ptr,  # the 16 NF4 levels, fp32
        absmax_ptr,  # per block: fp32, or uint8 codes into code2 when NESTED
        code2_ptr,  # NESTED: the 256 levels of the scales' 8-bit code, fp32
        absmax2_ptr,  # NESTED: fp32 scale per BLOCKSIZE2 quantized scales
        offset_ptr,  # NESTED: added to every dequantized scale (a one-element tensor: no host sync)
        n_out,
        BLOCKSIZE: tl.constexpr,
        BLOCKSIZE2: tl.constexpr,
        NESTED: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        # one byte holds two consecutive elements: the high nibble first
        byte = pid * (BLOCK // 2) + tl.arange(0, BLOCK // 2)
        valid = byte * 2 < n_out
        q = tl.load(packed_ptr + byte, mask=valid, other=0)
        block = (byte * 2) // BLOCKSIZE
        if NESTED:
            scale_q = tl.load(absmax_ptr + block, mask=valid, other=0).to(tl.int32)
            scale = tl.load(code2_ptr + scale_q) * tl.load(
                absmax2_ptr + block // BLOCKSIZE2, mask=valid, other=0.0
            )
            scale = scale + tl.load(offset_ptr)
        else:
            scale = tl.load(absmax_ptr + block, mask=valid, other=0.0)
        hi = tl.load(code_ptr + (q >> 4).to(tl.int32)) * scale
        lo = tl.load(code_ptr + (q & 15).to(tl.int32)) * scale
        pair = tl.join(hi, lo).to(out_ptr.dtype.element_ty)  # [BLOCK // 2, 2]: element order
        idx = tl.join(byte * 2, byte * 2 + 1)
        tl.store(out_ptr + idx, pair, mask=idx < n_out)

    return nf4_dequant


def _tables(weight: torch.Tensor, quant_state: Any) -> tuple[torch.Tensor, ...]:
    """(code, code2, absmax2, offset) on the weight's device as fp32, prepared once per quantization
    state (a weight's state never changes; converting on every call would copy the small tables
    host to device and read the offset back, a sync, ~16 times per layer and step)."""
    cached = getattr(quant_state, "_legaltune_nf4_tables", None)
    if cached is not None and cached[0].device == weight.device:
        return cached
    code = quant_state.code.to(device=weight.device, dtype=torch.float32)
    if quant_state.nested:
        state2 = quant_state.state2
        code2 = state2.code.to(device=weight.device, dtype=torch.float32)
        absmax2 = state2.absmax.to(device=weight.device, dtype=torch.float32)
        offset = torch.as_tensor(quant_state.offset, dtype=torch.float32).to(weight.device).reshape(1)
    else:
        code2 = absmax2 = offset = code  # unused by the kernel
    tables = (code, code2, absmax2, offset)
    quant_state._legaltune_nf4_tables = tables
    return tables


def triton_nf4_supported(weight: torch.Tensor, quant_state: Any, dtype: torch.dtype) -> bool:
    """Whether :func:`dequantize_nf4` runs this weight with the Triton kernel."""
    return (
        weight.is_cuda
        and compile_supported()
        and getattr(quant_state, "quant_type", None) == "nf4"
        # bitsandbytes returns the state's dtype (cast afterwards): the same rounding only then
        and dtype == quant_state.dtype
        and dtype in (torch.bfloat16, torch.float16, torch.float32)
        and quant_state.absmax.is_contiguous()
        and weight.is_contiguous()
        and quant_state.shape.numel() < 2**31  # int32 indexing in the kernel
    )


def dequantize_nf4(weight: torch.Tensor, quant_state: Any, dtype: torch.dtype) -> torch.Tensor:
    """The dense ``quant_state.shape`` weight in ``dtype`` (bitwise what bitsandbytes returns)."""
    if not triton_nf4_supported(weight, quant_state, dtype):
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(weight, quant_state).to(dtype)
    return _launch(weight, quant_state, dtype)


# Compiled kernels by specialization, launched directly (see _launch); None = launch through Triton's JIT.
_COMPILED: dict[tuple[Any, ...], Any] = {}
_UNSEEN = object()
DIRECT_LAUNCH = [True]  # benchmarks/nf4_dequant.py --launch turns it off to time Triton's JIT launch


def _launch(
    weight: torch.Tensor, quant_state: Any, dtype: torch.dtype, block: int = _BLOCK, num_warps: int = _WARPS
) -> torch.Tensor:
    """Launch the kernel. Triton's JIT launch binds and specializes every argument in Python on each
    call (~100 us of CPU under cProfile on the H100's host, ~450 launches an 8k-token QLoRA step,
    while the GPU waits for the CPU in parts of it); the compiled kernel is launched directly
    instead, keyed by what Triton specializes on here (dtype, constexprs, 16-byte alignment)."""
    n_out = quant_state.shape.numel()
    out = torch.empty(tuple(quant_state.shape), dtype=dtype, device=weight.device)
    nested = bool(quant_state.nested)
    code, code2, absmax2, offset = _tables(weight, quant_state)
    packed = weight.view(torch.uint8)
    args = (packed, out, code, quant_state.absmax, code2, absmax2, offset, n_out)
    constants = {
        "BLOCKSIZE": quant_state.blocksize,
        "BLOCKSIZE2": quant_state.state2.blocksize if nested else 1,
        "NESTED": nested,
        "BLOCK": block,
    }
    grid = (-(-n_out // block), 1, 1)
    key = (
        weight.device.index, dtype, num_warps, *constants.values(), n_out % 16 == 0, n_out == 1,
        *(t.data_ptr() % 16 == 0 for t in args[:7]),
    )  # fmt: skip
    compiled = _COMPILED.get(key, _UNSEEN)
    if compiled is not None and compiled is not _UNSEEN and DIRECT_LAUNCH[0]:
        stream = torch._C._cuda_getCurrentRawStream(weight.device.index)
        compiled[grid](*args, *constants.values(), stream=stream)
        return out
    # bitsandbytes rounds the scale's product and its offset sum separately: no fused multiply-add
    kernel = _kernel()[grid](*args, **constants, num_warps=num_warps, enable_fp_fusion=False)
    if compiled is _UNSEEN:
        _COMPILED[key] = _checked_direct(kernel, grid, args, constants, out)
    return out


def _checked_direct(
    kernel: Any,
    grid: tuple[int, int, int],
    args: tuple[Any, ...],
    constants: dict[str, Any],
    expected: torch.Tensor,
) -> Any:
    """The compiled kernel if launching it directly gives what the JIT launch gave (checked once per
    specialization: a Triton release that changed the launch signature falls back, not misreads)."""
    out = torch.empty_like(expected)
    try:
        stream = torch._C._cuda_getCurrentRawStream(expected.device.index)
        kernel[grid](args[0], out, *args[2:], *constants.values(), stream=stream)
    except Exception:  # noqa: BLE001  (any launch API mismatch: keep the JIT launch)
        return None
    return kernel if torch.equal(out, expected) else None


__all__ = ["dequantize_nf4", "triton_nf4_supported"]
