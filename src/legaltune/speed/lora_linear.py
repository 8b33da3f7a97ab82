"""LoRA linear layers computed in one autograd node beside the frozen matmul (per model instance).

PEFT computes ``base(x) + B(A(x)) * s`` as separate modules: it casts ``x`` to the adapters' fp32
(an extra ``tokens × in`` fp32 copy, saved for backward), runs both skinny matmuls in fp32, writes
an fp32 ``tokens × out`` product (470 MB for one MLP projection at 8k tokens), and adds it in
another pass. Here the adapters run in the compute dtype, and ``(x A^T) B^T · s`` is accumulated
into the base output by the frozen GEMM's epilogue (``addmm`` onto the small product); backward
does the same for the input gradient. Saved for backward: ``x`` (which autograd shares between q/k/v and gate/up) and
the ``tokens × r`` product ``x A^T``. Adapter gradients are accumulated in fp32 on CUDA.

For a 4-bit (bitsandbytes NF4) base, the weight is dequantized to the compute dtype right before
each matmul and dropped after it, forward and backward — the dense GEMM then runs at full speed.

This is plain PyTorch: the same code runs on the CPU (and is tested there against PEFT's forward).
Anything this path does not cover (DoRA, several active adapters, disabled/merged adapters, mixed
adapter batches, an 8-bit base, LoRA biases) falls back to PEFT's own forward at call time.
"""

from __future__ import annotations

import types
import weakref
from typing import Any

import torch
from torch import nn

from legaltune.model.offload import find_decoder_layers, in_recompute
from legaltune.speed.families import RECOMPUTE_SKIP, class_names
from legaltune.speed.nf4 import dequantize_nf4

_FUSED = "_legaltune_fused_lora"
_SKIP_IN_RECOMPUTE = "_legaltune_skip_in_recompute"
# GEMMs skipped during recomputes, a process-wide count (tests and profiling read it)
RECOMPUTE_SKIPS = [0]


def _dense_weight(weight: torch.Tensor, quant_state: Any, dtype: torch.dtype) -> torch.Tensor:
    if quant_state is None:
        return weight if weight.dtype == dtype else weight.to(dtype)
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


def _forward_weight(weight: torch.Tensor, quant_state: Any, dtype: torch.dtype) -> torch.Tensor:
    """:func:`_dense_weight` for a forward: a 4-bit weight dequantized during a recompute is also
    kept for the backward that follows."""
    dense = _dense_weight(weight, quant_state, dtype)
    if quant_state is not None and in_recompute():
        _RECOMPUTE_WEIGHTS.pop(id(weight), None)
        while len(_RECOMPUTE_WEIGHTS) >= _RECOMPUTE_WEIGHTS_KEPT:
            del _RECOMPUTE_WEIGHTS[next(iter(_RECOMPUTE_WEIGHTS))]
        _RECOMPUTE_WEIGHTS[id(weight)] = (weakref.ref(weight), dense)
    return dense


def _mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
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
    if skip_in_recompute and in_recompute():
        RECOMPUTE_SKIPS[0] += 1
        return x2.new_empty((x2.shape[0], out_features), dtype=dtype), xa
    # The r-wide product first, then the frozen GEMM accumulates onto it (beta=1): a compute-bound
    # GEMM reads its C operand in the epilogue almost for free, where adding the LoRA term to the
    # finished output is a separate memory-bound pass reading and writing all of it (the H100
    # profile: 72 ms of an 8192-token Llama-3.1-8B step).
    b = lora_b.to(dtype).t()
    out = torch.mm(xa, b * scale) if bias is None else torch.addmm(bias.to(dtype), xa, b, alpha=scale)
    w = _forward_weight(weight, quant_state, dtype)
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
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """2-D (grad x, grad of the LoRA input if separate, grad A, grad B); adapter grads in fp32
    (their parameters' dtype is the caller's cast)."""
    a, b = lora_a.to(dtype), lora_b.to(dtype)
    # d(out)/d(xa) = s · g B: the only tokens × r intermediate of the backward
    gb = (g @ b).mul_(scale)
    grad_b = _mm_fp32(g.t(), xa).mul_(scale)
    grad_a = _mm_fp32(gb.t(), xl2)
    grad_x = grad_xl = None
    if need_x:
        w = _dense_weight(weight, quant_state, dtype)
        if separate_lora_input:
            grad_x, grad_xl = g @ w, gb @ a
        else:  # as in forward: the frozen GEMM accumulates onto the r-wide product
            grad_x = (gb @ a).addmm_(g, w)
        del w
    return grad_x, grad_xl, grad_a, grad_b


