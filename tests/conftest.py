"""Shared fixtures: the embedded tokenizer and tiny random Llama models built in seconds."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

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


def make_tiny_llama(vocab_size: int, *, layers: int = 2, seed: int = 0, attn: str = "sdpa", tie: bool = True):
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
        tie_word_embeddings=tie,
        use_cache=False,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def tiny_llama(tokenizer):
    return make_tiny_llama(len(tokenizer))


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny-model tests (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`):
    their matmuls are too small to gain from threads; on a shared CPU extra threads only wait on
    each other (measured: tests/test_eval.py 28 s with 2 threads, 14 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def randomize_lora_b(model, std: float, seed: int | None = None) -> None:
    """PEFT starts lora_B at zero (a no-op adapter, and zero lora_A gradients), which would hide
    mistakes in the adapter path: draw it from N(0, std), after ``torch.manual_seed(seed)`` if given."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, std)


def loss_and_grads(model, ids):
    """One forward/backward with labels = ids: (logits as fp32, loss as fp32, {trainable name: grad})."""
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.logits.detach().float(), out.loss.detach().float(), grads


@pytest.fixture
def fp8_backend():
    """Force the FP8 GEMM backend for one test (``fp8_backend("scaled_mm")``), restored afterwards."""
    from legaltune.speed import fp8

    def force(name: str | None) -> None:
        fp8.BACKEND[0] = name

    yield force
    fp8.BACKEND[0] = None


def phrase_batches(steps: int, vocab: int, device: str = "cuda", seed: int = 11) -> list:
    """A learnable stream for loss-curve comparisons: (4 × 256) batches of repeated random phrases,
    so the loss falls well below log(vocab)."""
    gen = torch.Generator(device).manual_seed(seed)
    phrases = torch.randint(0, vocab, (16, 32), device=device, generator=gen)
    return [
        phrases[torch.randint(0, 16, (4, 8), device=device, generator=gen)].reshape(4, -1)
        for _ in range(steps)
    ]


def loss_curve(model, batches: list, lr: float = 2e-3) -> list[float]:
    """The loss of every AdamW step of ``model`` (its trainable parameters) over ``batches``."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for ids in batches:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(script: str, name: str | None = None) -> ModuleType:
    """Import ``benchmarks/<script>`` as a module (the scripts are not part of the package), under
    ``name`` (default: the script's stem) in ``sys.modules``: dataclasses resolve string annotations
    through it."""
    spec = importlib.util.spec_from_file_location(name or Path(script).stem, BENCHMARKS / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
