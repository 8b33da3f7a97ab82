"""The Triton row gather of speed.embeddings_on_host (speed/host_gather_kernels.py) against the
table itself, on the CPU through Triton's interpreter where Triton is installed (the GPU read of
pinned memory is checked in tests/gpu)."""

from __future__ import annotations

import pytest

from tests.triton_interpreter import run_interpreted

pytest.importorskip("triton")

CHECK = """
import torch
from legaltune.speed.host_gather_kernels import gather_rows
table = torch.randn(300, 1030).to(torch.bfloat16)  # a width past one block of 1,024
ids = torch.tensor([0, 299, 7, 7, 150, 300])  # the last is past the table
out = torch.empty(len(ids), 1030, dtype=torch.bfloat16)
gather_rows[(len(ids),)](table, ids, out, 300, DIM=1030, BLOCK=1024)
assert torch.equal(out[:5], table[ids[:5]])
assert out[5].float().isnan().all()
print("ok")
"""


def test_rows_are_the_tables_and_an_id_past_it_is_nan():
    run_interpreted(CHECK)
