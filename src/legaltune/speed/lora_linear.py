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
For an FP8 base (``quantization.load_in_fp8``) the frozen forward and input-gradient GEMMs run in
FP8 (:mod:`legaltune.speed.fp8`); the adapters are unchanged.

This is plain PyTorch: the same code runs on the CPU (and is tested there against PEFT's forward).
Anything this path does not cover (DoRA, several active adapters, disabled/merged adapters, mixed
adapter batches, an 8-bit base, LoRA biases) falls back to PEFT's own forward at call time.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn

from legaltune.speed.families import RECOMPUTE_SKIP, class_names
from legaltune.speed.fp8 import is_fp8
from legaltune.speed.layers import find_decoder_layers
from legaltune.speed.lora_group import lora_group_op
from legaltune.speed.lora_math import (
    compute_dtype,
    lora_backward,
    lora_forward,
)
from legaltune.speed.lora_op import lora_linear_op
from legaltune.speed.lora_peft import FUSED, base_weight, fusable, is_fused

_SKIP_IN_RECOMPUTE = "_legaltune_skip_in_recompute"


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
        weight_t: torch.Tensor | None = None,
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
        ctx.quant_state, ctx.weight_t, ctx.scale, ctx.dtype = quant_state, weight_t, scale, dtype
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
            weight_t=ctx.weight_t,
        )
        if grad_x is not None:
            grad_x = grad_x.view(ctx.x_shape).to(ctx.x_dtype)
        if grad_xl is not None:
            grad_xl = grad_xl.view(ctx.x_shape).to(ctx.lora_input_dtype)
        grad_a = grad_a.to(lora_a.dtype) if lora_a.requires_grad else None
        grad_b = grad_b.to(lora_b.dtype) if lora_b.requires_grad else None
        return grad_x, grad_xl, None, None, None, grad_a, grad_b, None, None, None, None, None


def _fused_forward(module: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    plan = fusable(module) if not (args or kwargs) else None
    if plan is None:
        return type(module).forward(module, x, *args, **kwargs)
    adapter, (weight, quant_state) = plan
    lora_a = module.lora_A[adapter].weight
    lora_b = module.lora_B[adapter].weight
    dropout = module.lora_dropout[adapter]
    x_lora = None if isinstance(dropout, nn.Identity) else dropout(x)
    base = module.base_layer
    scale = float(module.scaling[adapter])
    dtype = compute_dtype(x, weight, quant_state)
    skip = bool(module.__dict__.get(_SKIP_IN_RECOMPUTE, False))
    bias = getattr(base, "bias", None)
    weight_t = getattr(base, "weight_t", None)  # an FP8 weight's kept transpose, when there is one
    if x_lora is None and torch.compiler.is_compiling():
        # registered by fuse_lora_linears (outside any trace: dynamo must not trace a registration)
        op = torch.ops.legaltune.lora_linear.default
        weight_scale = quant_state if is_fp8(weight) else None
        return op(
            x, weight, bias, lora_a, lora_b, scale, dtype, base.out_features, skip, weight_scale, weight_t
        )[0]
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
        weight_t,
    )


def fuse_lora_linears(model: nn.Module) -> int:
    """Route every PEFT LoRA linear layer (dense, 4-bit or FP8 base) of this model instance through :class:`LoraLinearFunction`.

    Returns how many layers were switched. Only instance attributes change: PEFT's class, other
    models and saving/merging are untouched; :func:`unfuse_lora_linears` undoes it.
    """
    from peft.tuners.lora.layer import LoraLayer

    lora_linear_op()  # the ops compiled layers call
    lora_group_op()
    count = 0
    for module in model.modules():
        # PEFT has one LoRA class per base type (layer.Linear, bnb.Linear4bit, ...): any LoRA layer
        # over a dense or 4-bit linear qualifies; embeddings, convolutions and 8-bit bases do not.
        base = getattr(module, "base_layer", None)
        if isinstance(module, LoraLayer) and isinstance(base, nn.Linear) and base_weight(base) is not None:
            if "forward" not in module.__dict__:
                module.forward = types.MethodType(_fused_forward, module)
                setattr(module, FUSED, True)
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
        if module.__dict__.pop(FUSED, False):
            module.__dict__.pop("forward", None)
            module.__dict__.pop(_SKIP_IN_RECOMPUTE, None)
            count += 1
    return count


__all__ = [
    "LoraLinearFunction",
    "fuse_lora_linears",
    "is_fused",
    "mark_recompute_skips",
    "unfuse_lora_linears",
]
