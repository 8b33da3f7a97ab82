"""`legaltune plan`: what a config will do, before any weight is loaded."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from legaltune.config.schema import Config
from legaltune.model.arch import Arch, load_arch
from legaltune.plan.lint import Lint, lint_plan
from legaltune.plan.memory import CONTEXT_BYTES, GIB, MemoryEstimate, estimate_memory
from legaltune.plan.params import ParamCount, count_params, lora_scale, resolve_targets

_SIZE = re.compile(r"^\s*([0-9.]+)\s*(gib|gb|g|mib|mb|m)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> float:
    """'80GiB' / '80GB' / '80' (GiB) → bytes. GB is read as GiB, as GPU vendors' '80 GB' means."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"cannot read memory size {text!r}; write e.g. 80GiB or 24GB")
    value, unit = float(match.group(1)), (match.group(2) or "gib").lower()
    return value * (GIB if unit.startswith("g") else 1024**2)


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
            "lints": [lint.__dict__ for lint in self.lints],
        }


def compute_steps(
    n_examples: int, batch: int, grad_accum: int, world: int, epochs: float, max_steps: int
) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps), as transformers' Trainer counts them.

    Each rank sees ceil(n / world) examples; a partial last accumulation window still steps.
    """
    per_rank = math.ceil(n_examples / world)
    micro = math.ceil(per_rank / batch)
    per_epoch = max(micro // grad_accum + int(micro % grad_accum > 0), 1)
    total = max_steps if max_steps > 0 else math.ceil(epochs * per_epoch)
    return per_epoch, total


def warmup_for(total: int | None, warmup_steps: int | None, warmup_ratio: float | None) -> int:
    """Warm-up steps: the count if given, else ceil(ratio × total) (transformers' rounding)."""
    if warmup_ratio is not None:
        return math.ceil(warmup_ratio * total) if total else 0
    return warmup_steps or 0


def make_plan(
    cfg: Config,
    *,
    gpu_memory: float | None = None,
    world_size: int = 1,
    train_examples: int | None = None,
) -> Plan:
    """Compute parameters, schedule, memory and lints for ``cfg``."""
    arch = load_arch(cfg.model.model_name)
    targets = resolve_targets(arch, cfg.lora.target_modules)
    params = count_params(arch, cfg.lora.r, cfg.lora.target_modules, cfg.lora.bias)
    t = cfg.training
    eff = t.per_device_train_batch_size * t.gradient_accumulation_steps * world_size
    per_epoch = total = None
    if train_examples is not None:
        per_epoch, total = compute_steps(
            train_examples,
            t.per_device_train_batch_size,
            t.gradient_accumulation_steps,
            world_size,
            t.num_train_epochs,
            t.max_steps,
        )
    elif t.max_steps > 0:
        total = t.max_steps
    warmup = warmup_for(total, t.warmup_steps, t.warmup_ratio)
    compute_bytes = 4 if cfg.model.dtype == "float32" else 2
    checkpointing = cfg.lora.use_gradient_checkpointing if cfg.optimization.gradient_checkpointing else False
    memory = estimate_memory(
        arch,
        params,
        batch_size=t.per_device_train_batch_size,
        seq_len=cfg.model.max_seq_length,
        compute_bytes=compute_bytes,
        load_in_4bit=cfg.quantization.load_in_4bit,
        load_in_8bit=cfg.quantization.load_in_8bit,
        double_quant=cfg.quantization.bnb_4bit_use_double_quant,
        optim=cfg.optimization.optim,
        checkpointing=checkpointing,
        attn_implementation=cfg.model.attn_implementation,
        r=cfg.lora.r,
    )
    plan = Plan(
        config=cfg,
        arch=arch,
        params=params,
        targets=targets,
        lora_scale=lora_scale(cfg.lora.r, cfg.lora.lora_alpha, cfg.lora.use_rslora),
        world_size=world_size,
        effective_batch=eff,
        train_examples=train_examples,
        steps_per_epoch=per_epoch,
        total_steps=total,
        warmup_steps=warmup,
        memory=memory,
        gpu_bytes=gpu_memory,
    )
    plan.lints = lint_plan(plan)
    return plan
