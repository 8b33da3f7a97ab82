"""Packing and batching in which examples never attend to each other.

A packed row concatenates examples with ``position_ids`` restarting at 0 for each example and no
attention mask. transformers derives per-example boundaries from the position resets (varlen
flash attention, or a block-diagonal mask for SDPA / eager / flex), so no token sees another
example; ``tests/test_pack.py`` checks that a packed row's logits equal each
example's logits computed alone. Labels need no extra care at boundaries because every example's
first label is already ignored (see format.py).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import torch

from legaltune.data.format import IGNORE
from legaltune.records.read import DataError


def pack_lengths(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing: indices of examples per row, each row ≤ capacity tokens.

    Deterministic (ties broken by index) so that a resumed run sees the same rows.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining capacity, row index), sorted
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(
                f"example {i} has {n} tokens > row capacity {capacity}; truncate or drop it first"
            )
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            remaining, row = free.pop(k)
            rows[row].append(i)
            bisect.insort(free, (remaining - n, row))
        else:
            rows.append([i])
            bisect.insort(free, (capacity - n, len(rows) - 1))
    return rows


def pack_examples(examples: list[dict[str, Any]], capacity: int) -> list[dict[str, Any]]:
    """Rows of concatenated examples with their lengths (to restart positions in the collator)."""
    rows = pack_lengths([len(e["input_ids"]) for e in examples], capacity)
    out = []
    for row in rows:
        ids: list[int] = []
        labels: list[int] = []
        for i in row:
            ids.extend(examples[i]["input_ids"])
            labels.extend(examples[i]["labels"])
        out.append(
            {"input_ids": ids, "labels": labels, "seq_lens": [len(examples[i]["input_ids"]) for i in row]}
        )
    return out


NO_TRAINED_TOKENS = (
    "a micro-batch has no trained tokens (all labels ignored); this would train on a zero loss. "
    "Check data.train_on and that assistant answers survive truncation (legaltune data check)"
)


@dataclass
class BatchCollator:
    """Micro-batches for the Trainer, in one of two layouts.

    - Unpacked examples: right-padded to the longest in the batch, with an attention mask.
    - Packed rows (``seq_lens`` present): no attention mask; ``position_ids`` restart at 0 for every
      example (and for the padding tail), which is how transformers separates packed examples.
      A single packed row per micro-batch is fully padding-free.
    - ``padding_free``: every micro-batch as one such row (see the field below).

    Raises when a micro-batch has no trained token: that would be a silent zero loss.
    """

    pad_token_id: int = 0
    # One row per micro-batch: its examples back to back, with ``cu_seq_lens_q/k`` (the example
    # boundaries, as FlashAttention's varlen kernels take them) beside the restarting positions.
    # The micro-batch keeps its examples (the schedule does not change); only padding goes.
    padding_free: bool = False
    # Upper bound on one example's length, passed as ``max_length_q/k`` (a constant, so that
    # compiled layers do not specialise on each micro-batch's longest example).
    max_length: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if self.padding_free:
            return self._padding_free(features)
        n, width = len(features), max(len(f["input_ids"]) for f in features)
        ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE, dtype=torch.long)
        packed = any("seq_lens" in f for f in features)
        extra = torch.zeros((n, width), dtype=torch.long)  # position ids (packed) or attention mask
        for r, f in enumerate(features):
            k = len(f["input_ids"])
            ids[r, :k] = torch.tensor(f["input_ids"])
            labels[r, :k] = torch.tensor(f["labels"])
            if packed:
                pos: list[int] = []
                for length in [*(f.get("seq_lens") or [k]), width - k]:
                    pos.extend(range(length))
                extra[r] = torch.tensor(pos)
            else:
                extra[r, :k] = 1
        if bool((labels == IGNORE).all()):
            raise DataError(NO_TRAINED_TOKENS)
        key = "position_ids" if packed else "attention_mask"
        return {"input_ids": ids, "labels": labels, key: extra}

    def _padding_free(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        ids: list[int] = []
        labels: list[int] = []
        lengths: list[int] = []
        for f in features:
            ids.extend(f["input_ids"])
            labels.extend(f["labels"])
            lengths.extend(f.get("seq_lens") or [len(f["input_ids"])])
        label_t = torch.tensor([labels], dtype=torch.long)
        if bool((label_t == IGNORE).all()):
            raise DataError(NO_TRAINED_TOKENS)
        positions = [p for n in lengths for p in range(n)]
        bounds = torch.zeros(len(lengths) + 1, dtype=torch.int32)
        bounds[1:] = torch.tensor(lengths, dtype=torch.int32).cumsum(0)
        longest = self.max_length or max(lengths)
        return {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "labels": label_t,
            "position_ids": torch.tensor([positions], dtype=torch.long),
            "cu_seq_lens_q": bounds,
            "cu_seq_lens_k": bounds.clone(),
            "max_length_q": longest,
            "max_length_k": longest,
        }


def efficiency(
    lengths: list[int], max_len: int, batch_size: int, packed_rows: int | None
) -> dict[str, float]:
    """Share of real tokens among tokens processed, under each batching scheme.

    The seed's example: three examples of 200/150/300 tokens padded to 8192 is 2.7 %.
    """
    real = sum(lengths)
    if not lengths:
        return {}
    out = {"padded_to_max_seq_length": real / (len(lengths) * max_len)}
    # dynamic padding to the longest example of each batch, in data order
    padded = sum(
        max(lengths[i : i + batch_size]) * len(lengths[i : i + batch_size])
        for i in range(0, len(lengths), batch_size)
    )
    out["padded_to_longest_in_batch"] = real / padded
    if packed_rows:
        out["packed_rows_fill"] = real / (packed_rows * max_len)
    return out


def largest_micro_batch(
    lengths: list[int], batch_size: int, *, padding_free: bool, pad_to: int | None = None
) -> tuple[int, int]:
    """(rows, tokens per row) of the largest micro-batch these examples (or packed rows) can make,
    whatever order the sampler draws them in: the memory a run needs, rather than the
    ``batch_size x max_seq_length`` worst case of the config.

    Padding-free: one row of the ``batch_size`` longest together. Padded: ``batch_size`` rows of the
    longest (rounded up to ``pad_to``)."""
    if not lengths:
        return 0, 0
    longest = sorted(lengths, reverse=True)[:batch_size]
    if padding_free:
        return 1, sum(longest)
    width = longest[0]
    if pad_to:
        width = -(-width // pad_to) * pad_to
    return len(longest), width
