"""GPU: speed.embeddings_on_host frees the table's device memory and keeps the outputs bit for bit
(``pytest -m gpu``)."""

from __future__ import annotations

import copy

import pytest
import torch

from legaltune.speed.host_embedding import embeddings_to_host
from tests.test_host_embedding import _lora

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_the_table_leaves_the_gpu_and_the_outputs_stay():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32000, hidden_size=1024, intermediate_size=2048, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False, use_cache=False,
    )  # fmt: skip
    ref = _lora(LlamaForCausalLM(cfg).to("cuda", torch.bfloat16))
    moved = copy.deepcopy(ref)
    ids = torch.randint(0, 32000, (2, 512), device="cuda")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    freed = embeddings_to_host(moved)
    torch.cuda.synchronize()
    assert freed == 32000 * 1024 * 2 and before - torch.cuda.memory_allocated() == freed
    emb = moved.get_input_embeddings()
    assert emb.weight.is_pinned() and next(moved.parameters()).is_cuda
    with torch.no_grad():
        a, b = ref(input_ids=ids).logits, moved(input_ids=ids).logits
    assert b.is_cuda and torch.equal(a, b)


def test_the_gpu_kernel_gathers_from_the_pinned_table_without_waiting_for_the_cpu():
    from legaltune.speed.host_embedding import _device_gather

    table = torch.randn(50000, 4096 + 8, dtype=torch.bfloat16).pin_memory()  # a width not a block multiple
    ids = torch.randint(0, 50000, (3, 777), device="cuda")
    out = _device_gather(table, ids, torch.device("cuda"))
    assert out.is_cuda and out.shape == (3, 777, 4104)
    assert torch.equal(out.cpu(), table[ids.cpu()])
    bad = _device_gather(table, torch.tensor([1, 50000], device="cuda"), torch.device("cuda")).cpu()
    assert (
        torch.equal(bad[0], table[1]) and bad[1].isnan().all()
    )  # an id past the table: NaN, not a stray read
    emb = torch.nn.Embedding(1000, 64).to("cuda", torch.bfloat16)
    emb.weight.requires_grad_(False)

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = emb, torch.nn.Linear(64, 8)

        def get_input_embeddings(self):
            return self.emb

        def get_output_embeddings(self):
            return self.head

    m = M()
    ref = emb.weight.detach().clone()
    embeddings_to_host(m)
    assert m.emb.host_gather == "GPU kernel"
    x = torch.randint(0, 1000, (4, 33), device="cuda")
    assert torch.equal(m.emb(x), torch.nn.functional.embedding(x, ref))
