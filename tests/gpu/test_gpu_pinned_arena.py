"""The pinned arena's registered blocks on a real GPU (``pytest -m gpu``): page-locked, and not
copied into forked children (data-loader workers), which is what ended runs in the OOM killer."""

from __future__ import annotations

import os

import pytest
import torch

from legaltune.speed.pinned_arena import register_block

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _child_rss_after_touching_nothing() -> int:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        with open("/proc/self/status") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        os.write(write, str(kib).encode())
        os._exit(0)
    os.close(write)
    kib = int(os.read(read, 64))
    os.waitpid(pid, 0)
    return kib << 10


def test_a_registered_block_is_pinned_and_stays_out_of_forked_children():
    gib = 1 << 30
    before = _child_rss_after_touching_nothing()
    block = register_block(2 * gib)
    try:
        assert block.tensor[: 1 << 20].is_pinned()
        after = _child_rss_after_touching_nothing()
        # a copied block would add its 2 GiB to the child's resident memory at fork
        assert after - before < gib // 4, (before, after)
    finally:
        block.close()
