"""The order of training examples, made a function of (data_seed, epoch) so a resumed run sees the
same batches as an uninterrupted one, bit for bit, in every epoch.

Two things break that in transformers + accelerate, both when a run resumes inside its second or
later epoch (tests/test_train.py resumes there and compares the adapters bit for bit):

- ``group_by_length`` (legaltune's default) samples with ``LengthGroupedSampler`` and no generator,
  so each epoch's shuffle comes from the global RNG at the moment the epoch starts — a state a
  resumed process never had. ``EpochSeededLengthGroupedSampler`` shuffles with ``data_seed + epoch``.
- On resume the Trainer wraps the dataloader to skip the batches already trained, and the wrapper
  does not pass ``set_epoch`` on to the sampler (accelerate's seedable random sampler then shuffles
  the resumed epoch as epoch 0). ``ResumedEpochOrder`` sets the epoch on the shared sampler as each
  epoch begins, before the wrapper exists.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import BatchSampler
from transformers import TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """LengthGroupedSampler whose shuffle of epoch e is seeded with ``seed + e``."""

    def __init__(self, batch_size: int, *, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator.manual_seed(self.seed + self.epoch)
        return super().__iter__()


class EpochSeededOrder:
    """Trainer mixin: the length-grouped training sampler seeded per epoch (see the module docstring)."""

    def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
        sampler = super()._get_train_sampler(*args, **kwargs)  # type: ignore[misc]
        if type(sampler) is LengthGroupedSampler:
            a = self.args  # type: ignore[attr-defined]
            seed = a.data_seed if a.data_seed is not None else a.seed
            return EpochSeededLengthGroupedSampler(sampler.batch_size, lengths=sampler.lengths, seed=seed)
        return sampler


class ResumedEpochOrder(TrainerCallback):
    """Sets the epoch on the training sampler as each epoch begins (see the module docstring)."""

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kw):
        batches = getattr(train_dataloader, "batch_sampler", None)
        for candidate in (batches, getattr(batches, "sampler", None)):
            if hasattr(candidate, "set_epoch") and not isinstance(candidate, BatchSampler):
                candidate.set_epoch(int((state.epoch or 0) + 1e-6))
                return
