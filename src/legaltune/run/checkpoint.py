"""Checkpoints that are complete or absent: the Trainer's own saving, into a staging directory, sealed, renamed.

``AtomicCheckpoints`` is a Trainer mixin. The Trainer writes each checkpoint exactly as it always
does (``_save_checkpoint``: adapter, optimizer, scheduler, RNG, trainer_state.json), only into
``checkpoints/.tmp-checkpoint-N/``: the mixin points the Trainer's output directory there for the
duration of the save. The mixin then adds legaltune_state.json (whole-run counters), fsyncs every
file, writes the seal ``legaltune_checkpoint.json`` (every file and its size) and renames the
directory to ``checkpoints/checkpoint-N``. A kill at any moment leaves either the finished
checkpoint or a ``.tmp-`` directory that resume removes (rotation renames before it deletes, too); a full disk leaves the previous
checkpoints and a ``DiskFullError`` naming the path.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from legaltune.run.atomic import disk_errors, fsync_dir, fsync_tree, replace_dir
from legaltune.run.layout import RunDir

SEAL = "legaltune_checkpoint.json"
STATE = "legaltune_state.json"
TRAINER_STATE = "trainer_state.json"
STAGING_PREFIX = ".tmp-"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors")
# What an exact resume needs besides the weights; --weights-only continues without them.
RESUME_STATE_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth")


def is_resume_state(name: str) -> bool:
    """optimizer, scheduler, grad scaler or RNG state (per process under DDP): not the weights."""
    return name in (*RESUME_STATE_FILES, "scaler.pt") or (
        name.startswith("rng_state") and name.endswith(".pth")
    )


def seal(directory: Path, step: int) -> None:
    """fsync every file, then write the seal listing them with their sizes (the last file written)."""
    fsync_tree(directory)
    files = {
        str(p.relative_to(directory)): p.stat().st_size for p in sorted(directory.rglob("*")) if p.is_file()
    }
    body = json.dumps({"format": 1, "step": step, "files": files}, indent=1)
    with open(directory / SEAL, "w", encoding="utf-8") as fh:
        fh.write(body)
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(directory)


@dataclass
class Checkpoint:
    """What is on disk in one checkpoints/checkpoint-N directory."""

    path: Path
    step: int
    sealed: bool
    problems: dict[str, str] = field(default_factory=dict)  # file → "missing" / "truncated: …"
    trainer_state: dict[str, Any] | None = None
    state: dict[str, Any] = field(default_factory=dict)  # legaltune_state.json

    @property
    def weights_ok(self) -> bool:
        return not any(not is_resume_state(f) for f in self.problems)

    @property
    def max_steps(self) -> int | None:
        return (self.trainer_state or {}).get("max_steps")

    @property
    def training_done(self) -> bool:
        """The schedule ended at this checkpoint (last step, or early stopping): nothing is left to train."""
        if self.state.get("training_done"):
            return True
        total = self.max_steps
        return bool(total) and self.step >= total  # type: ignore[operator]


def inspect_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint's seal and check every file it lists (present, same size)."""
    step = int(path.name.rsplit("-", 1)[1])
    seal_data = _read_json(path / SEAL)
    ckpt = Checkpoint(
        path, step, sealed=isinstance(seal_data, dict) and isinstance(seal_data.get("files"), dict)
    )
    if ckpt.sealed:
        for name, size in seal_data["files"].items():  # type: ignore[index]
            f = path / name
            if not f.is_file():
                ckpt.problems[name] = "missing"
            elif f.stat().st_size != size:
                ckpt.problems[name] = (
                    f"truncated or changed: {f.stat().st_size:,} bytes, {size:,} when written"
                )
    else:  # written before checkpoints were sealed, or by another tool: check the files a resume reads
        if not any((path / w).is_file() for w in WEIGHT_FILES):
            ckpt.problems[WEIGHT_FILES[0]] = "missing"
        for name in (TRAINER_STATE, *RESUME_STATE_FILES):
            if name == "rng_state.pth" and any(path.glob("rng_state_*.pth")):
                continue
            if not (path / name).is_file():
                ckpt.problems[name] = "missing"
    if TRAINER_STATE not in ckpt.problems:
        ckpt.trainer_state = _read_json(path / TRAINER_STATE)
        if ckpt.trainer_state is None:
            ckpt.problems[TRAINER_STATE] = "unreadable"
    ckpt.state = _read_json(path / STATE) or {}
    return ckpt


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def publish(written: Path, final: Path) -> None:
    """Rename a sealed checkpoint into place (replacing an older one of the same step)."""
    replace_dir(written, final)


def rotate(root: Path, limit: int | None, best: str | None) -> None:
    """save_total_limit, by the Trainer's rule (oldest first; the newest and the best are kept), each
    deletion a rename to a temporary name first: a kill mid-delete never leaves half a checkpoint-N."""
    if not limit or limit <= 0:
        return
    found = RunDir(root.parent).checkpoint_dirs()
    if len(found) <= limit:
        return
    protected = {found[-1][1]} | ({Path(best)} if best else set())
    remaining, keep = len(found), max(limit, len(protected))
    for _, path in found:
        if remaining <= keep:
            break
        if path not in protected:
            doomed = path.with_name(f"{STAGING_PREFIX}deleting-{path.name}")
            path.rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            remaining -= 1


