"""What is where in a run directory, and how a command finds the run or adapter it was given.

    RUN/
      run.json             who made the run: name, config source, start time (the run's identity)
      config.yaml          the resolved config it trains with
      data_stats.json      counts from data preparation
      metrics.jsonl        one row per logged step (loss, lr, tokens/s, memory), whole run
      train.lock           present while a `legaltune train` writes the run (pid, host, start)
      checkpoints/
        checkpoint-N/      complete checkpoints only (sealed: legaltune_checkpoint.json lists every file)
        .tmp-checkpoint-N/ a checkpoint being written (renamed to checkpoint-N when complete)
        set-aside/         checkpoints a resume skipped (incomplete) or went back past (superseded)
      adapter/             the final LoRA adapter + tokenizer (written when training finished)
      adapter-partial/     the adapter of an interrupted run (Ctrl-C), until the run is resumed and finished
      train_summary.json   status (finished / interrupted), steps, whole-run train loss, eval loss, speed
      eval.json            `legaltune eval` results
      report.html          `legaltune report` (also written after training and eval)
      tensorboard/         TensorBoard events, when logging.report_to has tensorboard

Every command that takes a run (train --resume, eval, generate, chat, merge, export, report) opens
it through this module, so they agree on what a run is and say the same thing when it is not one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legaltune.errors import UserError

RUN_INFO = "run.json"
CONFIG = "config.yaml"
DATA_STATS = "data_stats.json"
METRICS = "metrics.jsonl"
LOCK = "train.lock"
CHECKPOINTS = "checkpoints"
SET_ASIDE = "set-aside"
ADAPTER = "adapter"
PARTIAL_ADAPTER = "adapter-partial"
SUMMARY = "train_summary.json"
EVAL = "eval.json"
REPORT = "report.html"
TENSORBOARD = "tensorboard"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


class RunError(UserError):
    """A path that is not the run (or adapter) a command needs; the message says what would work."""


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is absent or unreadable (half-written, foreign)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class RunDir:
    """One run directory; every path inside it comes from here."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    run_info = property(lambda self: self.path / RUN_INFO)
    config = property(lambda self: self.path / CONFIG)
    data_stats = property(lambda self: self.path / DATA_STATS)
    metrics = property(lambda self: self.path / METRICS)
    lock = property(lambda self: self.path / LOCK)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    set_aside = property(lambda self: self.path / CHECKPOINTS / SET_ASIDE)
    adapter = property(lambda self: self.path / ADAPTER)
    partial_adapter = property(lambda self: self.path / PARTIAL_ADAPTER)
    summary = property(lambda self: self.path / SUMMARY)
    eval = property(lambda self: self.path / EVAL)
    report = property(lambda self: self.path / REPORT)
    tensorboard = property(lambda self: self.path / TENSORBOARD)

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"checkpoint-{step}"

    def checkpoint_dirs(self) -> list[tuple[int, Path]]:
        """(step, directory) of every checkpoints/checkpoint-N, oldest first (complete or not)."""
        if not self.checkpoints.is_dir():
            return []
        found = []
        for p in self.checkpoints.iterdir():
            m = CHECKPOINT_RE.match(p.name)
            if m and p.is_dir():
                found.append((int(m.group(1)), p))
        return sorted(found)

    def is_run(self) -> bool:
        """A legaltune run: it has run.json or config.yaml (runs from before run.json have only the latter)."""
        return self.run_info.is_file() or self.config.is_file()

    def info(self) -> dict[str, Any]:
        return read_json(self.run_info) or {}

    def read_summary(self) -> dict[str, Any] | None:
        return read_json(self.summary)

    def has_adapter(self, which: str = ADAPTER) -> bool:
        d = self.path / which
        return (d / ADAPTER_CONFIG).is_file() and any((d / w).is_file() for w in ADAPTER_WEIGHTS)

    def training_now(self) -> bool:
        """Whether a live `legaltune train` holds this run's lock."""
        from legaltune.run.lock import RunLocked, check_free

        try:
            check_free(self.lock)
        except RunLocked:
            return True
        return False

    def status(self) -> str:
        """finished / interrupted / unfinished (killed, failed or still training) / new."""
        summary = self.read_summary() or {}
        status = summary.get("status") or ("interrupted" if summary.get("interrupted") else None)
        if status is None and summary and self.has_adapter():
            status = "finished"  # runs from before the status field
        if status:
            return str(status)
        return "unfinished" if (self.metrics.exists() or self.checkpoint_dirs()) else "new"

    def describe_status(self) -> str:
        """A sentence for error messages: where the run stands and what to do with it."""
        status = self.status()
        summary = self.read_summary() or {}
        step = summary.get("step")
        total = summary.get("max_steps")
        at = f" at step {step}/{total}" if step is not None and total else ""
        if status == "finished":
            return f"{self.path} finished{at}"
        if status == "interrupted":
            partial = (
                f"; its partial adapter is {self.partial_adapter}"
                if self.has_adapter(PARTIAL_ADAPTER)
                else ""
            )
            return f"{self.path} was interrupted{at}{partial}; continue it with legaltune train CONFIG --resume {self.path}"
        ckpts = [p.name for _, p in self.checkpoint_dirs()]
        if status == "unfinished":
            held = " (a train.lock is present: it may still be training)" if self.lock.exists() else ""
            where = f"; checkpoints: {', '.join(ckpts)}" if ckpts else ""
            return (
                f"{self.path} has not finished training{held}{where}; continue it with "
                f"legaltune train CONFIG --resume {self.path}"
            )
        return f"{self.path} has not started training"


