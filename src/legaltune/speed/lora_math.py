"""The LoRA linear's arithmetic: forward and backward of ``x W^T + b + s · (x A^T) B^T`` on 2-D
tensors, with the frozen GEMM accumulating onto the adapters' product, 4-bit weights dequantized
just in time, FP8 weights multiplied in FP8 (:mod:`legaltune.speed.fp8`), and fp32 adapter gradients.

``quant_state`` is what the frozen weight needs besides itself: None (dense), a bitsandbytes 4-bit
state, or for an ``float8_e4m3fn`` weight its per-output-channel fp32 scale. A leaf of the speed engine: the autograd Function
(:mod:`legaltune.speed.lora_linear`), the opaque op for compiled layers
(:mod:`legaltune.speed.lora_op`) and the grouped op (:mod:`legaltune.speed.lora_group`) all call it.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from legaltune.speed.fp8 import dequantize_weight, fp8_compute_dtype, fp8_input_grad, fp8_linear, is_fp8
from legaltune.speed.nf4 import dequantize_nf4
from legaltune.speed.recompute import in_recompute, recompute_now


def dense_weight(weight: torch.Tensor, quant_state: Any, dtype: torch.dtype) -> torch.Tensor:
    if quant_state is None:
        return weight if weight.dtype == dtype else weight.to(dtype)
    if is_fp8(weight):
        return dequantize_weight(weight, quant_state, dtype)
    kept = _RECOMPUTE_WEIGHTS.pop(id(weight), None)
    if kept is not None and kept[0]() is weight and kept[1].dtype == dtype:
        return kept[1]
    return dequantize_nf4(weight, quant_state, dtype)


# 4-bit weights dequantized while a checkpointed layer is recomputed, kept for that layer's backward,
# which follows at once: the MLP's gate/up weights are then dequantized twice per step instead of
# three times (-2 of ~16 dequantizations per layer, +235 MB while one Llama-3.1-8B MLP runs
# backward). Bounded: the oldest entry goes when a third arrives (a whole recomputed layer keeps
# only its last two, gate and up, the first its backward reaches).
_RECOMPUTE_WEIGHTS: dict[int, tuple[weakref.ref[torch.Tensor], torch.Tensor]] = {}
_RECOMPUTE_WEIGHTS_KEPT = 2


def forward_weight(weight: torch.Tensor, quant_state: Any, dtype: torch.dtype) -> torch.Tensor:
    """:func:`dense_weight` for a forward: a 4-bit weight dequantized during a recompute is also
    kept for the backward that follows."""
    dense = dense_weight(weight, quant_state, dtype)
    if quant_state is not None and not is_fp8(weight) and in_recompute():
        _RECOMPUTE_WEIGHTS.pop(id(weight), None)
        while len(_RECOMPUTE_WEIGHTS) >= _RECOMPUTE_WEIGHTS_KEPT:
            del _RECOMPUTE_WEIGHTS[next(iter(_RECOMPUTE_WEIGHTS))]
        _RECOMPUTE_WEIGHTS[id(weight)] = (weakref.ref(weight), dense)
    return dense


def mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` accumulated and returned in fp32 (adapter gradients must not be rounded to bf16)."""
    if a.is_cuda and a.dtype in (torch.bfloat16, torch.float16):
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError):  # torch without out_dtype for this device/dtype
            pass
    return torch.mm(a.float(), b.float())


