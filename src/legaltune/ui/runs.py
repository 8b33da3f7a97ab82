"""The run directories under a folder, summarised for the index page."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legaltune.report.html import read_metrics


@dataclass
class RunRow:
    name: str
    path: Path
    modified: str
    status: str  # finished / interrupted / in progress or not started
    steps: int | None
    loss: float | None
    eval_loss: float | None
    tuned_f1: float | None


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None


def is_run(path: Path) -> bool:
    return path.is_dir() and ((path / "config.yaml").is_file() or (path / "adapter").is_dir())


def find_runs(root: Path) -> list[RunRow]:
    """Every run directory directly under ``root`` (newest first); unreadable files leave blanks."""
    if not root.is_dir():
        return []
    rows = []
    for path in sorted(
        (p for p in root.iterdir() if is_run(p)), key=lambda p: p.stat().st_mtime, reverse=True
    ):
        summary = _json(path / "train_summary.json") or {}
        metrics = read_metrics(path / "metrics.jsonl")
        losses = [m["loss"] for m in metrics if isinstance(m.get("loss"), int | float)]
        evals = [m["eval_loss"] for m in metrics if isinstance(m.get("eval_loss"), int | float)]
        ev = _json(path / "eval.json") or {}
        f1 = ev["tuned"].get("token_f1") if isinstance(ev.get("tuned"), dict) else None
        if summary:
            status = "interrupted" if summary.get("interrupted") else "finished"
        else:
            status = (
                "in progress"
                if metrics
                else ("adapter only" if (path / "adapter").is_dir() else "not started")
            )
        rows.append(
            RunRow(
                path.name,
                path,
                time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime)),
                status,
                max((m.get("step") or 0 for m in metrics), default=None),
                losses[-1] if losses else None,
                evals[-1] if evals else None,
                f1 if isinstance(f1, int | float) else None,
            )
        )
    return rows
