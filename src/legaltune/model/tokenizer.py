"""Load only the tokenizer of a model (data checks and data preparation need no weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from legaltune.config.schema import ModelConfig


def load_tokenizer(model_cfg: ModelConfig) -> Any:
    from transformers import AutoTokenizer

    from legaltune.model.load import hub_error, prepare_tokenizer, resolve_model_path

    path = resolve_model_path(model_cfg.model_name, model_cfg.trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
    except OSError as exc:
        if Path(path).is_dir():
            raise
        raise hub_error(model_cfg.model_name, exc) from None
    prepare_tokenizer(tokenizer, model_cfg.max_seq_length)
    return tokenizer