def lora_forward(
    x2: torch.Tensor,
    xl2: torch.Tensor,
    weight: torch.Tensor,
    quant_state: Any,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scale: float,
    dtype: torch.dtype,
    *,
    out_features: int,
    skip_in_recompute: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D ``(x2 W^T + b + s · (xl2 A^T) B^T, xl2 A^T)`` in ``dtype``; ``xl2`` is the LoRA input.

    ``skip_in_recompute``: this projection's output is used by nothing backward needs (a decoder
    layer's down_proj: it only feeds the residual sum that leaves the layer). While a checkpointed
    layer is recomputed, only what backward saves is computed (``xl2 A^T``); the output is left
    unwritten. That is a third of the MLP's forward GEMMs, ~7 % of a fully checkpointed step."""
    xa = xl2 @ lora_a.to(dtype).t()
    if skip_in_recompute and (recomputed := recompute_now()) is not None:
        recomputed.skips += 1
        return x2.new_empty((x2.shape[0], out_features), dtype=dtype), xa
    # The r-wide product first, then the frozen GEMM accumulates onto it (beta=1): a compute-bound
    # GEMM reads its C operand in the epilogue almost for free, where adding the LoRA term to the
    # finished output is a separate memory-bound pass reading and writing all of it (the H100
    # profile: 72 ms of an 8192-token Llama-3.1-8B step).
    b = lora_b.to(dtype).t()
    if is_fp8(weight):
        # _scaled_mm writes its own output (no C operand to accumulate onto): the adapters' product
        # is added by the skinny GEMM's epilogue instead (beta = 1)
        out = fp8_linear(x2, weight, quant_state, dtype)
        if bias is not None:
            out.add_(bias.to(dtype))
        return out.addmm_(xa, b, alpha=scale), xa
    out = torch.mm(xa, b * scale) if bias is None else torch.addmm(bias.to(dtype), xa, b, alpha=scale)
    w = forward_weight(weight, quant_state, dtype)
    out.addmm_(x2, w.t())
    del w
    return out, xa


def lora_backward(
    g: torch.Tensor,
    xl2: torch.Tensor,
    xa: torch.Tensor,
    weight: torch.Tensor,
    quant_state: Any,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scale: float,
    dtype: torch.dtype,
    *,
    need_x: bool,
    separate_lora_input: bool,
    weight_t: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """2-D (grad x, grad of the LoRA input if separate, grad A, grad B); adapter grads in fp32
    (their parameters' dtype is the caller's cast). ``weight_t``: an FP8 weight's kept transpose."""
    a, b = lora_a.to(dtype), lora_b.to(dtype)
    # d(out)/d(xa) = s · g B: the only tokens × r intermediate of the backward
    gb = (g @ b).mul_(scale)
    grad_b = mm_fp32(g.t(), xa).mul_(scale)
    grad_a = mm_fp32(gb.t(), xl2)
    grad_x = grad_xl = None
    if need_x and is_fp8(weight):
        grad_x = fp8_input_grad(g, weight, quant_state, dtype, weight_t)
        if separate_lora_input:
            grad_xl = gb @ a
        else:
            grad_x.addmm_(gb, a)
    elif need_x:
        w = dense_weight(weight, quant_state, dtype)
        if separate_lora_input:
            grad_x, grad_xl = g @ w, gb @ a
        else:  # as in forward: the frozen GEMM accumulates onto the r-wide product
            grad_x = (gb @ a).addmm_(g, w)
        del w
    return grad_x, grad_xl, grad_a, grad_b


def compute_dtype(x: torch.Tensor, weight: torch.Tensor, quant_state: Any) -> torch.dtype:
    if is_fp8(weight):
        return fp8_compute_dtype(x, quant_state.dtype)
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    if quant_state is not None:
        return x.dtype if x.dtype in (torch.bfloat16, torch.float16) else quant_state.dtype
    return weight.dtype


def quant_state_of(weight: torch.Tensor) -> Any:
    """The 4-bit state of a bitsandbytes parameter (None for a dense weight). The op receives the
    parameter object itself (PyTorch hands a tensor's Python object back unchanged), so the state
    set on it by bitsandbytes is there; a packed weight without it would be silently misread."""
    state = getattr(weight, "quant_state", None)
    if is_fp8(weight):
        raise RuntimeError("legaltune::lora_linear got an FP8 weight without its weight_scale")
    if state is None and weight.dtype == torch.uint8:
        raise RuntimeError(
            "legaltune::lora_linear got a packed 4-bit weight without its quant_state; set "
            "speed.compile: false for this model and report the bitsandbytes/torch versions"
        )
    return state


__all__ = [
    "compute_dtype",
    "dense_weight",
    "forward_weight",
    "lora_backward",
    "lora_forward",
    "mm_fp32",
    "quant_state_of",
]
