"""Which PEFT LoRA layers the fused path covers, and the marker it leaves on them.

The fused path computes exactly what PEFT's forward would only for one active adapter, no DoRA or
other variant, no LoRA bias, linear A/B, over a plain ``nn.Linear``, a bitsandbytes 4-bit base or
legaltune's FP8 base (:class:`~legaltune.speed.fp8_linear.Fp8Linear`) whose weight is frozen;
everything else keeps PEFT's own forward.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from legaltune.speed.fp8_linear import Fp8Linear

FUSED = "_legaltune_fused_lora"


def _bnb_linear4bit() -> type | None:
    """bitsandbytes' 4-bit linear type, once bitsandbytes is loaded (no model holds one before)."""
    return getattr(sys.modules.get("bitsandbytes.nn"), "Linear4bit", None)


def base_weight(base: nn.Module) -> tuple[torch.Tensor, Any] | None:
    """(weight, quant_state) of a plain ``nn.Linear``, a bitsandbytes 4-bit base (its state) or an
    :class:`Fp8Linear` (its per-channel scales); None otherwise.

    Anything else keeps PEFT's forward: other subclasses with their own forward (other quantized
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
    if quant_state is not None and type(base) is _bnb_linear4bit():
        return weight, quant_state
    if type(base) is nn.Linear:
        return weight, None
    if type(base) is Fp8Linear:
        return weight, base.weight_scale
    return None


def fusable(module: nn.Module) -> tuple[str, tuple[torch.Tensor, Any]] | None:
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
    base = base_weight(module.base_layer)
    if base is None:
        return None
    return adapter, base


def is_fused(module: nn.Module) -> bool:
    return bool(module.__dict__.get(FUSED, False))


__all__ = ["FUSED", "base_weight", "fusable", "is_fused"]
