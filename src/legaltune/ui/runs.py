"""The run directories under a folder, summarised for the index page."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from legaltune.report.html import read_metrics
from legaltune.run.layout import RunDir, read_json


@dataclass
class RunRow:
    name: str
    path: Path
    modified: str
    status: str  # finished / interrupted / in progress / stopped (resume it) / not started
    steps: int | None
    loss: float | None
    eval_loss: float | None
    tuned_f1: float | None


def is_run(path: Path) -> bool:
    return path.is_dir() and RunDir(path).is_run()


_SHOWN = {"new": "not started"}


def _status(run: RunDir) -> str:
    status = run.status()
    if status == "unfinished":
        return "in progress" if run.training_now() else "stopped (resume it)"
    return _SHOWN.get(status, status)


def find_runs(root: Path) -> list[RunRow]:
    """Every run directory directly under ``root`` (newest first); unreadable files leave blanks."""
    if not root.is_dir():
        return []
    rows = []
    for path in sorted(
        (p for p in root.iterdir() if is_run(p)), key=lambda p: p.stat().st_mtime, reverse=True
    ):
        run = RunDir(path)
        metrics = read_metrics(run.metrics)
        losses = [m["loss"] for m in metrics if isinstance(m.get("loss"), int | float)]
        evals = [m["eval_loss"] for m in metrics if isinstance(m.get("eval_loss"), int | float)]
        ev = read_json(run.eval) or {}
        f1 = ev["tuned"].get("token_f1") if isinstance(ev.get("tuned"), dict) else None
        rows.append(
            RunRow(
                path.name,
                path,
                time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime)),
                _status(run),
                max((m.get("step") or 0 for m in metrics), default=None),
                losses[-1] if losses else None,
                evals[-1] if evals else None,
                f1 if isinstance(f1, int | float) else None,
            )
        )
    return rows
