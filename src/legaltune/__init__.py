"""legaltune: LoRA/QLoRA fine-tuning of LLMs for Vietnamese legal question answering.

Importing the package is cheap: heavy modules (torch, transformers) load on first use.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import version

        return version("legaltune")
    raise AttributeError(f"module 'legaltune' has no attribute {name!r}")
