"""Reading data files into records, with file:line on every error.

Formats: JSONL, JSON (an array, or {"data"|"items": [...]}), CSV, Parquet, a `datasets`
directory saved with save_to_disk, and a hub dataset id when the hub is reachable.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from legaltune.errors import UserError
from legaltune.records.encoding import EncodingError, decode_data


class DataError(UserError, ValueError):
    """A data problem, with the file (and line) where it is and how to fix it."""


def read_records(path: str | Path, encoding: str = "auto") -> list[tuple[str, dict[str, Any]]]:
    """All records of a file as (location, record); location is 'file:line' (or 'file[i]').

    Text files are decoded per ``encoding`` (data.encoding; see legaltune.records.encoding). A file
    with no record (empty, only whitespace, an empty array, a CSV header alone) is an error."""
    path = Path(path)
    if path.is_dir():
        records = _read_saved_dataset(path)
    elif not path.exists():
        if "/" in str(path) and not str(path).startswith((".", "/")) and path.suffix == "":
            records = _read_hub(str(path))
        else:
            raise DataError(f"{path}: data file not found; check data.train_file / data.eval_file")
    else:
        records = _read_file(path, encoding)
    if not records:
        raise DataError(f"{path} has no records; point data.train_file / data.eval_file at the data")
    return records


def _read_file(path: Path, encoding: str) -> list[tuple[str, dict[str, Any]]]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        return [(f"{path}[row {i + 1}]", r) for i, r in enumerate(rows)]
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv}
    if suffix not in readers:
        raise DataError(
            f"{path}: unsupported file type '{suffix}'; use .jsonl, .json, .csv, .parquet or a datasets directory"
        )
    try:
        text = decode_data(path.read_bytes(), path, encoding)
    except EncodingError as exc:
        raise DataError(str(exc)) from None
    return readers[suffix](path, text)


def jsonl_rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for each non-blank line of JSONL ``text`` read from ``path``."""
    out = []
    # split on "\n" only: U+2028 and other line breaks str.splitlines knows may sit inside a JSON
    # string; a CR of CRLF stays at the line's end, where json reads it as whitespace
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{lineno}: each line must be a JSON object, got {type(rec).__name__}")
        out.append((lineno, rec))
    return out


def read_jsonl(path: str | Path, encoding: str = "auto") -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each record of a JSONL file; an error names file:line, or says the
    file has no records."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        text = decode_data(path.read_bytes(), path, encoding)
    except EncodingError as exc:
        raise DataError(str(exc)) from None
    rows = jsonl_rows(path, text)
    if not rows:
        raise DataError(f"{path} has no records")
    return rows


def _read_jsonl(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{path}:{n}", rec) for n, rec in jsonl_rows(path, text)]


def _read_json(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    if not text.strip():
        return []
    try:
        data = json.loads(text)
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


def _read_csv(path: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    # line_num after reading a row is the physical line where it ended (multi-line cells count).
    # An empty cell is a missing value (None), as it is in Parquet: never the text "" or "NaN".
    return [
        (f"{path}:{reader.line_num}", {k: (v if v != "" else None) for k, v in row.items()}) for row in reader
    ]


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
