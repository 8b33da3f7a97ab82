"""Run names: checked so a run stays inside output_dir, made for new runs, matched exactly on resume.

A run is ``output_dir/run_name`` when the config names it, else ``output_dir/<config file
stem>-<YYYYmmdd-HHMMSS>[-n]``. Bare ``--resume`` continues the newest run of exactly that shape
for this config (a config ``s.yaml`` never picks up ``s_big-…``) whose run.json names the same
config file.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from legaltune.config.schema import Config
from legaltune.errors import UserError
from legaltune.run.layout import RunDir

STAMP = "%Y%m%d-%H%M%S"
_STAMP_RE = r"\d{8}-\d{6}(?:-\d+)?"
_BAD_CHARS = set('/\\\0:*?"<>|')


def check_run_name(name: str) -> str:
    """``name`` if it is one directory name (no separators, no ``..``, not hidden); else a UserError."""
    problem = None
    if not name or not name.strip():
        problem = "is empty"
    elif name in (".", ".."):
        problem = f"is {name!r}"
    elif bad := sorted(set(name) & _BAD_CHARS):
        problem = f"contains {' '.join(repr(c) for c in bad)}"
    elif name.startswith("."):
        problem = "starts with '.' (names starting with '.' are legaltune's temporary directories)"
    elif name != name.strip():
        problem = "starts or ends with whitespace"
    elif len(name.encode()) > 200:
        problem = "is longer than 200 bytes"
    if problem:
        raise UserError(
            f"logging.run_name {name!r} {problem}; it must be a single directory name inside "
            "logging.output_dir, e.g. llama31-luat-lao-dong-r16 (set logging.output_dir for another parent)"
        )
    return name


def output_root(cfg: Config) -> Path:
    out = cfg.logging.output_dir
    if out is None or not str(out).strip():
        raise UserError(
            "logging.output_dir is empty; set it to the directory that holds run directories (default: runs)"
        )
    return Path(str(out)).expanduser()


def run_stem(cfg: Config) -> str:
    """The run name, or the config file's stem that auto-named runs start with."""
    if cfg.logging.run_name is not None:
        return check_run_name(cfg.logging.run_name)
    stem = Path(cfg.source).stem if cfg.source else "run"
    return stem if not stem.startswith(".") else stem.lstrip(".") or "run"


def config_source(cfg: Config) -> str | None:
    return os.path.abspath(cfg.source) if cfg.source else None


def explicit_run(cfg: Config) -> RunDir | None:
    """output_dir/run_name when the config names the run, else None."""
    if cfg.logging.run_name is None:
        return None
    return RunDir(output_root(cfg) / check_run_name(cfg.logging.run_name))


def refuse_existing(cfg: Config) -> None:
    """A new run into an explicit run_name that already holds something is an error (use --resume)."""
    run = explicit_run(cfg)
    if run is not None and run.path.exists() and (not run.path.is_dir() or any(run.path.iterdir())):
        raise UserError(
            f"{run.path} already exists (logging.run_name {run.name!r}); continue it with --resume, "
            "or choose another logging.run_name"
        )


def new_run_path(cfg: Config) -> Path:
    """Where a new run goes: output_dir/run_name, or output_dir/<stem>-<timestamp> not yet taken."""
    run = explicit_run(cfg)
    if run is not None:
        refuse_existing(cfg)
        return run.path
    root, stem = output_root(cfg), run_stem(cfg)
    base = f"{stem}-{time.strftime(STAMP)}"
    path, n = root / base, 1
    while path.exists():  # two runs in the same second
        path, n = root / f"{base}-{n}", n + 1
    return path


def _stamp_key(name: str, stem: str) -> tuple[str, int]:
    rest = name[len(stem) + 1 :]
    stamp, _, n = rest[:15], rest[15:16], rest[16:]
    return stamp, int(n) if n.isdigit() else 0


def runs_of_config(cfg: Config) -> list[RunDir]:
    """This config's auto-named runs, oldest first: exactly <stem>-<timestamp>[-n], same config file."""
    root, stem = output_root(cfg), run_stem(cfg)
    if not root.is_dir():
        return []
    shape = re.compile(rf"^{re.escape(stem)}-{_STAMP_RE}$")
    source = config_source(cfg)
    found = []
    for p in root.iterdir():
        run = RunDir(p)
        if not (shape.match(p.name) and p.is_dir() and run.is_run()):
            continue
        made_by = run.info().get("config_source")
        if made_by and source and made_by != source:
            continue  # another config file with the same name, elsewhere
        found.append(run)
    return sorted(found, key=lambda r: _stamp_key(r.name, stem))
