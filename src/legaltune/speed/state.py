"""What the speed engine did to each model instance, kept beside the model rather than on it.

One owner for the per-model results that later steps read back (the trainer's summary line, the
LM head's check that the engine is on, the benchmarks): the speed report and the checkpointing
mode. Weakly keyed by the transformers model (a PEFT wrapper resolves to its base), so nothing is
set on the model object and a model that is freed takes its entry with it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from legaltune.speed.policy import liger_available


@dataclass
class SpeedReport:
    """What the speed engine changed on a model instance (logged, and saved with the run)."""

    mode: str
    fused_lora: int = 0
    recompute_skips: int = 0
    rms_norm: int = 0
    swiglu: int = 0
    geglu: int = 0  # Gemma's tanh-GELU-gated MLPs
    compiled_layers: int = 0
    fp8_linears: int = 0  # frozen base linears in FP8 (quantization.load_in_fp8)
    fp8_gemm: str = ""  # how their GEMMs run: torch._scaled_mm, or the dequantizing reference
    checkpointing: str = ""
    fused_head: bool = False  # TRL's LM head with the gradient computed in forward (speed/lm_head.py)
    compact_head: bool = False  # CPU: TRL's LM head on the labelled positions only (speed/lm_head.py)
    on_cuda: bool = False
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.mode == "off":
            return "speed: off (transformers + PEFT reference path)"
        parts = [f"{self.fused_lora} fused LoRA linears"]
        gate = "GeGLU" if self.geglu else "SwiGLU"
        if (self.rms_norm or self.swiglu or self.geglu) and self.on_cuda and liger_available():
            parts.append(f"Liger RMSNorm×{self.rms_norm} {gate}×{self.geglu or self.swiglu}")
        elif self.rms_norm or self.swiglu or self.geglu:
            parts.append(f"RMSNorm/{gate} in PyTorch (Liger's kernels need CUDA and liger-kernel)")
        if self.fp8_linears:
            parts.append(f"{self.fp8_linears} FP8 base linears ({self.fp8_gemm})")
        if self.compiled_layers:
            parts.append(f"{self.compiled_layers} compiled layers")
        if self.checkpointing:
            parts.append(f"checkpointing: {self.checkpointing}")
        if self.fused_head:
            parts.append("LM head gradient in forward")
        if self.compact_head:
            parts.append("LM head on labelled positions only")
        if self.recompute_skips and self.checkpointing not in ("", "none"):
            parts.append(f"recompute skips {self.recompute_skips} down_proj GEMMs")
        return f"speed: {self.mode} — " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


_REPORTS: weakref.WeakKeyDictionary[nn.Module, SpeedReport] = weakref.WeakKeyDictionary()
_CHECKPOINTING: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


def _owner(model: nn.Module) -> nn.Module:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def set_speed_report(model: nn.Module, report: SpeedReport) -> None:
    _REPORTS[_owner(model)] = report


def speed_report(model: nn.Module) -> SpeedReport | None:
    """The report of the speed engine applied to this model (None: not applied)."""
    return _REPORTS.get(_owner(model))


def set_checkpointing(model: nn.Module, mode: str) -> None:
    _CHECKPOINTING[_owner(model)] = mode


def checkpointing_mode(model: nn.Module) -> str | None:
    """How legaltune checkpoints this model: ``"none"``, ``"recompute"``, ``"offload"``,
    ``"offload 12/32"``, ``"offload (attention kept)"`` … (None: legaltune never set it)."""
    return _CHECKPOINTING.get(_owner(model))


__all__ = ["SpeedReport", "checkpointing_mode", "set_checkpointing", "set_speed_report", "speed_report"]
