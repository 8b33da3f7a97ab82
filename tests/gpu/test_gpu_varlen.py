"""GPU: padding-free batches through PyTorch's varlen flash kernel (speed/varlen.py), and compiled
layers that keep one graph across micro-batch lengths (``pytest -m gpu``)."""

from __future__ import annotations

import pytest
import torch

from legaltune.data.format import IGNORE
from legaltune.data.pack import BatchCollator
from legaltune.speed.varlen import (
    ATTN_NAME,
    disable_varlen_attention,
    enable_varlen_attention,
    varlen_supported,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _llama(dtype=torch.bfloat16, layers=2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=1000, hidden_size=512, intermediate_size=1024, num_hidden_layers=layers,
        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096, use_cache=False,
        attn_implementation="sdpa",
    )  # fmt: skip
    return LlamaForCausalLM(cfg).to("cuda", dtype)


def _features(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(0, 1000, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE, *ids[1:]]})
    return out


def _loss_and_grad(model, batch):
    model.zero_grad()
    batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    loss = model(**batch).loss
    loss.backward()
    return loss.detach().float(), model.model.layers[0].self_attn.q_proj.weight.grad.float().clone()


@pytest.mark.skipif(not varlen_supported(), reason="torch.nn.attention.varlen missing")
def test_varlen_padding_free_matches_padded_sdpa():
    """bf16 (the training dtype; fp16's range underflows this tiny model's 1e-4 gradients): the
    same micro-batch padded through SDPA and padding-free through the varlen kernel."""
    dtype, atol, rtol = torch.bfloat16, 2e-2, 5e-2
    model = _llama(dtype)
    feats = _features([300, 17, 1200, 64, 511])
    ref_loss, ref_grad = _loss_and_grad(model, BatchCollator()(feats))
    assert enable_varlen_attention(model) and model.config._attn_implementation == ATTN_NAME
    loss, grad = _loss_and_grad(model, BatchCollator(padding_free=True, max_length=4096)(feats))
    torch.testing.assert_close(loss, ref_loss, atol=atol, rtol=rtol)
    assert (grad - ref_grad).norm() / ref_grad.norm() < 0.05
    disable_varlen_attention(model)
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.skipif(not varlen_supported(), reason="torch.nn.attention.varlen missing")
def test_compiled_layers_keep_one_graph_across_lengths():
    """Micro-batches of ever-different lengths: the compiled layers do not recompile per length."""
    import torch._dynamo

    from legaltune.speed.compile import compile_layers

    torch._dynamo.reset()
    model = _llama(torch.bfloat16, layers=2).train()
    enable_varlen_attention(model)
    compile_layers(model)
    collate = BatchCollator(padding_free=True, max_length=4096)
    counts = []
    from torch._dynamo.utils import counters

    counters.clear()
    for i, lengths in enumerate([[100, 200], [333, 17, 90], [1000], [45, 45, 45, 45], [700, 1]]):
        _loss_and_grad(model, collate(_features(lengths, seed=i)))
        counts.append(counters["stats"]["unique_graphs"])
    # the first batch compiles, every later length reuses it (a second graph at most, never one per length)
    assert counts[-1] <= counts[0] + 1, counts
