"""Liger-Kernel's fused RMSNorm and SwiGLU on the modules of one model instance.

Liger's own ``apply_liger_kernel_to_*`` helpers also replace classes and functions in transformers'
modeling modules, which would change every model in the process. Here only the forward of each
matching module *instance* is replaced, and only for modules whose math we know Liger reproduces
(Llama-style RMSNorm: fp32 normalisation, weight applied after casting back; SiLU-gated MLP without
bias). The replacement dispatches per call: a CUDA tensor with Liger importable goes through the
Triton kernel, anything else (CPU, no Liger) through the module's own PyTorch forward — so the
pipeline runs unchanged without a GPU, and tests compare the two on the GPU.

What it buys: the RMSNorm saves its bf16 input and one fp32 scalar per row for backward (PyTorch's
keeps fp32 copies of the activations), and SwiGLU recomputes ``silu(gate)`` in backward instead of
saving it, in one kernel each way.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn

from legaltune.speed.families import KERNELS, class_names
from legaltune.speed.policy import liger_available

_KERNEL = "_legaltune_kernel"


def _rms_norm_forward(module: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    if not (hidden_states.is_cuda and liger_available()):
        return type(module).forward(module, hidden_states)
    from liger_kernel.ops.rms_norm import LigerRMSNormFunction

    # in_place=False: the residual stream's gradient feeds two branches; Liger must not overwrite it.
    return LigerRMSNormFunction.apply(
        hidden_states, module.weight, module.variance_epsilon, 0.0, "llama", False
    )


def _swiglu_mlp_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if not (x.is_cuda and liger_available()):
        return type(module).forward(module, x)
    from liger_kernel.ops.swiglu import LigerSiLUMulFunction

    return module.down_proj(LigerSiLUMulFunction.apply(module.gate_proj(x), module.up_proj(x)))


def _is_silu_mlp(module: nn.Module) -> bool:
    act = getattr(module, "act_fn", None)
    has_bias = any(
        getattr(getattr(module, n, None), "bias", None) is not None for n in ("gate_proj", "up_proj")
    )
    base = [getattr(module, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
    # transformers ≥ 5 has its own SiLUActivation class; older versions use nn.SiLU
    silu = isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"
    return silu and not has_bias and all(b is not None for b in base)


def apply_kernels(model: nn.Module, *, skip: tuple[nn.Module, ...] = ()) -> dict[str, int]:
    """Route this instance's Llama-style RMSNorm and SwiGLU MLP modules through Liger's kernels.

    ``skip``: subtrees left alone (compiled layers, where inductor fuses these ops itself).
    Returns counts per kind; modules of other classes are left alone. Idempotent; see
    :func:`remove_kernels`.
    """
    counts = {"rms_norm": 0, "swiglu": 0}
    skipped = {id(m) for root in skip for m in root.modules()}
    for module in model.modules():
        if id(module) in skipped:
            continue
        name = type(module).__name__
        if _KERNEL in module.__dict__ or "forward" in module.__dict__:
            continue
        if name in class_names("RMSNorm", KERNELS) and hasattr(module, "variance_epsilon"):
            module.forward = types.MethodType(_rms_norm_forward, module)
            kind = "rms_norm"
        elif name in class_names("MLP", KERNELS) and _is_silu_mlp(module):
            module.forward = types.MethodType(_swiglu_mlp_forward, module)
            kind = "swiglu"
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
            count += 1
    return count


def kernel_kind(module: nn.Module) -> Any:
    return module.__dict__.get(_KERNEL)


__all__ = [
    "apply_kernels",
    "kernel_kind",
    "remove_kernels",
]
