"""How pinned host memory is allocated when layer inputs are offloaded.

The first step of an offloaded run allocates every pinned buffer it parks activations in (seed
000's preset: ~25 GiB); later steps reuse them from PyTorch's caching host allocator. By default
each buffer is one ``cudaHostAlloc``, which zeroes and locks its pages on one thread: on the H200
machine ~1 GB/s, 24 s of a 48 s first step (py-spy, ``docs/performance.md``). PyTorch can instead
``malloc`` the buffer, touch its pages from several threads and ``cudaHostRegister`` it
(``pinned_use_cuda_host_register`` / ``pinned_num_register_threads``); same memory, same reuse.
"""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)

REGISTER_THREADS = 8  # PyTorch's own allocation benchmark peaks at 8 threads
_KEYS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")
_applied: str | None = None


def _user_settings() -> str:
    return ",".join(v for k in _KEYS if (v := os.environ.get(k, "").strip()))


def fast_pinned_settings(user: str, threads: int = REGISTER_THREADS) -> str | None:
    """The allocator settings that turn multi-threaded registration on, keeping the user's own
    (parsing a settings string resets the keys it does not name); None when the user already chose
    how pinned memory is allocated."""
    if "pinned_use_cuda_host_register" in user or "pinned_num_register_threads" in user:
        return None
    ours = f"pinned_use_cuda_host_register:True,pinned_num_register_threads:{threads}"
    return f"{user},{ours}" if user else ours


def use_fast_pinned_allocation() -> str | None:
    """Apply :func:`fast_pinned_settings` to this process's CUDA allocator (once; before the first
    pinned buffer is what matters). Returns the settings applied, or None (no CUDA, the user chose,
    or this PyTorch does not know the keys)."""
    global _applied
    if _applied is not None:
        return _applied
    if not torch.cuda.is_available():
        return None
    settings = fast_pinned_settings(_user_settings())
    if settings is None:
        return None
    try:
        torch.cuda.memory._set_allocator_settings(settings)
    except (RuntimeError, AttributeError) as exc:  # an older PyTorch without these keys
        logger.info("pinned memory: keeping cudaHostAlloc (%s)", exc)
        return None
    _applied = settings
    return settings


__all__ = ["REGISTER_THREADS", "fast_pinned_settings", "use_fast_pinned_allocation"]
