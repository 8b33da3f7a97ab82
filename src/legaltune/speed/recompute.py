"""Whether backward is recomputing a layer that legaltune checkpointed (per thread), and for which model.

The checkpointing (offload.py) marks each recompute with the model's :class:`RecomputeStats`; the
fused LoRA math reads the mark to skip work whose result the recompute never uses (and counts it
on that model's stats) and to keep dequantized weights for the backward that follows.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

_RECOMPUTE = threading.local()


@dataclass
class RecomputeStats:
    """What one model's checkpointed layers saved while they were recomputed."""

    skips: int = 0  # projection GEMMs left out (their output feeds nothing backward needs)


def recompute_now() -> RecomputeStats | None:
    """The stats of the model whose layer this thread is recomputing; None outside a recompute."""
    return getattr(_RECOMPUTE, "stats", None)


def in_recompute() -> bool:
    """True while backward recomputes a layer checkpointed by legaltune (this thread): the fused
    LoRA projections whose output the recompute never uses skip their GEMM then."""
    return recompute_now() is not None


@contextlib.contextmanager
def recomputing(stats: RecomputeStats | None = None, num_threads: int | None = None) -> Iterator[None]:
    """Marks this thread as recomputing a layer of the model that ``stats`` belongs to (a fresh one
    when None); ``num_threads``: the forward's intra-op thread count."""
    before = recompute_now()
    _RECOMPUTE.stats = stats if stats is not None else RecomputeStats()
    # Backward (and so the recompute) runs on autograd's device thread, which takes its intra-op
    # thread count from the last torch.set_num_threads of any thread: the DataLoader's pin-memory
    # thread sets 1. A compiled layer guards on that count, so the recompute would compile a second
    # graph for it; the forward's count is restored here.
    if num_threads is not None and torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        _RECOMPUTE.stats = before


def checkpoint_contexts(stats: RecomputeStats | None = None) -> tuple[Any, Any]:
    """``checkpoint``'s context_fn (called in forward, with ``stats`` bound by the caller): nothing
    around the forward, the recompute mark and the forward's thread count around the recompute."""
    return contextlib.nullcontext(), recomputing(stats, torch.get_num_threads())
