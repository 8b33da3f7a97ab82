"""speed.forward_tokens: a padding-free micro-batch trained as several forwards of whole examples
gives the gradient of one forward (CPU, fp32, a tiny Llama through the Trainer's own training_step)."""

from __future__ import annotations

import pytest
import torch

from legaltune.data.format import IGNORE
from legaltune.data.pack import BatchCollator
from legaltune.train.split_forward import SplitForwards, split_micro_batch
from tests.conftest import make_tiny_llama


def _examples(lengths, vocab=300, seed=0, prompt=2):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(0, vocab, (n,), generator=g).tolist()
        out.append(
            {"input_ids": ids, "labels": [IGNORE] * prompt + ids[prompt:]}
        )  # a prompt, then the answer
    return out


def test_groups_are_whole_examples_in_order_under_the_cap():
    batch = BatchCollator(padding_free=True, max_length=64)(_examples([5, 4, 9, 3, 2]))
    parts = split_micro_batch(batch, 10)
    assert [p["cu_seq_lens_q"].tolist() for p in parts] == [[0, 5, 9], [0, 9], [0, 3, 5]]
    assert all(p["cu_seq_lens_k"].tolist() == p["cu_seq_lens_q"].tolist() for p in parts)
    assert torch.equal(torch.cat([p["input_ids"] for p in parts], 1), batch["input_ids"])
    assert torch.equal(torch.cat([p["position_ids"] for p in parts], 1), batch["position_ids"])
    assert all(int(p["position_ids"][0, 0]) == 0 for p in parts)  # each group starts an example
    assert parts[0]["max_length_q"] == 64
    # an example longer than the cap is a group alone; a batch under the cap is left as it is
    assert [p["input_ids"].shape[1] for p in split_micro_batch(batch, 4)] == [5, 4, 9, 3, 2]
    assert split_micro_batch(batch, 23) == [batch]
    padded = BatchCollator()(_examples([5, 4]))
    assert split_micro_batch(padded, 3) == [padded]


def _trainer(tmp_path, model, cls):
    from transformers import TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, gradient_accumulation_steps=2
    )
    trainer = cls(model=model, args=args)
    trainer.current_gradient_accumulation_steps = 2  # set by the training loop, which is not run here
    return trainer


@pytest.mark.parametrize("normalised", [True, False], ids=["sum-over-window", "mean-per-micro-batch"])
def test_split_forwards_give_the_gradient_of_one_forward(tmp_path, normalised):
    """Both ways the Trainer scales a micro-batch's loss: by the window's trained tokens (what TRL and
    transformers do for causal LMs) and per micro-batch mean / accumulation steps."""
    from transformers import Trainer

    class Split(SplitForwards, Trainer):
        pass

    feats = _examples([7, 13, 4, 9, 6, 11])
    feats.insert(
        2, {"input_ids": list(range(1, 16)), "labels": [IGNORE] * 15}
    )  # a group with no trained token
    batch = BatchCollator(padding_free=True, max_length=32)(feats)
    items = torch.tensor(int((batch["labels"][..., 1:] != IGNORE).sum()) + 17) if normalised else None
    grads, losses = [], []
    for cap in (None, 16):
        model = make_tiny_llama(300)
        trainer = _trainer(tmp_path, model, Split)
        trainer.forward_tokens = cap
        if cap:
            assert len(split_micro_batch(batch, cap)) == 6  # [7] [13] [15 untrained] [4 9] [6] [11]
        # on the CPU the model keeps the examples apart by position_ids (the varlen bounds are for CUDA)
        loss = trainer.training_step(model, dict(batch), num_items_in_batch=items)
        losses.append(float(loss))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-4)


def test_unweighted_groups_would_not_match(tmp_path):
    """The check above can fail: per-micro-batch means added up without their token shares."""
    from transformers import Trainer

    class Unweighted(SplitForwards, Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    batch = BatchCollator(padding_free=True, max_length=32)(_examples([7, 13, 4, 9, 6, 11]))
    losses = []
    for cap in (None, 16):
        model = make_tiny_llama(300)
        trainer = _trainer(tmp_path, model, Unweighted)
        trainer.forward_tokens = cap
        losses.append(float(trainer.training_step(model, dict(batch), num_items_in_batch=None)))
    assert losses[1] > 1.5 * losses[0]


def test_under_ddp_only_the_last_trained_group_reduces(tmp_path):
    """A rank's backward under DDP starts the gradient all-reduce: the groups before the last one
    trained run inside no_sync, so a rank reduces once per micro-batch whatever its group count."""
    import torch.distributed as dist
    from transformers import Trainer

    class Split(SplitForwards, Trainer):
        pass

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rdzv", rank=0, world_size=1)
    try:
        model = torch.nn.parallel.DistributedDataParallel(make_tiny_llama(300))
        held = []
        real = model.no_sync

        def counting_no_sync():
            held.append(1)
            return real()

        model.no_sync = counting_no_sync
        trainer = _trainer(tmp_path, model.module, Split)
        trainer.forward_tokens = 16
        feats = _examples([7, 13, 4, 9, 6, 11])
        feats.append({"input_ids": list(range(1, 16)), "labels": [IGNORE] * 15})  # last group: none trained
        batch = BatchCollator(padding_free=True, max_length=32)(feats)
        items = torch.tensor(int((batch["labels"][..., 1:] != IGNORE).sum()))
        trainer.training_step(model, dict(batch), num_items_in_batch=items)
        assert len(split_micro_batch(batch, 16)) == 6 and len(held) == 4  # 5 trained groups, the last reduces
    finally:
        dist.destroy_process_group()
