"""Reading data files into records, with file:line on every error.

Formats: JSONL, JSON (an array, or {"data"|"items": [...]}), CSV, Parquet, a `datasets`
directory saved with save_to_disk, and a hub dataset id when the hub is reachable.
"""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path
from typing import Any

from legaltune.config.schema import Config


class DataError(ValueError):
    """A data problem, with the file (and line) where it is and how to fix it."""


def read_records(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """All records of a file as (location, record); location is 'file:line' (or 'file[i]')."""
    path = Path(path)
    if path.is_dir():
        return _read_saved_dataset(path)
    if not path.exists():
        if "/" in str(path) and not str(path).startswith((".", "/")) and path.suffix == "":
            return _read_hub(str(path))
        raise DataError(f"{path}: data file not found; check data.train_file / data.eval_file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".csv":
        return _read_csv(path)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        return [(f"{path}[row {i + 1}]", r) for i, r in enumerate(rows)]
    raise DataError(
        f"{path}: unsupported file type '{suffix}'; use .jsonl, .json, .csv, .parquet or a datasets directory"
    )


def _read_jsonl(path: Path) -> list[tuple[str, dict[str, Any]]]:
    out = []
    # utf-8-sig drops a BOM; newline="" keeps CRLF inside the line so json sees it as whitespace.
    with path.open(encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})"
                ) from None
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{lineno}: each line must be a JSON object, got {type(rec).__name__}")
            out.append((f"{path}:{lineno}", rec))
    return out


def _read_json(path: Path) -> list[tuple[str, dict[str, Any]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if isinstance(data, dict):
        for key in ("data", "items"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
        else:
            raise DataError(f"{path}: a JSON object must hold the records under 'data' or 'items'")
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of records")
    bad = [i for i, r in enumerate(data) if not isinstance(r, dict)]
    if bad:
        raise DataError(f"{path}[{bad[0]}]: records must be JSON objects")
    return [(f"{path}[{i}]", r) for i, r in enumerate(data)]


def _read_csv(path: Path) -> list[tuple[str, dict[str, Any]]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        # line_num after reading a row is the physical line where it ended (multi-line cells count).
        return [(f"{path}:{reader.line_num}", dict(row)) for row in reader]


def _read_saved_dataset(path: Path) -> list[tuple[str, dict[str, Any]]]:
    from datasets import load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as exc:
        raise DataError(f"{path}: not a dataset saved with save_to_disk ({exc})") from None
    if hasattr(ds, "keys"):  # a DatasetDict: take its train split
        if "train" not in ds:
            raise DataError(f"{path}: DatasetDict without a 'train' split (has {list(ds.keys())})")
        ds = ds["train"]
    return [(f"{path}[{i}]", r) for i, r in enumerate(ds)]


def _read_hub(name: str) -> list[tuple[str, dict[str, Any]]]:
    from datasets import load_dataset

    try:
        ds = load_dataset(name, split="train")
    except Exception as exc:
        raise DataError(
            f"{name}: not a local file, and loading it from the hub failed ({type(exc).__name__})"
        ) from None
    return [(f"{name}[{i}]", r) for i, r in enumerate(ds)]


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
    records = read_records(cfg.data.train_file)  # type: ignore[arg-type]
    n = (
        len(records)
        if cfg.data.eval_file
        else len(split_train_eval(records, cfg.data.val_split, cfg.effective_seed)[0])
    )
    limit = cfg.data.max_train_examples
    return min(n, limit) if limit else n
