"""legaltune's memory plan for one benchmark row: its estimate, and what ``speed: auto`` checkpoints.

Reads a row only through ``PlannedRow``, so that the rows (which plan ``legaltune-auto``) and the
report (which compares the plan with the measurement) both import this module, not each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

# Nothing heavy at module level: an Unsloth child must import unsloth before torch/transformers.
if TYPE_CHECKING:
    from legaltune.model.arch import Arch

from bench_settings import ATTN, LORA_R, OPTIM, SEVEN_PROJECTIONS


class PlannedRow(Protocol):
    """What the plan reads of a row (bench_rows.Row)."""

    checkpointing: bool | str
    speed: bool
    fused_head: bool
    fp8: bool
    fp8_transpose: bool
    host_embeddings: bool


def row_estimate(
    arch: Arch,
    row: PlannedRow,
    qlora: bool,
    seq: int,
    batch: int,
    compute_bytes: int,
    checkpoint_layers: int | None = None,
) -> Any:
    """legaltune's memory estimate (MemoryEstimate) for this row at this shape; ``checkpoint_layers``
    as a partial checkpointing policy checkpointed them (None: the row's mode on every layer)."""
    from legaltune.plan.memory import estimate_memory
    from legaltune.plan.params import count_params

    return estimate_memory(
        arch,
        count_params(arch, LORA_R, list(SEVEN_PROJECTIONS)),
        batch_size=batch,
        seq_len=seq,
        compute_bytes=compute_bytes,
        load_in_4bit=qlora,
        load_in_8bit=False,
        double_quant=True,
        optim=OPTIM,
        checkpointing=row.checkpointing,
        attn_implementation=ATTN,
        r=LORA_R,
        speed=row.speed,
        fused_head=row.fused_head,
        checkpoint_layers=checkpoint_layers,
        load_in_fp8=row.fp8,
        fp8_keep_transpose=row.fp8_transpose,
        embeddings_on_host=row.host_embeddings,
    )


def auto_checkpoint_layers(
    arch: Arch, row: PlannedRow, qlora: bool, seq: int, batch: int, compute_bytes: int, budget: float
) -> int:
    """What ``speed: auto`` checkpoints for this row and shape on a GPU of ``budget`` bytes."""
    from legaltune.plan.core import choose_checkpoint_layers

    def estimate(n: int) -> Any:
        return row_estimate(arch, row, qlora, seq, batch, compute_bytes, n)

    layers, _why = choose_checkpoint_layers(estimate, arch.layers, budget)
    return arch.layers if layers is None else layers
