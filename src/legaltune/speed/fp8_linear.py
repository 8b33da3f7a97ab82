"""Frozen linear layers with FP8 weights (``quantization.load_in_fp8``), and the model conversion.

:class:`Fp8Linear` is an ``nn.Linear`` whose weight is a frozen ``float8_e4m3fn`` parameter with a
``weight_scale`` buffer (one fp32 scale per output channel; :mod:`legaltune.speed.fp8`). PEFT wraps
it like any linear layer; legaltune's fused LoRA op reads the weight and its scale and runs both
GEMMs in FP8 (:mod:`legaltune.speed.lora_math`). Its own forward — PEFT's fallback path, projections
without an adapter, ``speed: off`` — runs the same FP8 GEMMs through :class:`Fp8LinearFunction`.

Only the projections inside the decoder layers are converted: embeddings, norms and the LM head
keep the compute dtype (the fused LM head reads its weight directly; its GEMM is a few % of a step).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from legaltune.speed.fp8 import (
    dequantize_weight,
    fp8_compute_dtype,
    fp8_input_grad,
    fp8_linear,
    quantize_weight,
)


class Fp8LinearFunction(torch.autograd.Function):
    """``x Wᵀ`` for an FP8 weight; backward gives the input gradient only (the weight is frozen)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        w8: torch.Tensor,
        scale: torch.Tensor,
        dtype: torch.dtype,
        w8_t: torch.Tensor | None = None,
    ) -> torch.Tensor:  # type: ignore[override]
        x2 = x.reshape(-1, x.shape[-1]).to(dtype)
        out = fp8_linear(x2, w8, scale, dtype)
        ctx.save_for_backward(w8, scale, w8_t)
        ctx.dtype, ctx.x_shape, ctx.x_dtype = dtype, x.shape, x.dtype
        return out.view(*x.shape[:-1], w8.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        w8, scale, w8_t = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).to(ctx.dtype)
        grad_x = fp8_input_grad(g, w8, scale, ctx.dtype, w8_t)
        return grad_x.view(ctx.x_shape).to(ctx.x_dtype), None, None, None, None


class Fp8Linear(nn.Linear):
    """A frozen linear layer: e4m3 weight (``out × in``), fp32 ``weight_scale`` (``out``), optional bias.

    ``compute_dtype``: what inputs that are not floating point are computed in; PEFT also reads it
    to give the adapters the model's dtype (then up-casts them to fp32, as over a bf16 base).
    ``weight_t``: ``W8ᵀ`` kept contiguous after :meth:`keep_transpose` (None until then): the
    input gradient's FP8 GEMM needs that layout, and would otherwise copy it at every backward."""

    def __init__(
        self,
        weight8: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None,
        compute_dtype: torch.dtype,
    ) -> None:
        nn.Module.__init__(self)  # not nn.Linear's: it would allocate a dense weight
        self.out_features, self.in_features = weight8.shape
        self.weight = nn.Parameter(weight8, requires_grad=False)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_t", None, persistent=False)  # a copy of the weight: never saved
        if bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(bias.detach(), requires_grad=False)
        self.compute_dtype = compute_dtype

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Fp8Linear:
        weight8, scale = quantize_weight(linear.weight)
        return cls(weight8, scale, linear.bias, linear.weight.dtype)

    def keep_transpose(self) -> None:
        """Keep ``W8ᵀ`` (``in × out``, contiguous) beside the weight: +1 byte per weight."""
        self.weight_t = self.weight.detach().t().contiguous()

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense weight this layer computes with (``W8 · s_w``), in ``dtype`` (default: compute dtype)."""
        return dequantize_weight(self.weight, self.weight_scale, dtype or self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = fp8_compute_dtype(x, self.compute_dtype)
        out = Fp8LinearFunction.apply(x, self.weight, self.weight_scale, dtype, self.weight_t)
        # a trained bias (lora.bias: all) gets its gradient from autograd here
        return out if self.bias is None else out + self.bias.to(dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, weight=float8_e4m3fn"


def quantize_model_fp8(model: nn.Module) -> int:
    """Replace every plain ``nn.Linear`` inside the decoder layers of this model instance by an
    :class:`Fp8Linear` (the dense weight is freed as each is converted); returns how many.

    On a PEFT model only the frozen ``base_layer`` of each LoRA layer is converted, never the
    adapters (load_model converts before LoRA is attached; this keeps a later call safe)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from legaltune.speed.layers import find_decoder_layers

    count = 0
    for layer in find_decoder_layers(model):
        adapters = {id(m) for t in layer.modules() if isinstance(t, BaseTunerLayer) for m in t.modules()}
        for parent in list(layer.modules()):
            if id(parent) in adapters and not isinstance(parent, BaseTunerLayer):
                continue  # inside a LoRA layer: its adapters' ModuleDicts
            for name, child in list(parent.named_children()):
                if isinstance(parent, BaseTunerLayer) and name != "base_layer":
                    continue
                if type(child) is nn.Linear:
                    with torch.no_grad():
                        setattr(parent, name, Fp8Linear.from_linear(child))
                    count += 1
    return count


def keep_fp8_transposes(model: nn.Module) -> int:
    """:meth:`Fp8Linear.keep_transpose` on every FP8 layer of this model instance; returns how many."""
    layers = [m for m in model.modules() if isinstance(m, Fp8Linear)]
    for layer in layers:
        layer.keep_transpose()
    return len(layers)


def fp8_linear_count(model: nn.Module) -> int:
    """How many :class:`Fp8Linear` layers the model holds (0: not loaded in FP8)."""
    return sum(isinstance(m, Fp8Linear) for m in model.modules())


__all__ = ["Fp8Linear", "Fp8LinearFunction", "fp8_linear_count", "keep_fp8_transposes", "quantize_model_fp8"]
