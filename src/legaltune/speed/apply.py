"""The speed engine in one call: fused LoRA, kernels, compiled layers — on one PEFT model instance.

Checkpointing is not decided here: :func:`legaltune.model.lora.apply_lora` wraps the layers after
this (so that the checkpoint sits outside the compiled region), with the layer count that the
memory plan picks (``speed: auto``).
"""

from __future__ import annotations

import logging

from torch import nn

from legaltune.speed.compile import compile_layers, compile_supported
from legaltune.speed.families import family_notices
from legaltune.speed.fp8 import fp8_gemm_label
from legaltune.speed.fp8_linear import fp8_linear_count
from legaltune.speed.kernels import apply_kernels
from legaltune.speed.layers import find_decoder_layers
from legaltune.speed.lora_linear import fuse_lora_linears, mark_recompute_skips
from legaltune.speed.policy import compile_wanted, liger_available
from legaltune.speed.state import SpeedReport

logger = logging.getLogger(__name__)


def resolve_compile(setting: bool | str, *, on_cuda: bool) -> bool:
    """``speed.compile``: auto = on a CUDA model with Triton available
    (:func:`legaltune.speed.policy.compile_wanted`); true compiles wherever asked (on a CPU that needs
    a C++ compiler and buys little; the tests use it with the aot_eager backend)."""
    if setting == "auto" and not (on_cuda and compile_supported()):
        return False
    return compile_wanted(setting)


def apply_speed(
    model: nn.Module,
    *,
    mode: str,
    kernels: bool | str = "auto",
    compile: bool | str = "auto",
    compile_backend: str = "inductor",
) -> SpeedReport:
    """Apply the speed engine to this PEFT model instance per ``mode`` (``off``/``fast``/``auto``).

    With compile on, every decoder layer is compiled, checkpointed ones included (the checkpoint
    wrapper goes around the compiled forward); Liger's kernels then serve only what lies outside
    the layers (the final norm). With compile off, every layer runs eager with Liger's kernels.
    """
    report = SpeedReport(mode=mode)
    if mode == "off":
        return report
    report.fused_lora = fuse_lora_linears(model)
    report.fp8_linears = fp8_linear_count(model)
    if report.fp8_linears:
        report.fp8_gemm = fp8_gemm_label(next(model.parameters()).device)
    report.recompute_skips = mark_recompute_skips(model)
    first = next(model.parameters())
    on_cuda = first.is_cuda
    report.on_cuda = on_cuda
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if config is not None else None
    report.notes.extend(family_notices(getattr(text_config, "model_type", None)))
    compiled = resolve_compile(compile, on_cuda=on_cuda)
    if compiled:
        report.compiled_layers = compile_layers(model, backend=compile_backend)
    # auto: Liger only where layers stay eager. In compiled layers inductor fuses the same norm and
    # gate ops itself, faster on the H100 (14.7k vs 14.1k tok/s without checkpointing, 10.5k vs 10.1k
    # offloaded; docs/performance.md), and dynamo cannot trace Liger's kernels anyway.
    if kernels is True or kernels == "auto":
        if on_cuda and not liger_available():
            report.notes.append(
                "liger-kernel is not installed: RMSNorm/SwiGLU run in PyTorch (pip install liger-kernel)"
            )
        skip = tuple(find_decoder_layers(model)) if kernels == "auto" and compiled else ()
        counts = apply_kernels(model, skip=skip)
        report.rms_norm, report.swiglu, report.geglu = counts["rms_norm"], counts["swiglu"], counts["geglu"]
    return report


__all__ = ["SpeedReport", "apply_speed", "resolve_compile"]
