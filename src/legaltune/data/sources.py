"""Which records a config trains on: the seeded train/eval hold-out and the count before filtering."""

from __future__ import annotations

import math
import random
from typing import Any

from legaltune.config.schema import Config
from legaltune.records.read import read_records


def split_train_eval(records: list[Any], val_split: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Seeded hold-out: the same seed and data give the same split."""
    if val_split <= 0:
        return list(records), []
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, math.floor(len(records) * val_split))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(records) if i not in held], [records[i] for i in sorted(held)]


def count_train_examples(cfg: Config) -> int:
    """Training records the config will use (before deduplication and token-length filtering)."""
    records = read_records(cfg.data.train_file, cfg.data.encoding)  # type: ignore[arg-type]
    n = (
        len(records)
        if cfg.data.eval_file
        else len(split_train_eval(records, cfg.data.val_split, cfg.effective_seed)[0])
    )
    limit = cfg.data.max_train_examples
    return min(n, limit) if limit else n
