"""legaltune: LoRA/QLoRA fine-tuning of LLMs for Vietnamese legal question answering.

Importing the package is cheap: heavy modules (torch, transformers) load on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FastLanguageModel", "SFTTrainer", "TrainingArguments"]


def __getattr__(name: str) -> Any:
    # Lazy: `import legaltune` must not import torch; the seed's API loads on first use.
    if name == "FastLanguageModel":
        from legaltune.api import FastLanguageModel

        return FastLanguageModel
    if name in ("SFTTrainer", "TrainingArguments"):
        from legaltune import compat

        return getattr(compat, name)
    if name == "__version__":
        from importlib.metadata import version

        return version("legaltune")
    raise AttributeError(f"module 'legaltune' has no attribute {name!r}")
