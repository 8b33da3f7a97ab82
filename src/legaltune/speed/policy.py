"""Decisions the speed engine and the memory plan must make the same way (no torch import here, so
that `legaltune plan` stays light)."""

from __future__ import annotations

import functools
import importlib.util


@functools.cache
def liger_available() -> bool:
    """Liger-Kernel and Triton importable (Liger's kernels are Triton kernels)."""
    return (
        importlib.util.find_spec("liger_kernel") is not None
        and importlib.util.find_spec("triton") is not None
    )


def compile_wanted(setting: bool | str) -> bool:
    """``speed.compile`` on a CUDA GPU with Triton: auto = on, over dense and 4-bit bases alike.
    (4-bit bases were left eager until the fused LoRA entered compiled graphs as an opaque op:
    traced, the graph kept every dequantized weight for backward, 53.5 GiB vs 40.4 GiB eager.)"""
    return True if setting == "auto" else bool(setting)


def offload_attention_wanted(setting: bool | str, *, on_cuda: bool) -> bool:
    """``speed.offload_attention``: auto = on a CUDA model (where the offloader moves activations to
    the host; on a CPU nothing is offloaded and keeping the attention only costs memory)."""
    return on_cuda if setting == "auto" else bool(setting)


__all__ = ["compile_wanted", "liger_available", "offload_attention_wanted"]
