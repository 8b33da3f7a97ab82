"""Shared fixtures: the embedded tokenizer and tiny random Llama models built in seconds."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def embedded_dir():
    from legaltune.model.embedded import ensure_embedded_model

    # `make test` fetches the model before pytest; this only downloads when run outside make.
    return ensure_embedded_model()


@pytest.fixture(scope="session")
def tokenizer(embedded_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(embedded_dir))


def make_tiny_llama(vocab_size: int, *, layers: int = 2, seed: int = 0, attn: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        use_cache=False,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def tiny_llama(tokenizer):
    return make_tiny_llama(len(tokenizer))
