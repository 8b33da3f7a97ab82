"""Lints of a plan for several GPUs (distributed.strategy and --world-size)."""

from __future__ import annotations

from legaltune.plan.memory import CONTEXT_BYTES, GIB
from legaltune.plan.result import Lint, Plan

# bitsandbytes' optimizers, whose 8-bit states and their step are not DTensor-aware everywhere
_BNB_OPTIMIZERS = ("adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit")


def distributed_lints(plan: Plan) -> list[Lint]:
    cfg = plan.config
    if plan.world_size <= 1:
        return []
    out: list[Lint] = []
    fsdp = plan.parallel.strategy == "fsdp"
    if fsdp and cfg.optimization.optim in _BNB_OPTIMIZERS:
        out.append(
            Lint(
                "warn",
                "optimization.optim",
                f"{cfg.optimization.optim} with distributed.strategy fsdp",
                "bitsandbytes' optimizers step sharded (DTensor) parameters only in recent releases (bitsandbytes "
                "issue #1403); under fsdp each GPU keeps 1/N of the LoRA states anyway, so adamw_torch costs little",
            )
        )
    if fsdp and cfg.quantization.load_in_4bit:
        out.append(
            Lint(
                "info",
                "distributed.strategy",
                "fsdp with a 4-bit base: its projections stay whole on every GPU",
                "FSDP2 cannot shard bitsandbytes' packed weights (accelerate leaves them out of the sharding); the "
                "LoRA weights, gradients and optimizer states are sharded, the 4-bit base is not",
            )
        )
    whole = plan.memory.components
    weights = next((v for k, v in whole.items() if k.startswith("weights")), 0.0)
    if fsdp and plan.gpu_bytes and not cfg.quantization.load_in_4bit:
        loaded = weights * plan.parallel.shards  # the whole base, before fully_shard cuts it
        if loaded + CONTEXT_BYTES > plan.gpu_bytes:
            out.append(
                Lint(
                    "error",
                    "distributed.strategy",
                    f"fsdp: each GPU loads the whole {loaded / GIB:.1f} GiB base before sharding it, over its "
                    f"{plan.gpu_bytes / GIB:.0f} GiB",
                    "legaltune loads the weights onto every GPU and accelerate shards them when training starts; "
                    "use load_in_4bit, or GPUs with more memory",
                )
            )
    if not fsdp and plan.gpu_bytes and not plan.memory.fits(plan.gpu_bytes):
        out.append(
            Lint(
                "info",
                "distributed.strategy",
                f"ddp keeps the whole model on each of the {plan.world_size} GPUs",
                "distributed.strategy: fsdp shards the base, the LoRA weights, gradients and optimizer states 1/N per "
                "GPU (legaltune plan … --set distributed.strategy=fsdp shows the memory)",
            )
        )
    return out


__all__ = ["distributed_lints"]
