"""The few collectives legaltune's own code needs, over torch.distributed's process group.

The group is joined through accelerate's ``PartialState`` (what the Trainer would do later) at the
start of a run, so that rank 0 can create the run directory and hand it to the others before any
weight loads. Every function here is a no-op (or the identity) in a single process.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from legaltune.config.schema import Config
from legaltune.distributed.env import is_distributed, rank, world_size
from legaltune.errors import UserError


class ReportedByRankZero(UserError):
    """This rank stops because rank 0 failed; rank 0 prints the reason, the others say nothing more."""


def join(cfg: Config, *, on_cuda: bool) -> None:
    """Join the run's process group now (backend and timeout from cfg.distributed)."""
    if not is_distributed():
        return
    import torch.distributed as dist
    from accelerate import PartialState

    if dist.is_initialized():
        return
    d = cfg.distributed
    PartialState(
        cpu=not on_cuda,
        backend=None if d.backend == "auto" else d.backend,
        timeout=timedelta(minutes=d.timeout_minutes),
    )


def _group_ready() -> bool:
    if not is_distributed():
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if _group_ready():
        import torch.distributed as dist

        dist.barrier()


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; for small things: paths, a resume point)."""
    if not _group_ready():
        return obj
    import torch.distributed as dist

    box = [obj if rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_all(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not _group_ready():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def main_does(fn: Any, what: str) -> Any:
    """Run ``fn()`` on rank 0 only and return its result on every rank; an error on rank 0 is raised
    there and ends the other ranks quietly (rank 0's message is the one the user needs)."""
    if not _group_ready():
        return fn()
    if rank() == 0:
        try:
            result = fn()
        except BaseException as exc:
            broadcast_from_main(("error", f"{type(exc).__name__}: {exc}"))
            raise
        return broadcast_from_main(("ok", result))[1]
    status, value = broadcast_from_main(None)
    if status == "error":
        raise ReportedByRankZero(f"rank 0 failed while {what} ({value})")
    return value


def fingerprint(rows: list[dict[str, Any]]) -> str:
    """A digest of prepared rows (every field: token ids, labels, pair or prompt ids …), to check that
    every rank prepared the same data."""
    from array import array

    h = hashlib.sha256()
    for row in rows:
        for key in sorted(row):
            value = row[key]
            h.update(key.encode())
            if isinstance(value, list) and all(isinstance(v, int) for v in value):
                h.update(array("q", value).tobytes())
            else:
                h.update(repr(value).encode())
    return h.hexdigest()


def check_same_everywhere(value: Any, what: str, fix: str) -> None:
    """Raise on every rank when some rank's ``value`` differs from rank 0's."""
    values = gather_all(value)
    differ = [r for r, v in enumerate(values) if v != values[0]]
    if differ:
        ranks = ", ".join(map(str, differ))
        raise UserError(f"{what} differs between processes: rank {ranks} has other than rank 0; {fix}")


def _all_reduce(value: float, dtype: str, op: str) -> float:
    """``value`` reduced over every rank (op "sum" or "max"), in a one-element tensor of ``dtype``."""
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=getattr(torch, dtype), device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.item()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on one (e.g. a Ctrl-C that reached only some)."""
    return bool(_all_reduce(int(flag), "int32", "max")) if _group_ready() else flag


def reduce_sum(value: int) -> int:
    return int(_all_reduce(value, "int64", "sum")) if _group_ready() else value


def reduce_sum_float(value: float) -> float:
    return float(_all_reduce(value, "float64", "sum")) if _group_ready() else value


def reduce_max(value: float) -> float:
    return float(_all_reduce(value, "float64", "max")) if _group_ready() else value


def _device() -> Any:
    """Where the backend's tensors live: NCCL reduces CUDA tensors, gloo CPU ones."""
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


__all__ = [
    "ReportedByRankZero",
    "any_rank",
    "barrier",
    "broadcast_from_main",
    "check_same_everywhere",
    "fingerprint",
    "gather_all",
    "join",
    "main_does",
    "reduce_max",
    "reduce_sum_float",
    "reduce_sum",
]
