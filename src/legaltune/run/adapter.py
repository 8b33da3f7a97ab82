"""Load a run's saved tokenizer and LoRA adapter, naming the file when one is damaged.

A truncated tokenizer.json or adapter_model.safetensors (copied in half, or left by a version of
legaltune that wrote in place) otherwise fails deep in tokenizers or safetensors with a message
that names no file ("expected value at line 142985 column 2").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from legaltune.run.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, RunError


def _damaged(directory: Path, names: tuple[str, ...], what: str, exc: Exception) -> RunError:
    files = [str(directory / n) for n in names if (directory / n).is_file()] or [str(directory)]
    detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return RunError(
        f"cannot read the {what} in {' / '.join(files)} ({type(exc).__name__}: {detail}): the file is damaged "
        "or truncated. Use another checkpoint of the run (RUN/checkpoints/checkpoint-N), or resume the run "
        "to write it again"
    )


def load_saved_tokenizer(directory: Path) -> Any:
    """The tokenizer training saved beside an adapter."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except Exception as exc:  # tokenizers' own parse errors are plain Exceptions
        raise _damaged(directory, ("tokenizer.json", "tokenizer_config.json"), "tokenizer", exc) from None


def attach_adapter(base: Any, adapter_dir: Path) -> Any:
    """``PeftModel.from_pretrained(base, adapter_dir)``."""
    from peft import PeftModel

    from legaltune.model.lora import quiet_peft_wrap

    try:
        with quiet_peft_wrap():
            return PeftModel.from_pretrained(base, str(adapter_dir))
    except Exception as exc:  # safetensors' header errors, JSON errors, size mismatches
        raise _damaged(adapter_dir, (*ADAPTER_WEIGHTS, ADAPTER_CONFIG), "LoRA adapter", exc) from None
