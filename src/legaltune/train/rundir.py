"""Run directories: where a run writes, and which checkpoint `--resume` continues from."""

from __future__ import annotations

import re
import time
from pathlib import Path

from legaltune.config.schema import Config

_CKPT = re.compile(r"^checkpoint-(\d+)$")


def run_stem(cfg: Config) -> str:
    if cfg.logging.run_name:
        return cfg.logging.run_name
    return Path(cfg.source).stem if cfg.source else "run"


def make_run_dir(cfg: Config) -> Path:
    """A new run directory: output_dir/run_name, or output_dir/<config name>-<timestamp>."""
    root = Path(cfg.logging.output_dir)
    if cfg.logging.run_name:
        path = root / cfg.logging.run_name
        if (path / "checkpoints").exists() and any((path / "checkpoints").iterdir()):
            raise FileExistsError(
                f"{path} already holds a run; use --resume to continue it, or another logging.run_name"
            )
    else:
        path = root / f"{run_stem(cfg)}-{time.strftime('%Y%m%d-%H%M%S')}"
        n = 1
        while path.exists():  # two runs in the same second
            path = root / f"{run_stem(cfg)}-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
            n += 1
    path.mkdir(parents=True, exist_ok=True)
    return path


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = [p for p in (run_dir / "checkpoints").glob("checkpoint-*") if _CKPT.match(p.name)]
    return max(ckpts, key=lambda p: int(_CKPT.match(p.name).group(1))) if ckpts else None  # type: ignore[union-attr]


def resolve_resume(cfg: Config, resume: str | bool) -> tuple[Path, Path]:
    """(run dir, checkpoint) for --resume [PATH]: a checkpoint, a run dir, or the newest run of this config."""
    if isinstance(resume, str):
        path = Path(resume)
        if _CKPT.match(path.name) and path.is_dir():
            return path.parent.parent, path
        if path.is_dir():
            ckpt = latest_checkpoint(path)
            if ckpt is None:
                raise FileNotFoundError(f"{path}: no checkpoints/checkpoint-N inside to resume from")
            return path, ckpt
        raise FileNotFoundError(f"--resume {path}: not a run directory or checkpoint")
    root = Path(cfg.logging.output_dir)
    stem = run_stem(cfg)
    runs = [p for p in root.glob(f"{stem}*") if p.is_dir() and latest_checkpoint(p) is not None]
    if not runs:
        raise FileNotFoundError(f"no run of '{stem}' with a checkpoint under {root}; pass --resume PATH")
    run = max(runs, key=lambda p: p.stat().st_mtime)
    return run, latest_checkpoint(run)  # type: ignore[return-value]
