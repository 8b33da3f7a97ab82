"""The method object that ``training.method`` names (dpo / orpo / grpo; none for sft).

Apart from after_sft.py, whose base classes the methods build on, so that neither imports the other
both ways.
"""

from __future__ import annotations

from typing import Any

from legaltune.config.schema import Config
from legaltune.train.after_sft import AfterSFT
from legaltune.train.grpo import GrpoMethod
from legaltune.train.preference import PreferenceMethod


def after_sft(cfg: Config, notice: Any = None) -> AfterSFT | None:
    """The method object of ``training.method`` (None for sft)."""
    method = cfg.training.method
    if method in ("dpo", "orpo"):
        return PreferenceMethod(cfg, notice)
    if method == "grpo":
        return GrpoMethod(cfg, notice)
    return None