class AtomicCheckpoints:
    """Trainer mixin: sealed, atomically renamed checkpoints; whole-run train loss; weights-only resume."""

    resume_weights_only = False
    carried_loss_sum = 0.0  # summed step losses of the sessions before this one (from the checkpoint)
    checkpoint_hint = ""  # appended to a full-disk error (how to resume)
    _staging_root: Path | None = None

    def _get_output_dir(self, trial: Any) -> str:
        if self._staging_root is not None:
            return str(self._staging_root)
        return super()._get_output_dir(trial)  # type: ignore[misc]

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        root = Path(super()._get_output_dir(trial))  # type: ignore[misc]
        step = self.state.global_step  # type: ignore[attr-defined]
        final = root / f"checkpoint-{step}"
        staging = root / f"{STAGING_PREFIX}checkpoint-{step}"
        main = self.args.should_save  # type: ignore[attr-defined]
        try:
            with disk_errors(final, "checkpoint", self.checkpoint_hint):
                if main and staging.exists():
                    shutil.rmtree(staging)
                if self.args.world_size > 1:  # type: ignore[attr-defined]
                    # the other ranks write their RNG state into the staging directory: not before it is fresh
                    self.accelerator.wait_for_everyone()  # type: ignore[attr-defined]
                self._staging_root = staging
                try:
                    super()._save_checkpoint(model, trial)  # type: ignore[misc]
                finally:
                    self._staging_root = None
                if self.args.world_size > 1:  # type: ignore[attr-defined]
                    self.accelerator.wait_for_everyone()  # type: ignore[attr-defined]  # every rank's RNG file is in
                if main:
                    written = staging / final.name
                    self._repoint_best(root, staging, written)
                    (written / STATE).write_text(
                        json.dumps(self.checkpoint_state(), indent=1), encoding="utf-8"
                    )
                    seal(written, step)
                    publish(written, final)
                    staging.rmdir()
        except BaseException:
            if main:
                shutil.rmtree(staging, ignore_errors=True)  # frees the space a failed save took
            raise
        if main:
            rotate(root, self.args.save_total_limit, self.state.best_model_checkpoint)  # type: ignore[attr-defined]

    def _repoint_best(self, root: Path, staging: Path, written: Path) -> None:
        """The Trainer recorded the best checkpoint under the staging name; record its final name."""
        state = self.state  # type: ignore[attr-defined]
        best = state.best_model_checkpoint
        if best and Path(best).is_relative_to(staging):
            state.best_model_checkpoint = str(root / Path(best).relative_to(staging))
            state.save_to_json(str(written / TRAINER_STATE))

    def checkpoint_state(self) -> dict[str, Any]:
        """legaltune_state.json: what the Trainer's own state lacks for an exact whole-run resume."""
        tr_loss = getattr(self, "_tr_loss", None)
        pending = float(tr_loss.item()) if tr_loss is not None else 0.0  # steps not logged yet
        state: dict[str, Any] = {
            "step": self.state.global_step,  # type: ignore[attr-defined]
            # processes that trained it; each wrote its own rng_state_<rank>.pth (a resume checks the count)
            "world_size": self.args.world_size,  # type: ignore[attr-defined]
            "gradient_accumulation_steps": self.args.gradient_accumulation_steps,  # type: ignore[attr-defined]
            "loss_sum": self.carried_loss_sum + getattr(self, "_total_loss_scalar", 0.0) + pending,
        }
        if hasattr(self, "trained_tokens_seen"):
            state["trained_tokens"] = self.trained_tokens_seen()
        for cb in self.callback_handler.callbacks:  # type: ignore[attr-defined]
            if hasattr(cb, "checkpoint_state"):
                state.update(cb.checkpoint_state())
        control = self.control  # type: ignore[attr-defined]
        state["training_done"] = bool(
            self.state.global_step >= self.state.max_steps  # type: ignore[attr-defined]
            or (control.should_training_stop and not state.get("interrupted"))
        )
        return state

    def whole_run_train_loss(self) -> float | None:
        """Mean step loss over every step of the run, across resumed sessions."""
        steps = self.state.global_step  # type: ignore[attr-defined]
        return (self.carried_loss_sum + getattr(self, "_total_loss_scalar", 0.0)) / steps if steps else None

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "train_loss" in logs and self.state.global_step:  # type: ignore[attr-defined]
            logs["train_loss"] = self.whole_run_train_loss()  # the Trainer's covers this session only
        super().log(logs, *args, **kwargs)  # type: ignore[misc]

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is not None and self.resume_weights_only:
            return  # fresh optimizer; train.callbacks.FastForwardScheduler moves the schedule to the step
        super()._load_optimizer_and_scheduler(checkpoint)  # type: ignore[misc]

    def _load_rng_state(self, checkpoint: str | None) -> None:
        if checkpoint is not None and self.resume_weights_only:
            return
        super()._load_rng_state(checkpoint)  # type: ignore[misc]