def open_run(path: str | Path) -> RunDir:
    """The run at ``path``: 'no such run' when it does not exist, 'not a run' when it is something else."""
    p = Path(path).expanduser()
    if not p.exists():
        raise RunError(f"no such run: {p} does not exist")
    if not p.is_dir():
        raise RunError(f"{p} is a file, not a run directory (one that `legaltune train` wrote)")
    run = RunDir(p)
    if not run.is_run():
        hint = ""
        inner = sorted(q.name for q in p.iterdir() if q.is_dir() and RunDir(q).is_run())[:5]
        if inner:
            hint = f"; it holds runs: {', '.join(inner)} — pass one of those"
        elif (p / ADAPTER_CONFIG).is_file() or CHECKPOINT_RE.match(p.name):
            hint = "; it looks like an adapter or checkpoint directory — pass the run directory that holds it"
        raise RunError(f"{p} is not a run directory: it has no {RUN_INFO} or {CONFIG}{hint}")
    return run


@dataclass(frozen=True)
class AdapterRef:
    """A LoRA adapter to load, and the run it belongs to (None for an adapter directory on its own)."""

    adapter_dir: Path
    run: RunDir | None

    @property
    def tokenizer_dir(self) -> Path | None:
        """Training saves the tokenizer beside the adapter (pad token, template); None when it is absent."""
        d = self.adapter_dir
        return d if any((d / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")) else None


def _owning_run(adapter_dir: Path) -> RunDir | None:
    for candidate in (adapter_dir.parent, adapter_dir.parent.parent):
        if RunDir(candidate).is_run():
            return RunDir(candidate)
    return None


def find_adapter(path: str | Path) -> AdapterRef:
    """The adapter of a finished run, or an adapter / checkpoint directory given directly.

    A run without a final adapter (interrupted, killed, still training) is an error that says
    where it stands and which directory (partial adapter, checkpoint) could be passed instead.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise RunError(f"no such run: {p} does not exist")
    if (p / ADAPTER_CONFIG).is_file():
        if not any((p / w).is_file() for w in ADAPTER_WEIGHTS):
            raise RunError(f"{p} has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS[0]}: the adapter is incomplete")
        return AdapterRef(p, _owning_run(p))
    run = open_run(p)
    if run.has_adapter():
        return AdapterRef(run.adapter, run)
    usable = [str(run.partial_adapter)] if run.has_adapter(PARTIAL_ADAPTER) else []
    usable += [str(c) for _, c in run.checkpoint_dirs()[-2:] if (c / ADAPTER_CONFIG).is_file()]
    alternatives = f" An adapter it does have: {' or '.join(usable)}." if usable else ""
    raise RunError(
        f"{run.path} has no final adapter ({run.adapter}/{ADAPTER_CONFIG}): {run.describe_status()}."
        + alternatives
    )
