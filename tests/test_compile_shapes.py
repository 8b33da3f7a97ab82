"""Compiled layers keep one graph while every micro-batch has another length (speed/compile.py)."""

import pytest
import torch

from legaltune.data.format import IGNORE
from legaltune.data.pack import BatchCollator
from legaltune.speed import compile as compile_mod
from legaltune.speed.compile import compile_layers
from tests.conftest import make_tiny_llama

# padded: micro-batches of two, every one another width (two lengths, so each keeps its mask);
# padding-free: every row another length and another number of examples
PADDED = [[9, 20], [31, 5], [40, 2], [7, 12], [25, 3]]
PADDING_FREE = [[9, 20], [31, 5, 12], [40, 2], [7, 7, 7, 7], [25, 3]]


def _graphs_over_lengths(padding_free: bool) -> int:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = make_tiny_llama(300).train()
    compile_layers(model, backend="aot_eager")
    collate = BatchCollator(padding_free=padding_free, max_length=64)
    g = torch.Generator().manual_seed(0)
    for lengths in PADDING_FREE if padding_free else PADDED:
        feats = []
        for n in lengths:
            ids = torch.randint(0, 300, (n,), generator=g).tolist()
            feats.append({"input_ids": ids, "labels": [IGNORE, *ids[1:]]})
        batch = collate(feats)
        inputs = {
            k: batch[k] for k in ("input_ids", "labels", "attention_mask", "position_ids") if k in batch
        }
        model(**inputs).loss.backward()
    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("padding_free", [False, True])
def test_one_graph_serves_every_micro_batch_length(padding_free):
    # the layers share their code: one graph for the first length, none for the four after it
    assert _graphs_over_lengths(padding_free) == 1


def test_without_marking_lengths_recompile(monkeypatch):
    """The check above can fail: with the marking switched off, a new length compiles a new graph."""
    monkeypatch.setattr(compile_mod, "mark_token_dims", lambda *a, **k: None)
    assert _graphs_over_lengths(True) > 1
