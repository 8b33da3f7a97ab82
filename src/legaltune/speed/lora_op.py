"""The fused LoRA linear as an opaque custom op, for compiled decoder layers.

Traced by ``torch.compile``, :class:`~legaltune.speed.lora_linear.LoraLinearFunction`'s in-place
``out.addmm_(xa, B^T)`` is functionalized into ``addmm(out, xa, B^T)`` writing a new buffer, and
CUDA's addmm into a separate result first copies ``out`` there: one device-to-device copy of every
projection's output per forward, and one of every input gradient per backward — 21 full-size
copies per layer and step under checkpointing, 41 ms of an 800 ms Llama-3.1-8B step on the H100
(profiled, docs/performance.md). Inductor cannot fuse anything into these matmuls anyway (they are
cuBLAS calls), so hiding them in an op whose forward and backward run eagerly costs nothing and
keeps the in-place epilogue. The elementwise work between the projections (norms, RoPE, SiLU gate,
residual adds) is still fused by inductor around the op.

The ops are registered on first use (not at import): ``legaltune::lora_linear`` and
``legaltune::lora_linear_backward``. They cover dense and bitsandbytes 4-bit bases without LoRA
dropout (dropout keeps the traced Function), and FP8 bases (``weight_scale``: the weight's
per-output-channel scales, an explicit input so that compiled graphs see it). A 4-bit weight enters the op as its packed uint8
parameter; the op reads the quantization state from that parameter object when it runs, and
dequantizes inside the op, so a compiled graph never saves a dequantized weight for backward (the
traced Function's compiled graph did: 53.5 GiB instead of 40 for Llama-3.1-8B).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from legaltune.speed.lora_math import lora_backward, lora_forward, quant_state_of


@functools.cache
def lora_linear_op() -> Any:
    """The forward op (registered once per process); call
    ``op(x, W, bias, A, B, scale, dtype, out_features, skip_in_recompute, weight_scale=None,
    weight_t=None)``, which returns ``(out, x A^T)`` and is differentiable in x, A and B. ``W`` is a
    dense weight, a bitsandbytes 4-bit parameter, or an FP8 weight with its ``weight_scale`` (and
    ``weight_t``, its contiguous transpose, where the model keeps one)."""

    @torch.library.custom_op("legaltune::lora_linear", mutates_args=())
    def lora_linear(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scale: float,
        dtype: torch.dtype,
        out_features: int,
        skip_in_recompute: bool,
        weight_scale: torch.Tensor | None = None,
        weight_t: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x2 = x.reshape(-1, x.shape[-1]).to(dtype)
        state = weight_scale if weight_scale is not None else quant_state_of(weight)
        out, xa = lora_forward(
            x2,
            x2,
            weight,
            state,
            bias,
            lora_a,
            lora_b,
            scale,
            dtype,
            out_features=out_features,
            skip_in_recompute=skip_in_recompute,
        )
        return out.view(*x.shape[:-1], out.shape[-1]), xa

    @lora_linear.register_fake
    def _(
        x,
        weight,
        bias,
        lora_a,
        lora_b,
        scale,
        dtype,
        out_features,
        skip_in_recompute,
        weight_scale=None,
        weight_t=None,
    ):  # noqa: ANN001, ANN202, E501
        tokens = x.numel() // x.shape[-1]
        return x.new_empty((*x.shape[:-1], out_features), dtype=dtype), x.new_empty(
            (tokens, lora_a.shape[0]), dtype=dtype
        )

    @torch.library.custom_op("legaltune::lora_linear_backward", mutates_args=())
    def lora_linear_backward(
        grad: torch.Tensor,
        x: torch.Tensor,
        xa: torch.Tensor,
        weight: torch.Tensor,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scale: float,
        dtype: torch.dtype,
        need_x: bool,
        weight_scale: torch.Tensor | None = None,
        weight_t: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = grad.reshape(-1, grad.shape[-1]).to(dtype)
        x2 = x.reshape(-1, x.shape[-1]).to(dtype)
        grad_x, _, grad_a, grad_b = lora_backward(
            g,
            x2,
            xa,
            weight,
            weight_scale if weight_scale is not None else quant_state_of(weight),
            lora_a,
            lora_b,
            scale,
            dtype,
            need_x=need_x,
            separate_lora_input=False,
            weight_t=weight_t,
        )
        # an op returns tensors only: an empty one stands for "no input gradient"
        grad_x = grad_x.view(x.shape).to(x.dtype) if grad_x is not None else x.new_empty(0)
        return grad_x, grad_a.to(lora_a.dtype), grad_b.to(lora_b.dtype)

    @lora_linear_backward.register_fake
    def _(grad, x, xa, weight, lora_a, lora_b, scale, dtype, need_x, weight_scale=None, weight_t=None):  # noqa: ANN001, ANN202
        grad_x = x.new_empty(x.shape) if need_x else x.new_empty(0)
        return grad_x, torch.empty_like(lora_a), torch.empty_like(lora_b)

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
        x, weight, _bias, lora_a, lora_b, scale, dtype, _out_features, _skip, weight_scale, weight_t = inputs
        ctx.save_for_backward(x, output[1], weight, lora_a, lora_b, weight_scale, weight_t)
        ctx.scale, ctx.dtype = scale, dtype

    def backward(ctx: Any, grad: torch.Tensor, _grad_xa: Any) -> tuple[Any, ...]:
        x, xa, weight, lora_a, lora_b, weight_scale, weight_t = ctx.saved_tensors
        need_x = ctx.needs_input_grad[0]
        grad_x, grad_a, grad_b = lora_linear_backward(
            grad, x, xa, weight, lora_a, lora_b, ctx.scale, ctx.dtype, need_x, weight_scale, weight_t
        )
        return (
            grad_x if need_x else None,
            None,
            None,
            grad_a if ctx.needs_input_grad[3] else None,
            grad_b if ctx.needs_input_grad[4] else None,
            None,
            None,
            None,
            None,
            None,
            None,
        )

    lora_linear.register_autograd(backward, setup_context=setup_context)
    return lora_linear


__all__ = ["lora_linear_op"]