class LoraLinearFunction(torch.autograd.Function):
    """``y = x W^T + b + s · (x_d A^T) B^T``, where ``x_d`` is ``x`` after LoRA dropout (or ``x``).

    The eager path. Under ``torch.compile`` a layer without LoRA dropout goes through the opaque
    custom op of :mod:`legaltune.speed.lora_op` instead (see there why)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        x_lora: torch.Tensor | None,
        weight: torch.Tensor,
        quant_state: Any,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scale: float,
        dtype: torch.dtype,
        out_features: int,
        skip_in_recompute: bool,
    ) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(dtype)
        xl2 = x2 if x_lora is None else x_lora.reshape(-1, shape[-1]).to(dtype)
        out, xa = lora_forward(
            x2,
            xl2,
            weight,
            quant_state,
            bias,
            lora_a,
            lora_b,
            scale,
            dtype,
            out_features=out_features,
            skip_in_recompute=skip_in_recompute,
        )
        ctx.save_for_backward(xl2, xa, weight, lora_a, lora_b)
        ctx.quant_state, ctx.scale, ctx.dtype = quant_state, scale, dtype
        ctx.x_shape, ctx.x_dtype = shape, x.dtype
        ctx.separate_lora_input = x_lora is not None
        ctx.lora_input_dtype = None if x_lora is None else x_lora.dtype
        return out.view(*shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        xl2, xa, weight, lora_a, lora_b = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).to(ctx.dtype)
        grad_x, grad_xl, grad_a, grad_b = lora_backward(
            g,
            xl2,
            xa,
            weight,
            ctx.quant_state,
            lora_a,
            lora_b,
            ctx.scale,
            ctx.dtype,
            need_x=ctx.needs_input_grad[0] or ctx.needs_input_grad[1],
            separate_lora_input=ctx.separate_lora_input,
        )
        if grad_x is not None:
            grad_x = grad_x.view(ctx.x_shape).to(ctx.x_dtype)
        if grad_xl is not None:
            grad_xl = grad_xl.view(ctx.x_shape).to(ctx.lora_input_dtype)
        grad_a = grad_a.to(lora_a.dtype) if lora_a.requires_grad else None
        grad_b = grad_b.to(lora_b.dtype) if lora_b.requires_grad else None
        return grad_x, grad_xl, None, None, None, grad_a, grad_b, None, None, None, None


def _base_weight(base: nn.Module) -> tuple[torch.Tensor, Any] | None:
    """(weight, quant_state) of a plain ``nn.Linear`` or a bitsandbytes 4-bit base; None otherwise.

    Anything else keeps PEFT's forward: subclasses with their own forward (FP8 and other quantized
    linears whose weight needs its scales), 8-bit bases, a base with an accelerate hook (offloaded
    weights live on ``meta`` until the hook runs), and bases whose weight or bias is trained (the
    fused node computes no gradient for them: ``lora.bias: all`` / ``lora_only``).
    """
    weight = getattr(base, "weight", None)
    if weight is None or hasattr(base, "_hf_hook") or "forward" in base.__dict__:
        return None
    bias = getattr(base, "bias", None)
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        return None
    quant_state = getattr(weight, "quant_state", None)
    if quant_state is not None and type(base).__name__ == "Linear4bit":
        return weight, quant_state
    if type(base) is nn.Linear:
        return weight, None
    return None


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor, quant_state: Any) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    if quant_state is not None:
        return x.dtype if x.dtype in (torch.bfloat16, torch.float16) else quant_state.dtype
    return weight.dtype


def _fused_forward(module: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    plan = _fusable(module) if not (args or kwargs) else None
    if plan is None:
        return type(module).forward(module, x, *args, **kwargs)
    adapter, (weight, quant_state) = plan
    lora_a = module.lora_A[adapter].weight
    lora_b = module.lora_B[adapter].weight
    dropout = module.lora_dropout[adapter]
    x_lora = None if isinstance(dropout, nn.Identity) else dropout(x)
    base = module.base_layer
    scale = float(module.scaling[adapter])
    dtype = _compute_dtype(x, weight, quant_state)
    skip = bool(module.__dict__.get(_SKIP_IN_RECOMPUTE, False))
    bias = getattr(base, "bias", None)
    if x_lora is None and torch.compiler.is_compiling():
        # registered by fuse_lora_linears (outside any trace: dynamo must not trace a registration)
        op = torch.ops.legaltune.lora_linear.default
        return op(x, weight, bias, lora_a, lora_b, scale, dtype, base.out_features, skip)[0]
    return LoraLinearFunction.apply(
        x,
        x_lora,
        weight,
        quant_state,
        bias,
        lora_a,
        lora_b,
        scale,
        dtype,
        base.out_features,
        skip,
    )


def _fusable(module: nn.Module) -> tuple[str, tuple[torch.Tensor, Any]] | None:
    """(adapter, base weight) when the fused path computes exactly what PEFT's forward would."""
    if module.disable_adapters or module.merged:
        return None
    active = [a for a in module.active_adapters if a in module.lora_A]
    if len(active) != 1:
        return None
    adapter = active[0]
    if adapter in getattr(module, "lora_variant", {}) or getattr(module, "use_dora", {}).get(adapter):
        return None
    if getattr(module, "lora_bias", {}).get(adapter):
        return None
    if not isinstance(module.lora_A[adapter], nn.Linear) or not isinstance(module.lora_B[adapter], nn.Linear):
        return None
    base = _base_weight(module.base_layer)
    if base is None:
        return None
    return adapter, base


