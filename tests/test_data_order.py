"""The training order is a function of (seed, epoch): a resumed process, whose global RNG never saw the
epochs before, draws the same batches as an uninterrupted one."""

from __future__ import annotations

import torch
from transformers import TrainerControl, TrainerState

from legaltune.train.data_order import EpochSeededLengthGroupedSampler, ResumedEpochOrder

LENGTHS = [5, 80, 13, 64, 7, 33, 90, 2, 41, 18, 27, 70]


def _order(epoch: int, seed: int = 3, global_seed: int = 0) -> list[int]:
    torch.manual_seed(global_seed)  # the global RNG state a fresh or resumed process happens to have
    s = EpochSeededLengthGroupedSampler(2, lengths=LENGTHS, seed=seed)
    s.set_epoch(epoch)
    return list(s)


def test_order_depends_on_seed_and_epoch_only():
    assert _order(1, global_seed=0) == _order(1, global_seed=12345)
    assert sorted(_order(0)) == list(range(len(LENGTHS)))
    assert _order(0) != _order(1)
    assert _order(1, seed=3) != _order(1, seed=4)


def test_resumed_epoch_order_sets_the_epoch_under_a_skipping_wrapper():
    sampler = EpochSeededLengthGroupedSampler(2, lengths=LENGTHS, seed=3)

    class Batches:  # what accelerate's resume wrapper exposes: a batch sampler holding the sampler
        def __init__(self, inner):
            self.sampler = inner

    class Loader:
        batch_sampler = Batches(sampler)

    state = TrainerState()
    state.epoch = 2.0000001
    ResumedEpochOrder().on_epoch_begin(None, state, TrainerControl(), train_dataloader=Loader())
    assert sampler.epoch == 2 and list(sampler) == _order(2)
