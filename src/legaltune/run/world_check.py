"""Resuming a checkpoint with another number of processes than the one that wrote it.

The Trainer's sampler orders the examples the same way whatever the world size (its own seeded
generator), and a step consumes the next per_device_train_batch_size × gradient_accumulation_steps ×
world_size of them. A resume skips the steps done in units of the *new* step. So a checkpoint
continues exactly on another number of processes when the effective batch stays the same, which
training.gradient_accumulation_steps can keep (2 GPUs × GA 4 → 1 GPU × GA 8); any other change would
replay or skip examples and stretch the schedule, and is refused with the numbers and the fix. With
data.group_by_length the length groups hold per_device_train_batch_size × GA × 50 examples, so
another GA regroups the epoch: only the same number of processes continues such a run.
"""

from __future__ import annotations

from typing import Any

from legaltune.config.schema import Config
from legaltune.errors import UserError
from legaltune.run.checkpoint import Checkpoint

GA_KEY = "training.gradient_accumulation_steps"


def checkpoint_world_size(ckpt: Checkpoint) -> int:
    """Processes that wrote ``ckpt``: recorded in its state, else one RNG file per rank (older checkpoints)."""
    recorded = ckpt.state.get("world_size")
    if isinstance(recorded, int) and recorded > 0:
        return recorded
    per_rank = list(ckpt.path.glob("rng_state_*.pth"))
    return len(per_rank) if per_rank else 1


def check_world_size(ckpt: Checkpoint, saved: dict[str, Any], cfg: Config, world: int) -> list[str]:
    """Notices about continuing ``ckpt`` on ``world`` processes; raises when the steps would change.

    ``saved``: the run's config.yaml, flattened (``training.gradient_accumulation_steps`` …), for
    checkpoints that do not record what they were trained with."""
    t = cfg.training
    # the checkpoint's own (a resume may have changed it since config.yaml), else the run's config
    ga_then = int(
        ckpt.state.get("gradient_accumulation_steps") or saved.get(GA_KEY, t.gradient_accumulation_steps)
    )
    was = checkpoint_world_size(ckpt)
    bs = t.per_device_train_batch_size
    then, now = bs * ga_then * was, bs * t.gradient_accumulation_steps * world
    if was == world and ga_then == t.gradient_accumulation_steps:
        return []
    if then != now:
        fixes = [f"resume with {was} process{'es' if was > 1 else ''} (legaltune train … --nproc {was})"]
        if (ga_then * was) % world == 0:
            fixes.insert(0, f"keep the effective batch with --set {GA_KEY}={ga_then * was // world}")
        raise UserError(
            f"{ckpt.path} was trained by {was} process{'es' if was > 1 else ''} with an effective batch of {then} "
            f"({bs} × GA {ga_then} × {was}); this run has {world} and an effective batch of {now} "
            f"({bs} × GA {t.gradient_accumulation_steps} × {world}): the resumed steps would replay or skip "
            "examples of the epoch and the learning-rate schedule would change length. To continue the same "
            "run: " + ", or ".join(fixes)
        )
    if cfg.data.group_by_length and not cfg.data.packing:
        raise UserError(
            f"{ckpt.path} was trained by {was} process{'es' if was > 1 else ''} with GA {ga_then}; this run has "
            f"{world} with GA {t.gradient_accumulation_steps}: the same effective batch, but data.group_by_length "
            f"groups the epoch in mega-batches of per_device_train_batch_size × GA × 50 examples, so the resumed "
            f"steps would see another order. Resume with {was} process{'es' if was > 1 else ''} and GA {ga_then}"
        )
    notes = [
        f"{ckpt.path.name} was trained by {was} process{'es' if was > 1 else ''}, this run has {world}; the "
        f"effective batch stays {now} ({bs} × GA {t.gradient_accumulation_steps} × {world}), so the remaining "
        "steps see the examples they would have seen"
    ]
    if world > was or world == 1:
        notes.append(
            "RNG states: ranks without one of their own in the checkpoint start from the seed (training draws "
            "random numbers only for dropout: lora.lora_dropout)"
        )
    return notes


__all__ = ["GA_KEY", "check_world_size", "checkpoint_world_size"]
