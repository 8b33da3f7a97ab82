"""Packing: no example attends to another; positions restart; efficiency numbers."""

import pytest
import torch

from legaltune.data.format import IGNORE
from legaltune.data.pack import BatchCollator, efficiency, pack_examples, pack_lengths
from tests.conftest import make_tiny_llama


def test_pack_lengths_respects_capacity_and_keeps_everything():
    lengths = [5, 9, 3, 7, 1, 10, 2, 8]
    rows = pack_lengths(lengths, 10)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 10 for r in rows)
    assert len(rows) == 5  # 45 tokens need ≥ 5 rows of 10; best-fit reaches the bound
    assert pack_lengths(lengths, 10) == rows  # deterministic
    with pytest.raises(ValueError, match="capacity"):
        pack_lengths([11], 10)


def test_collator_restarts_positions_and_rejects_all_masked():
    rows = pack_examples(
        [{"input_ids": [1, 2, 3], "labels": [IGNORE, 2, 3]}, {"input_ids": [4, 5], "labels": [IGNORE, 5]}], 8
    )
    batch = BatchCollator()(rows)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["input_ids"].shape == (1, 5) and "attention_mask" not in batch
    with pytest.raises(ValueError, match="no trained tokens"):
        BatchCollator()([{"input_ids": [1, 2], "labels": [IGNORE, IGNORE]}])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_equal_each_example_alone(attn):
    model = make_tiny_llama(300, attn=attn)
    g = torch.Generator().manual_seed(0)
    examples = [torch.randint(0, 300, (n,), generator=g).tolist() for n in (7, 13, 4)]
    rows = pack_examples([{"input_ids": e, "labels": e} for e in examples], 64)
    assert len(rows) == 1
    batch = BatchCollator()(rows)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        start = 0
        order = rows[0]["seq_lens"]
        # rows keep best-fit order (longest first); rebuild each example's slice from seq_lens
        by_len = {len(e): e for e in examples}
        for n in order:
            alone = model(input_ids=torch.tensor([by_len[n]])).logits[0]
            torch.testing.assert_close(packed[start : start + n], alone, atol=1e-5, rtol=1e-5)
            start += n


def test_without_position_reset_examples_would_leak():
    # the same check fails when positions are not reset: proves the test above can fail
    model = make_tiny_llama(300)
    a, b = list(range(10, 17)), list(range(50, 55))
    with torch.no_grad():
        joined = model(input_ids=torch.tensor([a + b])).logits[0, len(a) :]
        alone = model(input_ids=torch.tensor([b])).logits[0]
    assert not torch.allclose(joined, alone, atol=1e-3)


def test_efficiency_reproduces_the_seed_example():
    eff = efficiency([200, 150, 300], 8192, 3, None)
    assert eff["padded_to_max_seq_length"] == pytest.approx(650 / (3 * 8192))  # 2.6 %, the seed's "2.7 %"
    assert eff["padded_to_longest_in_batch"] == pytest.approx(650 / 900)
    packed = efficiency([4000, 4000, 150], 8192, 1, 1)
    assert packed["packed_rows_fill"] == pytest.approx(8150 / 8192)


def test_unpacked_batches_are_padded_with_a_mask():
    batch = BatchCollator(pad_token_id=9)(
        [{"input_ids": [1, 2, 3], "labels": [IGNORE, 2, 3]}, {"input_ids": [4], "labels": [4]}]
    )
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 2, 3], [4, IGNORE, IGNORE]]


def test_packed_rows_of_unequal_length_restart_positions_in_padding():
    rows = [
        {"input_ids": [1, 2, 3, 4], "labels": [1, 2, 3, 4], "seq_lens": [2, 2]},
        {"input_ids": [5, 6], "labels": [5, 6], "seq_lens": [2]},
    ]
    batch = BatchCollator()(rows)
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1], [0, 1, 0, 1]]
    assert "attention_mask" not in batch and batch["labels"][1, 2:].tolist() == [IGNORE, IGNORE]
