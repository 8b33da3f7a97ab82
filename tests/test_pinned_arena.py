"""The offloader's pinned arena: placement, reuse across forwards, never overlapping live tensors.

The blocks here are plain CPU memory (``allocate``), so the placement logic runs without a GPU;
tests/gpu/test_gpu_offload.py runs the registered blocks under a real offloaded backward."""

from __future__ import annotations

import gc
import os
import threading

import pytest
import torch

from legaltune.speed.pinned_arena import PinnedArena
from legaltune.speed.policy import PINNED_ALIGN, pinned_bytes

KIB = 1 << 10


class _PlainBlock:
    def __init__(self, nbytes: int) -> None:
        self.tensor = torch.empty(nbytes, dtype=torch.uint8)
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _arena(block_kib: int = 64) -> tuple[PinnedArena, list[_PlainBlock]]:
    made: list[_PlainBlock] = []

    def allocate(nbytes: int) -> _PlainBlock:
        made.append(_PlainBlock(nbytes))
        return made[-1]

    return PinnedArena(block_bytes=block_kib * KIB, allocate=allocate), made


def _span(t: torch.Tensor) -> tuple[int, int]:
    return t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()


def _assert_disjoint(views: list[torch.Tensor]) -> None:
    spans = sorted(_span(v) for v in views)
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end <= start, "two live tensors share pinned memory"


def test_pinned_bytes_round_to_a_page_not_a_power_of_two():
    mib = 1 << 20
    assert pinned_bytes(48 * mib) == 48 * mib
    assert pinned_bytes(1) == PINNED_ALIGN and pinned_bytes(PINNED_ALIGN + 1) == 2 * PINNED_ALIGN
    assert pinned_bytes(0) == 0


def test_take_keeps_dtype_shape_and_strides_and_holds_the_data():
    arena, _ = _arena()
    source = torch.randn(4, 6, 8, dtype=torch.bfloat16).transpose(1, 2)  # dense, not contiguous
    host = arena.take(source)
    assert host.dtype == source.dtype and host.shape == source.shape and host.stride() == source.stride()
    host.copy_(source)
    assert torch.equal(host, source)


def test_tensors_are_placed_one_after_another_page_aligned():
    arena, made = _arena(block_kib=64)
    a = arena.take(torch.empty(5000, dtype=torch.uint8))
    b = arena.take(torch.empty(1000, dtype=torch.float32))
    base = made[0].tensor.data_ptr()
    assert a.data_ptr() == base and b.data_ptr() == base + 2 * PINNED_ALIGN
    assert arena.blocks == 1


def test_a_forward_s_blocks_are_reused_by_the_next_forward_of_any_size():
    arena, made = _arena(block_kib=64)
    for tokens in (300, 900, 500, 900, 120):  # micro-batches of varying length
        views = [arena.take(torch.empty(tokens, 16, dtype=torch.float32)) for _ in range(6)]
        _assert_disjoint(views)
        del views  # the backward frees the forward's tensors
        gc.collect()
    # 6 x 900 x 64 B = 338 KiB at the longest: 6 blocks of 64 KiB (one tensor of 57 KiB each),
    # made during the first forward that long and reused afterwards
    assert arena.blocks == len(made) == 6
    assert arena.reserved == 6 * 64 * KIB
    assert arena.peak_live_bytes == 6 * pinned_bytes(900 * 64) and arena.live_bytes == 0


def test_a_block_with_a_live_tensor_is_never_handed_out_again():
    arena, _ = _arena(block_kib=64)
    kept = arena.take(torch.empty(10 * KIB, dtype=torch.uint8))  # e.g. a graph kept for later
    first = [arena.take(torch.empty(20 * KIB, dtype=torch.uint8)) for _ in range(5)]
    del first
    gc.collect()
    second = [arena.take(torch.empty(20 * KIB, dtype=torch.uint8)) for _ in range(5)]
    _assert_disjoint([kept, *second])
    kept.fill_(7)
    for view in second:
        view.fill_(1)
    assert bool((kept == 7).all())


def test_a_tensor_larger_than_a_block_gets_a_block_of_its_own():
    arena, made = _arena(block_kib=64)
    big = arena.take(torch.empty(100 * KIB, dtype=torch.uint8))
    assert arena.blocks == 1 and made[0].tensor.numel() == 100 * KIB
    del big
    gc.collect()
    small = arena.take(torch.empty(KIB, dtype=torch.uint8))  # the freed large block is reused
    assert arena.blocks == 1 and small.data_ptr() == made[0].tensor.data_ptr()


def test_tensors_freed_on_another_thread_free_their_block():
    arena, _ = _arena(block_kib=64)
    views = [arena.take(torch.empty(30 * KIB, dtype=torch.uint8)) for _ in range(4)]
    holder = {"views": views}
    del views
    worker = threading.Thread(target=holder.clear)  # autograd releases saved tensors off the main thread
    worker.start()
    worker.join()
    gc.collect()
    again = [arena.take(torch.empty(30 * KIB, dtype=torch.uint8)) for _ in range(4)]
    assert arena.blocks == 2
    _assert_disjoint(again)


def test_release_closes_every_block_and_the_arena_can_start_again():
    arena, made = _arena()
    old = arena.take(torch.empty(KIB, dtype=torch.uint8))
    arena.release()
    assert all(block.closed for block in made) and arena.reserved == 0
    new = arena.take(torch.empty(KIB, dtype=torch.uint8))
    del old  # a view of a released block: must not free room in the new one
    gc.collect()
    assert arena.blocks == 1 and arena._live == [1] and arena.live_bytes == PINNED_ALIGN
    del new
    gc.collect()
    assert arena._live == [0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_registering_without_cuda_is_an_error_the_offloader_can_catch():
    from legaltune.speed.pinned_arena import register_block

    with pytest.raises((RuntimeError, AssertionError)):
        register_block(1 << 20)


def _mapped_in(pid_maps: str, address: int) -> bool:
    for line in pid_maps.splitlines():
        start, end = (int(x, 16) for x in line.split()[0].split("-"))
        if start <= address < end:
            return True
    return False


@pytest.mark.skipif(not hasattr(os, "fork") or not os.path.exists("/proc/self/maps"), reason="Linux fork")
def test_a_block_is_not_copied_into_forked_children():
    """Data-loader workers are forked at every epoch: pinned pages would be copied into each of them
    (the kernel does not share pages pinned for DMA copy-on-write), so the block is left out."""
    from legaltune.speed.pinned_arena import _fault_in, anonymous_map

    memory = anonymous_map(8 << 20)
    block = torch.frombuffer(memory, dtype=torch.uint8)
    _fault_in(block.data_ptr(), block.numel(), 2)
    address = block.data_ptr()
    with open("/proc/self/maps") as f:
        assert _mapped_in(f.read(), address)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: is the block's range mapped here?
        with open("/proc/self/maps") as f:
            os.write(write, b"1" if _mapped_in(f.read(), address) else b"0")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.waitpid(pid, 0)
    assert answer == b"0", "the forked child got a copy of the block"


def test_smaller_tensors_fill_the_tails_larger_ones_left():
    """A layer's small tensors (k, v, the LSE) go into an earlier block's tail instead of a new block."""
    arena, made = _arena(block_kib=64)
    views = [arena.take(torch.empty(n * KIB, dtype=torch.uint8)) for n in (40, 40, 20, 20)]
    _assert_disjoint(views)
    assert arena.blocks == 2  # 40 | 40, then 20 into the first block's 24 KiB tail, 20 into the second's
    assert views[2].data_ptr() == made[0].tensor.data_ptr() + 40 * KIB
