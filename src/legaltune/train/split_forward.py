"""One padding-free micro-batch as several forwards of whole examples, with the same gradient.

Seed 000's micro-batch is 32 examples: padding-free, that is one row of up to 32 x 8,192 tokens,
and the activations of a forward that large make the speed plan checkpoint (and offload) most
layers. A forward and backward over each group of the micro-batch's examples in turn frees one
group's activations before the next, so the same micro-batch runs with fewer layers checkpointed
or none. The gradient is unchanged: the Trainer normalises a step's loss by the trained tokens
of its whole accumulation window (``num_items_in_batch``), so the groups' losses add up to the
micro-batch's; where it averages per micro-batch instead, each group's mean is weighted by its
share of the micro-batch's trained tokens. The optimizer step, the schedule and the examples a
step sees are the seed's; only the memory a forward needs changes.

The speed plan (:mod:`legaltune.plan.speed`, ``speed.forward_tokens``) decides the largest group.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

IGNORE = -100
_SLICED = ("input_ids", "labels", "position_ids")


def split_micro_batch(inputs: dict[str, Any], max_tokens: int) -> list[dict[str, Any]]:
    """``inputs`` (one padding-free row with ``cu_seq_lens_q`` example bounds) as consecutive groups
    of whole examples of at most ``max_tokens`` tokens each; an example longer than that is a group
    alone. A micro-batch that fits, or that is not padding-free, comes back as it is."""
    bounds_t = inputs.get("cu_seq_lens_q")
    if bounds_t is None or inputs["input_ids"].shape[0] != 1:
        return [inputs]
    bounds = [int(b) for b in bounds_t.tolist()]
    if bounds[-1] <= max_tokens:
        return [inputs]
    groups: list[tuple[int, int]] = []
    first = 0
    for i in range(1, len(bounds)):
        if bounds[i] - bounds[first] > max_tokens and i - 1 > first:
            groups.append((first, i - 1))
            first = i - 1
    groups.append((first, len(bounds) - 1))
    out = []
    for a, b in groups:
        lo, hi = bounds[a], bounds[b]
        part = dict(inputs)
        for key in _SLICED:
            if key in inputs:
                part[key] = inputs[key][:, lo:hi]
        cu = bounds_t[a : b + 1] - lo
        part["cu_seq_lens_q"], part["cu_seq_lens_k"] = cu, cu.clone()
        out.append(part)
    return out


def _reduces(model: Any) -> bool:
    """A DDP-wrapped model (its backward starts the ranks' gradient reduction)."""
    return isinstance(model, torch.nn.parallel.DistributedDataParallel)


def _trained(labels: torch.Tensor) -> int:
    return int((labels[..., 1:] != IGNORE).sum())  # the positions a causal LM loss counts


class SplitForwards:
    """Trainer mixin: ``forward_tokens`` (None = off) caps the tokens of one forward; a larger
    padding-free micro-batch is trained as :func:`split_micro_batch`'s groups, one forward and
    backward each (see the module doc). Under DDP every group but the last one trained runs
    inside ``no_sync``, so each rank reduces its gradients once per micro-batch, as unsplit (the
    ranks' group counts may differ). FSDP is not split (the plan keeps one forward there)."""

    forward_tokens: int | None = None
    _group_weight: float = 1.0

    def training_step(self, model, inputs, num_items_in_batch=None):  # type: ignore[no-untyped-def]
        parts = split_micro_batch(inputs, self.forward_tokens) if self.forward_tokens else [inputs]
        if len(parts) == 1:
            return super().training_step(model, inputs, num_items_in_batch)  # type: ignore[misc]
        summed = (
            getattr(self, "model_accepts_loss_kwargs", False) and num_items_in_batch is not None
        ) or getattr(self, "compute_loss_func", None) is not None
        counts = [_trained(p["labels"]) for p in parts]
        total = sum(counts) or 1
        # no trained token: no loss, no gradient (and a mean over none is NaN); the collator has
        # refused micro-batches with none at all, so there is a last group
        trained = [(p, c) for p, c in zip(parts, counts, strict=True) if c]
        loss = None
        try:
            for i, (part, count) in enumerate(trained):
                self._group_weight = 1.0 if summed else count / total
                hold = i < len(trained) - 1 and _reduces(model)
                with model.no_sync() if hold else contextlib.nullcontext():
                    step = super().training_step(model, part, num_items_in_batch)  # type: ignore[misc]
                loss = step if loss is None else loss + step
        finally:
            self._group_weight = 1.0
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[no-untyped-def]
        result = super().compute_loss(  # type: ignore[misc]
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        if self._group_weight == 1.0:
            return result
        if return_outputs:
            return result[0] * self._group_weight, result[1]
        return result * self._group_weight


__all__ = ["SplitForwards", "split_micro_batch"]
