"""What the speed engine did to each model instance, kept beside the model rather than on it.

One owner for the per-model results that later steps read back (the trainer's summary line, the
LM head's check that the engine is on, the benchmarks): the speed report and the checkpointing
mode. Weakly keyed by the transformers model (a PEFT wrapper resolves to its base), so nothing is
set on the model object and a model that is freed takes its entry with it.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from legaltune.speed.apply import SpeedReport

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


__all__ = ["checkpointing_mode", "set_checkpointing", "set_speed_report", "speed_report"]