def fuse_lora_linears(model: nn.Module) -> int:
    """Route every PEFT LoRA linear layer (dense or 4-bit base) of this model instance through :class:`LoraLinearFunction`.

    Returns how many layers were switched. Only instance attributes change: PEFT's class, other
    models and saving/merging are untouched; :func:`unfuse_lora_linears` undoes it.
    """
    from peft.tuners.lora.layer import LoraLayer

    from legaltune.speed.lora_group import lora_group_op
    from legaltune.speed.lora_op import lora_linear_op

    lora_linear_op()  # the ops compiled layers call
    lora_group_op()
    count = 0
    for module in model.modules():
        # PEFT has one LoRA class per base type (layer.Linear, bnb.Linear4bit, ...): any LoRA layer
        # over a dense or 4-bit linear qualifies; embeddings, convolutions and 8-bit bases do not.
        base = getattr(module, "base_layer", None)
        if isinstance(module, LoraLayer) and isinstance(base, nn.Linear) and _base_weight(base) is not None:
            if "forward" not in module.__dict__:
                module.forward = types.MethodType(_fused_forward, module)
                setattr(module, _FUSED, True)
                count += 1
    return count


def mark_recompute_skips(model: nn.Module) -> int:
    """Let the fused down_proj of every known pre-norm decoder layer skip its GEMM while the layer
    is recomputed under legaltune's checkpointing; returns how many were marked.

    Known: the families of the registry with RECOMPUTE_SKIP, pre-norm layers whose output is
    ``h + mlp(norm(h))``: the MLP's down_proj output feeds only that sum, which nothing in the
    layer's backward saves."""
    skip_layers = class_names("DecoderLayer", RECOMPUTE_SKIP)
    count = 0
    for layer in find_decoder_layers(model):
        down = getattr(getattr(layer, "mlp", None), "down_proj", None)
        if type(layer).__name__ in skip_layers and down is not None and is_fused(down):
            down.__dict__[_SKIP_IN_RECOMPUTE] = True
            count += 1
    return count


def unfuse_lora_linears(model: nn.Module) -> int:
    """Give every fused LoRA layer of ``model`` PEFT's own forward back; returns how many."""
    count = 0
    for module in model.modules():
        if module.__dict__.pop(_FUSED, False):
            module.__dict__.pop("forward", None)
            module.__dict__.pop(_SKIP_IN_RECOMPUTE, None)
            count += 1
    return count


def is_fused(module: nn.Module) -> bool:
    return bool(module.__dict__.get(_FUSED, False))


__all__ = [
    "RECOMPUTE_SKIPS",
    "LoraLinearFunction",
    "fuse_lora_linears",
    "is_fused",
    "mark_recompute_skips",
    "unfuse_lora_linears",
]
