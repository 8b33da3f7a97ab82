"""`legaltune train --resume [PATH]`: which run, which checkpoint, and a run directory fit to continue.

``find_run`` picks the run (PATH, the config's run_name, or the config's newest auto-named run,
matched exactly). With the run's lock held, ``prepare`` then:

- says "nothing to do" for a finished run (train_summary.json status finished);
- refuses a config that differs from the run's config.yaml (the resumed run would not be the run);
- removes unfinished writes (``.tmp-checkpoint-N``, temp adapters) and sets aside checkpoints
  that are not complete, naming them;
- takes the newest complete checkpoint (or the one PATH names, setting newer ones aside), and
  refuses a damaged one with the file and the fix (the previous checkpoint, or ``--weights-only``);
- cuts metrics.jsonl back to the checkpoint's step, so every step appears once over the whole run.

No complete checkpoint at all (killed before the first save) is not an error: the run starts again
from step 0 in the same directory.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from legaltune.config.schema import Config
from legaltune.distributed.env import world_size
from legaltune.errors import UserError
from legaltune.run.atomic import write_text_atomic
from legaltune.run.checkpoint import STAGING_PREFIX, Checkpoint, inspect_checkpoint
from legaltune.run.layout import CHECKPOINT_RE, CHECKPOINTS, RunDir, open_run
from legaltune.run.naming import explicit_run, output_root, run_stem, runs_of_config
from legaltune.run.world_check import GA_KEY, check_world_size

# Keys a resume may change: where output goes and how data is fed, not what is trained.
MAY_CHANGE = {
    "logging.output_dir",
    "logging.report_to",
    "data.dataloader_num_workers",
    "data.dataloader_pin_memory",
    "distributed.backend",
    "distributed.timeout_minutes",
    "distributed.find_unused_parameters",
    GA_KEY,  # only where it keeps the effective batch over another number of processes (check_world_size)
}


@dataclass
class ResumePoint:
    run: RunDir
    checkpoint: Checkpoint | None  # None: (re)start this run from step 0
    finished: bool = False  # the run is done: nothing to train or write
    notices: list[str] = field(default_factory=list)

    @property
    def step(self) -> int:
        return self.checkpoint.step if self.checkpoint else 0


def find_run(cfg: Config, resume: str | bool) -> tuple[RunDir, Path | None]:
    """(run, the checkpoint PATH names or None) for ``--resume [PATH]``."""
    if isinstance(resume, str) and resume:
        p = Path(resume).expanduser()
        if CHECKPOINT_RE.match(p.name):
            if not p.is_dir():
                raise UserError(f"--resume {p}: no such checkpoint")
            if p.parent.name != CHECKPOINTS:
                raise UserError(f"--resume {p}: a checkpoint to resume must be inside a run's {CHECKPOINTS}/")
            return open_run(p.parent.parent), p
        return open_run(p), None
    named = explicit_run(cfg)
    if named is not None:
        if not named.path.exists():
            raise UserError(
                f"nothing to resume: {named.path} (logging.run_name {named.name!r}) does not exist; "
                "start it without --resume"
            )
        return open_run(named.path), None
    runs = runs_of_config(cfg)
    if not runs:
        raise UserError(
            f"no run of {cfg.source or 'this config'} to resume in {output_root(cfg)} (looked for "
            f"{run_stem(cfg)}-YYYYmmdd-HHMMSS made from this config file); start one without --resume, "
            "or pass --resume RUN_DIR"
        )
    return runs[-1], None


def prepare(
    run: RunDir,
    cfg: Config,
    checkpoint: Path | None = None,
    *,
    weights_only: bool = False,
    notice: Callable[[str], None] | None = None,
) -> ResumePoint:
    """Make ``run`` ready to continue (call with its lock held); see the module docstring."""
    say = notice or (lambda m: None)
    point = ResumePoint(run, None)

    def tell(message: str) -> None:
        point.notices.append(message)
        say(message)

    summary = run.read_summary() or {}
    if run.status() == "finished":
        point.finished = True
        tell(
            f"nothing to do: {run.path} finished at step {summary.get('step', '?')}/"
            f"{summary.get('max_steps', '?')}; its adapter is {run.adapter}"
        )
        return point
    saved = _check_same_config(run, cfg)
    for message in _remove_unfinished_writes(run):
        tell(message)
    found = [inspect_checkpoint(p) for _, p in run.checkpoint_dirs()]
    complete = [c for c in found if c.sealed or not c.problems]
    if checkpoint is not None:
        chosen = next((c for c in found if c.path.resolve() == checkpoint.resolve()), None)
        if chosen is None:
            raise UserError(f"--resume {checkpoint}: not a checkpoint of {run.path}")
        for c in found:
            if c.step > chosen.step:
                tell(
                    f"{c.path.name} is after the checkpoint resumed from: {_set_aside(run, c, 'superseded')}"
                )
    else:
        chosen = complete[-1] if complete else None
    for c in found:
        if c is not chosen and c not in complete and c.path.exists():
            tell(f"{c.path.name} is incomplete ({_problems(c)}), skipped: {_set_aside(run, c, 'incomplete')}")
    if chosen is not None and chosen.problems:
        if not (weights_only and chosen.weights_ok):
            previous = [c for c in complete if c.step < chosen.step and not c.problems]
            raise UserError(_damaged(chosen, previous[-1] if previous else None))
        tell(
            f"--weights-only: continuing from {chosen.path.name}'s weights without {_problems(chosen)}: "
            f"a fresh optimizer state and RNG, the learning-rate schedule moved to step {chosen.step}; "
            "the result will differ from an uninterrupted run"
        )
    point.checkpoint = chosen
    if chosen is not None:
        for message in check_world_size(chosen, saved, cfg, world_size()):
            tell(message)
    elif (
        saved.get(GA_KEY, cfg.training.gradient_accumulation_steps)
        != cfg.training.gradient_accumulation_steps
    ):
        raise UserError(
            f"{GA_KEY}: {saved[GA_KEY]!r} in the run, {cfg.training.gradient_accumulation_steps!r} now; with no "
            "checkpoint to continue, the run starts again as configured: use its own config"
        )
    if chosen is None:
        tell(f"{run.path} has no complete checkpoint: training it again from step 0")
    elif weights_only and not chosen.problems:
        tell(f"--weights-only: continuing from {chosen.path.name}'s weights with a fresh optimizer state")
    for message in trim_metrics(run, point.step):
        tell(message)
    return point


def _problems(c: Checkpoint) -> str:
    return ", ".join(f"{name} {why}" for name, why in c.problems.items()) or "not sealed"


def _damaged(c: Checkpoint, previous: Checkpoint | None) -> str:
    fixes = []
    if previous is not None:
        fixes.append(f"resume from the previous complete checkpoint: --resume {previous.path}")
    if c.weights_ok:
        fixes.append(
            f"continue from {c.path.name}'s weights only: add --weights-only (fresh optimizer state; the result "
            "differs from an uninterrupted run)"
        )
    fixes.append("or start a new run without --resume")
    return f"checkpoint {c.path} is damaged: {_problems(c)}. To go on, " + "; ".join(fixes)


def _set_aside(run: RunDir, c: Checkpoint, why: str) -> str:
    run.set_aside.mkdir(parents=True, exist_ok=True)
    target, n = run.set_aside / f"{c.path.name}.{why}", 1
    while target.exists():
        target, n = run.set_aside / f"{c.path.name}.{why}-{n}", n + 1
    c.path.rename(target)
    return f"moved to {target}"


def _remove_unfinished_writes(run: RunDir) -> list[str]:
    """Temporary directories and files of writes a kill interrupted (never complete by construction)."""
    messages = []
    for parent in (run.path, run.checkpoints):
        if not parent.is_dir():
            continue
        for p in sorted(parent.iterdir()):
            name = p.name
            if not name.startswith(".") or not (
                name.startswith(STAGING_PREFIX) or name.endswith(".partial") or ".old-" in name
            ):
                continue
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            if name.startswith(STAGING_PREFIX + "checkpoint-"):
                messages.append(f"removed {p}: a checkpoint the previous run was writing when it stopped")
    return messages


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out
    return {prefix.rstrip("."): data}


def _check_same_config(run: RunDir, cfg: Config) -> dict[str, Any]:
    """A resume trains the run's own config: differing keys are an error naming them. Returns the
    run's config, flattened."""
    import yaml

    from legaltune.config.load import config_to_dict

    if not run.config.is_file():
        return {}
    try:
        saved = _flat(yaml.safe_load(run.config.read_text(encoding="utf-8")) or {})
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{run.config} is unreadable ({exc}); the run cannot be resumed") from None
    now = _flat(yaml.safe_load(yaml.safe_dump(config_to_dict(cfg))))
    diff = [
        f"{k}: {saved[k]!r} in the run, {now[k]!r} now"
        for k in sorted(saved.keys() & now.keys())
        if saved[k] != now[k] and k not in MAY_CHANGE
    ]
    if diff:
        raise UserError(
            f"the config differs from the run's {run.config}: "
            + "; ".join(diff[:8])
            + (f" (and {len(diff) - 8} more)" if len(diff) > 8 else "")
            + f". A resume continues the same run: use its own config (legaltune train {run.config} --resume "
            f"{run.path}), or start a new run without --resume"
        )
    return saved


def trim_metrics(run: RunDir, step: int) -> list[str]:
    """Keep metrics.jsonl rows up to ``step`` (the steps after it are trained again); one row per step."""
    if not run.metrics.is_file():
        return []
    kept, after, broken = [], [], 0
    for line in run.metrics.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            broken += 1
            continue
        s = row.get("step") if isinstance(row, dict) else None
        if not isinstance(s, int | float):
            broken += 1
        elif s > step or "train_loss" in row:  # the whole-run summary row is written again at the end
            after.append(s)
        else:
            kept.append(line)
    if not after and not broken:
        return []
    write_text_atomic(run.metrics, "".join(line + "\n" for line in kept), "metrics log")
    messages = []
    if after:
        messages.append(
            f"metrics.jsonl: dropped {len(after)} row(s) logged after step {step} "
            f"(steps {min(after)}–{max(after)}); those steps are trained and logged again"
        )
    if broken:
        messages.append(f"metrics.jsonl: dropped {broken} unreadable line(s) (cut off mid-write)")
    return messages
