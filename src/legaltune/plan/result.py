"""What `legaltune plan` computes: the plan's numbers and the lints found on them.

Apart from `make_plan` so that the lint modules can read a plan without importing the code that
makes one (which runs them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from legaltune.config.schema import Config
from legaltune.model.arch import Arch
from legaltune.plan.memory import CONTEXT_BYTES, GIB, MemoryEstimate
from legaltune.plan.params import ParamCount
from legaltune.plan.sharding import Parallel


@dataclass(frozen=True)
class Lint:
    level: str  # "error" | "warn" | "info"
    key: str
    message: str
    reason: str


@dataclass
class Plan:
    config: Config
    arch: Arch
    params: ParamCount
    targets: list[str]
    lora_scale: float
    world_size: int
    effective_batch: int
    train_examples: int | None
    steps_per_epoch: int | None
    total_steps: int | None
    warmup_steps: int
    memory: MemoryEstimate
    gpu_bytes: float | None
    lints: list[Lint] = field(default_factory=list)
    # speed.mode auto: how many decoder layers to checkpoint (None = as configured, every layer)
    checkpoint_layers: int | None = None
    speed_choice: str = ""
    # speed.offload_attention: how many offloaded layers keep their attention half (None: not split)
    attention_layers: int | None = None
    attention_choice: str = ""
    parallel: Parallel = field(default_factory=Parallel)
    # ranks on one machine, sharing its host memory: each plans with host_memory / local_ranks
    local_ranks: int = 1
    host_memory: float | None = None  # of the whole machine

    @property
    def warmup_fraction(self) -> float:
        return self.warmup_steps / self.total_steps if self.total_steps else 0.0

    def to_dict(self) -> dict[str, Any]:
        c = self.config
        return {
            "model": c.model.model_name,
            "architecture": self.arch.name,
            "parameters": {
                "total": self.params.total,
                "base": self.params.total_base,
                "trainable": self.params.trainable,
                "trainable_percent": round(self.params.trainable_percent, 4),
                "per_module": self.params.per_module,
            },
            "lora": {
                "r": c.lora.r,
                "alpha": c.lora.lora_alpha,
                "rslora": c.lora.use_rslora,
                "scale": self.lora_scale,
                "scale_formula": "alpha/sqrt(r)" if c.lora.use_rslora else "alpha/r",
                "targets": self.targets,
            },
            "batch": {
                "per_device": c.training.per_device_train_batch_size,
                "gradient_accumulation_steps": c.training.gradient_accumulation_steps,
                "world_size": self.world_size,
                "effective": self.effective_batch,
            },
            "steps": {
                "train_examples": self.train_examples,
                "per_epoch": self.steps_per_epoch,
                "total": self.total_steps,
                "warmup": self.warmup_steps,
                "warmup_fraction": round(self.warmup_fraction, 4) if self.total_steps else None,
            },
            "memory": {
                "tokens_per_micro_batch": self.memory.tokens_per_micro_batch,
                "components_gib": {k: round(v / GIB, 3) for k, v in self.memory.components.items()},
                "peak_gib": round(self.memory.peak_bytes / GIB, 3),
                "context_gib": CONTEXT_BYTES / GIB,
                "host_offload_gib": round(self.memory.host_offload_bytes / GIB, 3),
                "gpu_gib": self.gpu_bytes / GIB if self.gpu_bytes else None,
                "fits": self.memory.fits(self.gpu_bytes) if self.gpu_bytes else None,
                "notes": self.memory.notes,
            },
            "speed": {
                "mode": c.speed.mode,
                "checkpoint_layers": self.checkpoint_layers,
                "choice": self.speed_choice,
                "attention_layers": self.attention_layers,
                "attention_choice": self.attention_choice,
            },
            "distributed": {
                "world_size": self.world_size,
                "strategy": self.parallel.strategy if self.world_size > 1 else "single",
                "gpus_per_node": self.local_ranks,
                "host_memory_gib": round(self.host_memory / GIB, 1) if self.host_memory else None,
                "host_memory_per_rank_gib": (
                    round(self.host_memory / self.local_ranks / GIB, 1) if self.host_memory else None
                ),
            },
            "lints": [lint.__dict__ for lint in self.lints],
        }
