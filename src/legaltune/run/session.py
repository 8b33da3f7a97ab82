"""A training session's hold on its run directory: made or resumed, locked, finished last.

A new run directory appears whole: run.json, config.yaml and data_stats.json are written into a
temporary directory that is then renamed to its name. The writer's lock is taken before anything
in an existing run is touched and released when the session ends, however it ends. The adapter
goes to ``adapter/`` when training finished and to ``adapter-partial/`` when it was interrupted,
each written under a temporary name and renamed; train_summary.json comes after it.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from legaltune.config.schema import Config
from legaltune.distributed import sync
from legaltune.distributed.env import is_main
from legaltune.errors import UserError
from legaltune.run import resume as resume_mod
from legaltune.run.atomic import disk_errors, staged_dir, write_json_atomic
from legaltune.run.layout import RunDir
from legaltune.run.lock import RunLock
from legaltune.run.naming import config_source, explicit_run, new_run_path, output_root, refuse_existing


@dataclass
class Session:
    run: RunDir
    lock: RunLock | None
    point: resume_mod.ResumePoint | None = None  # None: a new run
    notices: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return bool(self.point and self.point.finished)

    @property
    def checkpoint(self) -> Any:
        return self.point.checkpoint if self.point else None

    def resume_hint(self, cfg: Config) -> str:
        return (
            f"the complete checkpoints are kept; then continue with: legaltune train {cfg.source or 'CONFIG'} "
            f"--resume {self.run.path}"
        )

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def check_before_data(cfg: Config, resume: str | bool | None) -> tuple[RunDir, Path | None] | None:
    """Fail in milliseconds on a run that cannot be made or found (before data and weights load)."""
    output_root(cfg)  # an empty output_dir is an error, with or without a run name
    if resume:
        return resume_mod.find_run(cfg, resume)
    refuse_existing(cfg)
    return None


def resume_session(
    cfg: Config,
    found: tuple[RunDir, Path | None],
    *,
    weights_only: bool,
    notice: Callable[[str], None],
) -> Session:
    run, checkpoint = found
    lock = RunLock.acquire(run.lock, notice)
    try:
        point = resume_mod.prepare(run, cfg, checkpoint, weights_only=weights_only, notice=notice)
    except BaseException:
        lock.release()
        raise
    session = Session(run, lock, point)
    if point.finished:
        session.close()
    return session


def new_session(cfg: Config, data_stats: dict[str, Any], notice: Callable[[str], None]) -> Session:
    """Create the run directory whole (temporary name, renamed) and lock it."""
    from legaltune.config.load import save_config

    while True:
        path = new_run_path(cfg)
        path.parent.mkdir(parents=True, exist_ok=True)
        with disk_errors(path, "run directory"):
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
            try:
                info = {
                    "run_name": path.name,
                    "config_source": config_source(cfg),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                }
                write_json_atomic(tmp / "run.json", info)
                save_config(cfg, tmp / "config.yaml")
                write_json_atomic(tmp / "data_stats.json", data_stats, allow_nan=True)
                try:
                    os.rename(tmp, path)  # onto nothing or an empty directory; never onto another run
                    break
                except OSError as exc:
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                    if explicit_run(cfg) is not None:
                        refuse_existing(cfg)  # raises: another train made it in the meantime
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
    run = RunDir(path)
    return Session(run, RunLock.acquire(run.lock, notice))


def write_adapter(trainer: Any, tokenizer: Any, run: RunDir, *, interrupted: bool, hint: str) -> Path:
    """adapter/ (finished) or adapter-partial/ (interrupted), each appearing only when complete.

    In a run of several processes every rank calls the Trainer's ``save_model`` (under FSDP it gathers
    the sharded adapter) into the temporary directory rank 0 made; rank 0 writes it and renames it."""
    target = run.partial_adapter if interrupted else run.adapter
    if not is_main():
        trainer.save_model(sync.broadcast_from_main(None))
        sync.barrier()
        return target
    with staged_dir(target, "adapter", hint) as tmp:
        sync.broadcast_from_main(str(tmp))
        trainer.save_model(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        sync.barrier()  # every rank is done with the directory before it is renamed
    if not interrupted and run.partial_adapter.exists():
        shutil.rmtree(run.partial_adapter)  # superseded by the finished adapter
    return target


def write_summary(run: RunDir, summary: dict[str, Any], hint: str) -> None:
    write_json_atomic(run.summary, summary, "train summary", hint)


def refuse_flags(resume: str | bool | None, weights_only: bool) -> None:
    if weights_only and not resume:
        raise UserError("--weights-only continues a run from a checkpoint's weights: use it with --resume")
