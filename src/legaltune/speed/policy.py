"""Decisions the speed engine and the memory plan must make the same way (no torch import here, so
that `legaltune plan` stays light)."""

from __future__ import annotations

import functools
import importlib.util
import math


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


# The offloader leaves smaller tensors on the GPU: below this a copy costs more in launch and sync
# overhead than the memory it frees (RoPE's cos/sin, masks). The memory plan models the same cut.
MIN_OFFLOAD_BYTES = 1 << 20


# The offloader's pinned arena (legaltune.speed.pinned_arena) places tensors at page boundaries.
PINNED_ALIGN = 4096


def pinned_bytes(nbytes: float) -> int:
    """Host bytes one offloaded tensor of ``nbytes`` takes in the offloader's pinned arena: its size
    rounded up to a page (PyTorch's own pinned allocator would round it up to a power of two, a
    48 MiB tensor holding a 64 MiB block)."""
    return -(-math.ceil(nbytes) // PINNED_ALIGN) * PINNED_ALIGN


def host_memory_available() -> float | None:
    """Bytes of host RAM available now (Linux ``MemAvailable``); None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# Of the host memory available when training starts, what pinned activations may take: the rest is
# for the data loader, the Python process and the OS (pinned pages cannot be swapped out).
HOST_FRACTION = 0.5


def host_memory_per_rank(local_ranks: int) -> float | None:
    """This process's share of the host RAM available now: the machine's, divided among the
    ``local_ranks`` processes a launcher started on it (1 outside one), which all pin and allocate
    at once."""
    available = host_memory_available()
    return None if available is None else available / max(local_ranks, 1)


def attention_host_allowance(local_ranks: int) -> float | None:
    """speed.offload_attention auto: the pinned host bytes a forward may park (None: unknown), out of
    this process's share of the machine (:func:`host_memory_per_rank`)."""
    share = host_memory_per_rank(local_ranks)
    return None if share is None else HOST_FRACTION * share


__all__ = [
    "HOST_FRACTION",
    "MIN_OFFLOAD_BYTES",
    "PINNED_ALIGN",
    "attention_host_allowance",
    "compile_wanted",
    "host_memory_available",
    "host_memory_per_rank",
    "liger_available",
    "offload_attention_wanted",
    "pinned_bytes",
]
