"""Load only the tokenizer of a model (data checks and data preparation need no weights)."""

from __future__ import annotations

from typing import Any

from legaltune.config.schema import ModelConfig


def load_tokenizer(model_cfg: ModelConfig) -> Any:
    from transformers import AutoTokenizer

    from legaltune.model.load import prepare_tokenizer, resolve_model_path

    path = resolve_model_path(model_cfg.model_name, model_cfg.trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
    prepare_tokenizer(tokenizer, model_cfg.max_seq_length)
    return tokenizer
