"""Where this process stands in a distributed run, read from the launcher's environment.

torchrun (and accelerate launch, which runs torchrun) sets RANK, WORLD_SIZE, LOCAL_RANK and
LOCAL_WORLD_SIZE for every process it starts. Read here without importing torch, so that
`legaltune plan` and the config checks stay light.
"""

from __future__ import annotations

import os


def _int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def world_size() -> int:
    """Processes training this run, over all nodes (1 outside a launcher)."""
    return max(_int("WORLD_SIZE", 1), 1)


def rank() -> int:
    return _int("RANK", 0)


def local_rank() -> int:
    return _int("LOCAL_RANK", 0)


def local_world_size() -> int:
    """Processes of this run on this node, which share its host memory."""
    return max(_int("LOCAL_WORLD_SIZE", 1 if world_size() == 1 else world_size()), 1)


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    """Rank 0: the one process that writes the run directory, logs and prints progress."""
    return rank() == 0


def rank_prefix() -> str:
    """'[rank 3] ' before a message of a distributed run's process (each prints its own errors)."""
    return f"[rank {rank()}] " if is_distributed() else ""


__all__ = ["is_distributed", "is_main", "local_rank", "local_world_size", "rank", "rank_prefix", "world_size"]
