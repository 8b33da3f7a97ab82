"""Padding-free micro-batches: one row of the batch's examples, same loss as padded batches."""

import pytest
import torch

from legaltune.data.format import IGNORE
from legaltune.data.pack import BatchCollator, largest_micro_batch
from tests.conftest import make_tiny_llama


def _examples(lengths, vocab=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(0, vocab, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE, *ids[1:]]})
    return out


def test_padding_free_batch_is_one_row_with_boundaries():
    feats = _examples([3, 5, 2])
    batch = BatchCollator(padding_free=True, max_length=64)(feats)
    assert batch["input_ids"].shape == (1, 10) and "attention_mask" not in batch
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 4, 0, 1]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 8, 10] and batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["max_length_q"] == 64  # a constant bound, not this batch's longest
    # every token of every example is kept, in order
    assert batch["input_ids"][0].tolist() == [t for f in feats for t in f["input_ids"]]
    with pytest.raises(ValueError, match="no trained tokens"):
        BatchCollator(padding_free=True)([{"input_ids": [1, 2], "labels": [IGNORE, IGNORE]}])


def test_padding_free_keeps_packed_rows_apart():
    rows = [{"input_ids": [1, 2, 3, 4], "labels": [1, 2, 3, 4], "seq_lens": [1, 3]}, *_examples([2])]
    batch = BatchCollator(padding_free=True)(rows)
    assert batch["cu_seq_lens_q"].tolist() == [0, 1, 4, 6]
    assert batch["position_ids"].tolist() == [[0, 0, 1, 2, 0, 1]]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_free_loss_equals_padded_loss(attn):
    """The same micro-batch, padded with a mask or padding-free, gives the same loss and gradients
    (fp32, CPU: transformers keeps the examples apart by the position resets)."""
    feats = _examples([7, 13, 4, 9])
    model = make_tiny_llama(300, attn=attn)
    results = []
    for collator in (BatchCollator(), BatchCollator(padding_free=True, max_length=32)):
        batch = collator(feats)
        model.zero_grad()
        inputs = {
            k: v for k, v in batch.items() if k in ("input_ids", "labels", "attention_mask", "position_ids")
        }
        out = model(**inputs)
        out.loss.backward()
        grad = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
        results.append((out.loss.detach(), grad))
    (loss_a, grad_a), (loss_b, grad_b) = results
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_b, grad_a, atol=1e-5, rtol=1e-4)


def test_padding_free_without_position_reset_would_differ():
    """The check above can fail: the same row with positions running on mixes the examples."""
    feats = _examples([7, 13, 4, 9])
    model = make_tiny_llama(300)
    padded = BatchCollator()(feats)
    free = BatchCollator(padding_free=True)(feats)
    with torch.no_grad():
        a = model(
            input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], labels=padded["labels"]
        )
        b = model(input_ids=free["input_ids"], labels=free["labels"])  # no position ids: one long sequence
    assert not torch.allclose(a.loss, b.loss, atol=1e-3)


def test_largest_micro_batch_bounds_every_order():
    lengths = [100, 900, 50, 400, 300]
    assert largest_micro_batch(lengths, 2, padding_free=True) == (1, 1300)
    assert largest_micro_batch(lengths, 2, padding_free=False) == (2, 900)
    assert largest_micro_batch(lengths, 2, padding_free=False, pad_to=64) == (2, 960)
    assert largest_micro_batch(lengths, 8, padding_free=False) == (5, 900)  # fewer examples than a batch
    g = torch.Generator().manual_seed(1)
    for _ in range(20):  # no shuffled batching of these examples needs more tokens than the bound
        order = torch.randperm(len(lengths), generator=g).tolist()
        for i in range(0, len(order), 2):
            chunk = [lengths[j] for j in order[i : i + 2]]
            assert sum(chunk) <= 1300 and len(chunk) * max(chunk) <= 2 * 900
