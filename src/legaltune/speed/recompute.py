"""Whether backward is recomputing a layer that legaltune checkpointed (per thread).

The checkpointing (offload.py) sets the flag around each recompute; the fused LoRA math reads it
to skip work whose result the recompute never uses and to keep dequantized weights for the
backward that follows.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch

_RECOMPUTE = threading.local()


def in_recompute() -> bool:
    """True while backward recomputes a layer checkpointed by legaltune (this thread): the fused
    LoRA projections whose output the recompute never uses skip their GEMM then."""
    return getattr(_RECOMPUTE, "active", False)


@contextlib.contextmanager
def recomputing(num_threads: int | None = None) -> Iterator[None]:
    """Marks this thread as recomputing; ``num_threads``: the forward's intra-op thread count."""
    before = in_recompute()
    _RECOMPUTE.active = True
    # Backward (and so the recompute) runs on autograd's device thread, which takes its intra-op
    # thread count from the last torch.set_num_threads of any thread: the DataLoader's pin-memory
    # thread sets 1. A compiled layer guards on that count, so the recompute would compile a second
    # graph for it; the forward's count is restored here.
    if num_threads is not None and torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        _RECOMPUTE.active = before


def checkpoint_contexts() -> tuple[Any, Any]:
    """``checkpoint``'s context_fn (called in forward): nothing around the forward, the recompute
    flag and the forward's thread count around the recompute."""
    return contextlib.nullcontext(), recomputing(torch.get_num_threads())
