"""Liger-Kernel's fused RMSNorm and gated MLP (SwiGLU, GeGLU) on the modules of one model instance.

Liger's own ``apply_liger_kernel_to_*`` helpers also replace classes and functions in transformers'
modeling modules, which would change every model in the process. Here only the forward of each
matching module *instance* is replaced, and only for the families of the registry
(:mod:`legaltune.speed.families`) whose math Liger reproduces: Llama-style RMSNorm (fp32
normalisation, weight applied after casting back) and SiLU-gated MLP; Gemma 3's RMSNorm (all in
fp32, scaled by ``1 + weight``: Liger's offset 1 and "gemma" casting, on the four layer norms and
the per-head q/k norms alike) and tanh-GELU-gated MLP (GeGLU); MLPs without bias. The replacement dispatches per call: a CUDA tensor with Liger importable goes through the
Triton kernel, anything else (CPU, no Liger) through the module's own PyTorch forward — so the
pipeline runs unchanged without a GPU, and tests compare the two on the GPU.

What it buys: the RMSNorm saves its bf16 input and one fp32 scalar per row for backward (PyTorch's
keeps fp32 copies of the activations), and the gated MLP recomputes ``act(gate)`` in backward
instead of saving it, in one kernel each way.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn

from legaltune.speed.families import KERNELS, family_for_class
from legaltune.speed.policy import liger_available

_KERNEL = "_legaltune_kernel"
_NORM = "_legaltune_norm"  # (eps, offset, Liger casting mode) of a routed RMSNorm


def _rms_norm_forward(module: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    if not (hidden_states.is_cuda and liger_available()):
        return type(module).forward(module, hidden_states)
    from liger_kernel.ops.rms_norm import LigerRMSNormFunction

    eps, offset, casting = module.__dict__[_NORM]
    # in_place=False: the residual stream's gradient feeds two branches; Liger must not overwrite it.
    return LigerRMSNormFunction.apply(hidden_states, module.weight, eps, offset, casting, False)


def _gated_mlp_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if not (x.is_cuda and liger_available()):
        return type(module).forward(module, x)
    if module.__dict__[_KERNEL] == "geglu":
        from liger_kernel.ops.geglu import LigerGELUMulFunction as GatedMul
    else:
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction as GatedMul

    return module.down_proj(GatedMul.apply(module.gate_proj(x), module.up_proj(x)))


def _gate(module: nn.Module) -> str | None:
    """``silu`` or ``gelu_tanh`` for a bias-free gated MLP (gate/up/down) with that activation."""
    act = getattr(module, "act_fn", None)
    has_bias = any(
        getattr(getattr(module, n, None), "bias", None) is not None for n in ("gate_proj", "up_proj")
    )
    base = [getattr(module, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
    if has_bias or any(b is None for b in base):
        return None
    # transformers ≥ 5 has its own SiLUActivation class; older versions use nn.SiLU
    if isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation":
        return "silu"
    # gelu_pytorch_tanh (Gemma): transformers' GELUTanh, or torch's GELU with the tanh approximation
    if type(act).__name__ in ("GELUTanh", "PytorchGELUTanh"):
        return "gelu_tanh"
    if isinstance(act, nn.GELU) and act.approximate == "tanh":
        return "gelu_tanh"
    return None


def _norm_eps(module: nn.Module) -> float | None:
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    return float(eps) if isinstance(eps, (int, float)) else None


def apply_kernels(model: nn.Module, *, skip: tuple[nn.Module, ...] = ()) -> dict[str, int]:
    """Route this instance's Llama-style RMSNorm and SwiGLU MLP modules through Liger's kernels.

    ``skip``: subtrees left alone (compiled layers, where inductor fuses these ops itself).
    Returns counts per kind; modules of other classes are left alone. Idempotent; see
    :func:`remove_kernels`.
    """
    counts = {"rms_norm": 0, "swiglu": 0, "geglu": 0}
    skipped = {id(m) for root in skip for m in root.modules()}
    for module in model.modules():
        if id(module) in skipped:
            continue
        name = type(module).__name__
        if _KERNEL in module.__dict__ or "forward" in module.__dict__:
            continue
        family = family_for_class(name)
        if family is None or not family.supports(KERNELS):
            continue
        if name == family.class_name("RMSNorm") and _norm_eps(module) is not None:
            module.__dict__[_NORM] = (_norm_eps(module), family.norm_offset, family.norm_casting)
            module.forward = types.MethodType(_rms_norm_forward, module)
            kind = "rms_norm"
        elif name == family.class_name("MLP") and _gate(module) == family.activation:
            module.forward = types.MethodType(_gated_mlp_forward, module)
            kind = "swiglu" if family.activation == "silu" else "geglu"
        else:
            continue
        module.__dict__[_KERNEL] = kind
        counts[kind] += 1
    return counts


def remove_kernels(model: nn.Module) -> int:
    """Give every module of ``model`` that :func:`apply_kernels` changed its own forward back."""
    count = 0
    for module in model.modules():
        if module.__dict__.pop(_KERNEL, None):
            module.__dict__.pop("forward", None)
            module.__dict__.pop(_NORM, None)
            count += 1
    return count


def kernel_kind(module: nn.Module) -> Any:
    return module.__dict__.get(_KERNEL)


__all__ = [
    "apply_kernels",
    "kernel_kind",
    "remove_kernels",
]
