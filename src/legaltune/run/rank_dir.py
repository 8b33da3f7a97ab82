"""The run directory of a run of several processes: rank 0 makes, resumes and locks it; the others
receive it (torch.distributed's ``broadcast_object_list``) and never write what rank 0 owns.

Rank 0 alone creates the directory and writes run.json, config.yaml, data_stats.json,
metrics.jsonl, TensorBoard events, train.lock, the adapter, train_summary.json and the report.
Every rank writes its own RNG state into each checkpoint (the Trainer's ``rng_state_<rank>.pth``)
before rank 0 seals it. On several machines the directory must be on a file system all of them
see: each rank checks that it sees the directory rank 0 made, and the run stops with the names of
the machines that do not.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from legaltune.config.schema import Config
from legaltune.distributed import sync
from legaltune.distributed.env import is_distributed
from legaltune.errors import UserError
from legaltune.run import session as sessions
from legaltune.run.layout import RunDir
from legaltune.run.session import Session


def _follower(run_path: str, point: Any) -> Session:
    return Session(RunDir(Path(run_path)), None, point)


def _shared(make: Callable[[], Session], what: str) -> Session:
    """``make()`` on rank 0; the same run directory (and resume point) on every rank."""
    if not is_distributed():
        return make()
    made: list[Session] = []

    def on_main() -> tuple[str, Any]:
        made.append(make())
        return str(made[0].run.path), made[0].point

    path, point = sync.main_does(on_main, what)
    session = made[0] if made else _follower(path, point)
    check_visible(session.run.path)
    return session


def resume_session(
    cfg: Config, resume: str | bool, *, weights_only: bool, notice: Callable[[str], None]
) -> Session:
    """The run ``--resume`` names, locked and made ready by rank 0 (run.resume.prepare)."""

    def make() -> Session:
        found = sessions.check_before_data(cfg, resume)
        assert found is not None  # resume is set
        return sessions.resume_session(cfg, found, weights_only=weights_only, notice=notice)

    return _shared(make, "opening the run to resume")


def new_session(cfg: Config, data_stats: dict[str, Any], notice: Callable[[str], None]) -> Session:
    """A new run directory, created whole and locked by rank 0."""

    return _shared(lambda: sessions.new_session(cfg, data_stats, notice), "creating the run directory")


def refuse_existing(cfg: Config) -> None:
    """Before the data: rank 0 refuses a run_name that already holds a run (the others stop with it)."""
    sync.main_does(lambda: sessions.check_before_data(cfg, None), "checking the run directory")


def check_visible(path: Path) -> None:
    """Every rank sees the directory rank 0 made (several machines need a shared file system)."""
    seen = sync.gather_all((socket.gethostname(), path.is_dir()))
    blind = sorted({host for host, ok in seen if not ok})
    if blind:
        raise UserError(
            f"logging.output_dir: the run directory {path} that rank 0 made is not visible on {', '.join(blind)}; "
            "a run over several machines writes one run directory, so output_dir must be on a file system all "
            "of them mount at the same path (NFS, Lustre, …)"
        )


def check_same_data(train_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]]) -> None:
    """Every rank prepared the same examples (data preparation is deterministic; a file that differs
    between machines, or was edited while the ranks read it, would train each rank on other data)."""
    if not is_distributed():
        return
    digest = (len(train_rows), sync.fingerprint(train_rows), len(eval_rows), sync.fingerprint(eval_rows))
    sync.check_same_everywhere(
        digest,
        "the prepared training data",
        "every machine must read the same data files (data.train_file, data.eval_file) and corpus",
    )


__all__ = ["check_same_data", "check_visible", "new_session", "refuse_existing", "resume_session"]
