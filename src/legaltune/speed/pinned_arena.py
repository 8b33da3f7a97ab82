"""Pinned host memory for the offloader: a few large registered blocks, reused by every forward.

Through PyTorch's pinned allocator (``pin_memory=True``) each offloaded tensor of a run's first
step is a fresh ``cudaHostAlloc``, which faults and locks its pages on one thread at ~1.8 GiB/s:
on the seed's H200 preset that was 24 s of the first step (py-spy, docs/performance.md). Its
blocks are also rounded up to a power of two, and a later micro-batch with longer rows needs
larger blocks than the cached ones, so allocation continues past the first micro-batch.

Here the memory is anonymous ``mmap`` pages, faulted in from several threads and then locked with
one ``cudaHostRegister`` per block (``benchmarks/pinned_alloc.py`` measures both ways). Tensors are
placed one after another in the first block with room (page-aligned, no other rounding), and a
block is reused once every tensor in it is freed (a forward's are, by its backward). So the blocks
grow to one forward's peak once and are then reused, however the batch sizes vary.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from legaltune.speed.policy import PINNED_ALIGN, pinned_bytes

logger = logging.getLogger(__name__)

# A block is at least this large: few registrations, and a tail too short for the next large tensor
# is left for the smaller ones after it.
BLOCK_BYTES = 2 << 30
_MAX_TOUCH_THREADS = 16


def _touch_threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, _MAX_TOUCH_THREADS))


def _fault_in(address: int, nbytes: int, threads: int) -> None:
    """Write every page once from ``threads`` threads (ctypes releases the GIL during memset): the
    kernel zero-fills each page on first touch, the slow part of pinning, and runs it in parallel
    here, where cudaHostRegister would do it on one thread."""
    step = -(-nbytes // threads)
    step = -(-step // mmap.PAGESIZE) * mmap.PAGESIZE
    spans = [(offset, min(step, nbytes - offset)) for offset in range(0, nbytes, step)]
    with ThreadPoolExecutor(len(spans)) as pool:
        list(pool.map(lambda span: ctypes.memset(address + span[0], 0, span[1]), spans))


def anonymous_map(nbytes: int, huge_pages: bool = True) -> mmap.mmap:
    """Private anonymous memory for a block, left out of forked children.

    ``MADV_DONTFORK`` matters: Linux copies a page that is pinned for DMA into the child at fork
    instead of sharing it copy-on-write, so every data-loader worker forked at an epoch's start
    would copy the whole arena (4 workers x 22 GiB ended a run of seed 000's preset in the OOM
    killer; PyTorch's own ``pinned_use_cuda_host_register`` pages are copied the same way). The
    workers never touch the arena. ``MADV_HUGEPAGE``: 2 MiB pages fault in ~1.7x faster."""
    memory = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_DONTFORK"):
        memory.madvise(mmap.MADV_DONTFORK)
    if huge_pages and hasattr(mmap, "MADV_HUGEPAGE"):
        memory.madvise(mmap.MADV_HUGEPAGE)
    return memory


class _Block:
    """One registered host block; unregistered when the arena is released."""

    def __init__(self, nbytes: int, huge_pages: bool) -> None:
        self.map = anonymous_map(nbytes, huge_pages)
        self.tensor = torch.frombuffer(self.map, dtype=torch.uint8)
        self.address = self.tensor.data_ptr()
        _fault_in(self.address, nbytes, _touch_threads())
        error = torch.cuda.cudart().cudaHostRegister(self.address, nbytes, 0)
        if int(error) != 0:
            self.close(registered=False)
            raise RuntimeError(
                f"cudaHostRegister of {nbytes / (1 << 30):.1f} GiB failed (error {int(error)})"
            )

    def close(self, registered: bool = True) -> None:
        if registered:
            torch.cuda.cudart().cudaHostUnregister(self.address)
        # Not map.close(): a tensor still viewing the block would point at unmapped memory. The
        # tensors hold the mmap; it is unmapped when the last of them is freed.
        del self.tensor, self.map


def _release(blocks: list[_Block]) -> None:
    # Copies into or out of a block may still be queued: wait for them before unlocking its pages.
    if torch.cuda.is_initialized():
        try:
            torch.cuda.synchronize()
        except RuntimeError:  # the CUDA context is gone (interpreter exit): the process frees it all
            return
    for block in blocks:
        try:
            block.close()
        except RuntimeError:
            pass
    blocks.clear()


def register_block(nbytes: int, huge_pages: bool = True) -> _Block:
    """A page-locked host block of ``nbytes`` (the arena's default way to get one)."""
    return _Block(nbytes, huge_pages)


class PinnedArena:
    """Page-locked host memory handed out in order, each block reused once all it holds is freed.

    :meth:`take` returns a CPU tensor shaped and strided like the given one, inside a registered
    block. Each block hands out its memory in order (a bump pointer); a tensor goes into the first
    block with room left at its end (so the smaller tensors of a layer fill the tails the larger ones
    left), and a block whose tensors have all been freed starts over (a forward's tensors are all
    freed by its backward, so the next forward finds every block free). Only when no block has room
    is a new one registered. ``allocate`` makes a block (tests pass one that needs no GPU).
    """

    def __init__(
        self, block_bytes: int = BLOCK_BYTES, allocate: Callable[[int], _Block] = register_block
    ) -> None:
        self.block_bytes = block_bytes
        self._allocate = allocate
        self._blocks: list[_Block] = []
        self._live: list[int] = []  # tensors alive in each block
        # autograd frees saved tensors on its own threads; reentrant: a garbage collection inside take()
        # may free a view, whose finalizer takes the lock again on the same thread
        self._lock = threading.RLock()
        self._offsets: list[int] = []  # where each block's next tensor goes
        self.reserved = 0  # bytes registered, all blocks
        self.live_bytes = 0  # bytes of the tensors alive now (page-rounded)
        # the most alive at once, what one forward parked (reserved minus this: the unused tails)
        self.peak_live_bytes = 0
        self._generation = 0  # blocks made since the last release (a view of older ones frees nothing)
        self.register_seconds = 0.0  # time spent faulting in and registering blocks
        self._finalizer = weakref.finalize(self, _release, self._blocks)

    @property
    def blocks(self) -> int:
        return len(self._blocks)

    def take(self, like: torch.Tensor) -> torch.Tensor:
        """Room for a copy of the dense tensor ``like`` (same dtype, shape and strides)."""
        nbytes = like.numel() * like.element_size()
        need = pinned_bytes(nbytes)
        with self._lock:
            index = self._place(need)
            offset = self._offsets[index]
            self._offsets[index] += need
            self._live[index] += 1
            self.live_bytes += need
            self.peak_live_bytes = max(self.peak_live_bytes, self.live_bytes)
            flat = self._blocks[index].tensor[offset : offset + nbytes]
        view = flat.view(like.dtype).as_strided(like.shape, like.stride())
        weakref.finalize(view, self._freed, self._generation, index, need)
        return view

    def _place(self, need: int) -> int:
        """The first block with ``need`` bytes left at its end, registering one if none has (lock held)."""
        for index, block in enumerate(self._blocks):
            if self._live[index] == 0:  # all it held is freed: start it over
                self._offsets[index] = 0
            if self._offsets[index] + need <= block.tensor.numel():
                return index
        size = max(need, self.block_bytes)
        start = time.perf_counter()
        self._blocks.append(self._allocate(size))
        self.register_seconds += time.perf_counter() - start
        self._live.append(0)
        self._offsets.append(0)
        self.reserved += size
        logger.debug("pinned arena: block %d, %.2f GiB", len(self._blocks), size / (1 << 30))
        return len(self._blocks) - 1

    def _freed(self, generation: int, index: int, nbytes: int) -> None:
        with self._lock:
            if generation == self._generation:
                self._live[index] -= 1
                self.live_bytes -= nbytes

    def release(self) -> None:
        """Unregister and free every block now (otherwise when the arena is garbage-collected)."""
        with self._lock:
            self._finalizer()
            self._live.clear()
            self._offsets.clear()
            self.reserved = self.live_bytes = 0
            self._generation += 1
            self._finalizer = weakref.finalize(self, _release, self._blocks)  # for blocks made after


__all__ = ["BLOCK_BYTES", "PINNED_ALIGN", "PinnedArena", "anonymous_map", "register_block"]
