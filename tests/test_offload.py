"""Offloaded checkpointing: same gradients as plain checkpointing, per-instance, survives the Trainer's switch."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from legaltune.config.schema import LoraConfig
from legaltune.model.lora import apply_lora
from legaltune.speed.layers import find_decoder_layers
from legaltune.speed.offload import (
    _Offloader,
    disable_offloaded_checkpointing,
    enable_offloaded_checkpointing,
    is_offloaded,
)
from legaltune.speed.state import checkpointing_mode
from tests.conftest import randomize_lora_b


@pytest.fixture(scope="module")
def base() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(1))


def _hf_checkpointing(model: nn.Module) -> None:
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _grads(model: nn.Module, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradients_match_plain_checkpointing_exactly(base, batch):
    plain, offl, none = copy.deepcopy(base), copy.deepcopy(base), copy.deepcopy(base)
    _hf_checkpointing(plain)
    enable_offloaded_checkpointing(offl)
    g_plain, g_off, g_none = _grads(plain, batch), _grads(offl, batch), _grads(none, batch)
    assert g_off.keys() == g_plain.keys() == g_none.keys() and len(g_off) > 0
    for name in g_off:
        torch.testing.assert_close(g_off[name], g_plain[name], atol=0, rtol=0)
        torch.testing.assert_close(g_off[name], g_none[name], atol=1e-5, rtol=0)


def test_peft_model_gradients_match(base, batch):
    cfg = dict(r=4, lora_alpha=8, use_rslora=False, target_modules=["q_proj", "v_proj", "down_proj"])
    plain = apply_lora(copy.deepcopy(base), LoraConfig(**cfg, use_gradient_checkpointing=True))
    offl = apply_lora(copy.deepcopy(base), LoraConfig(**cfg, use_gradient_checkpointing="unsloth"))
    assert is_offloaded(offl) and checkpointing_mode(offl) == "offload"
    for model in (plain, offl):
        randomize_lora_b(model, 0.02, seed=5)
    g_plain, g_off = _grads(plain, batch), _grads(offl, batch)
    assert g_off.keys() == g_plain.keys() and any("lora_A" in k for k in g_off)
    for name in g_off:
        torch.testing.assert_close(g_off[name], g_plain[name], atol=0, rtol=0)


def _count_mlp_calls(model: nn.Module, ids: torch.Tensor, *, train: bool, grad: bool) -> int:
    # A forward wrapper, not a hook: module hooks do not fire during the checkpoint's recompute.
    calls = []
    mlp = find_decoder_layers(model)[0].mlp
    inner = mlp.forward

    def counted(*args, **kwargs):
        calls.append(1)
        return inner(*args, **kwargs)

    mlp.forward = counted
    model.train(train)
    with torch.set_grad_enabled(grad):
        out = model(input_ids=ids, labels=ids)
        if grad:
            out.loss.backward()
    del mlp.forward
    return len(calls)


def test_layers_are_recomputed_in_backward_only_when_training(base, batch):
    model = copy.deepcopy(base)
    assert _count_mlp_calls(model, batch, train=True, grad=True) == 1
    enable_offloaded_checkpointing(model)
    assert _count_mlp_calls(model, batch, train=True, grad=True) == 2  # forward + recompute
    assert _count_mlp_calls(model, batch, train=False, grad=False) == 1  # eval/generation: plain forward
    disable_offloaded_checkpointing(model)
    assert _count_mlp_calls(model, batch, train=True, grad=True) == 1


def test_only_this_instance_changes(base):
    other = copy.deepcopy(base)
    model = copy.deepcopy(base)
    enable_offloaded_checkpointing(model)
    enable_offloaded_checkpointing(model)  # idempotent: wrapped once
    layer = find_decoder_layers(model)[0]
    assert "forward" in layer.__dict__
    assert "forward" not in find_decoder_layers(other)[0].__dict__
    assert (
        "forward" not in type(layer).__dict__
        or type(layer).forward is type(find_decoder_layers(other)[0]).forward
    )
    assert not is_offloaded(other)
    disable_offloaded_checkpointing(model)
    assert "forward" not in layer.__dict__ and "gradient_checkpointing_enable" not in model.__dict__


def test_deepcopy_of_offloaded_model_runs_its_own_layers(base, batch):
    model = copy.deepcopy(base)
    enable_offloaded_checkpointing(model)
    twin = copy.deepcopy(model)
    layer = find_decoder_layers(twin)[0]
    assert is_offloaded(twin) and layer.forward.__self__ is layer
    assert twin.gradient_checkpointing_enable.__self__ is twin
    assert _count_mlp_calls(twin, batch, train=True, grad=True) == 2
    assert all(p.grad is None for p in model.parameters())  # the original was not run


def test_trainer_switch_keeps_offload(base, batch):
    model = copy.deepcopy(base)
    enable_offloaded_checkpointing(model)
    # What Trainer(gradient_checkpointing=True) calls (5.17: gradient_*, 5.23: activation_*).
    for name in ("activation_checkpointing_enable", "gradient_checkpointing_enable"):
        if hasattr(model, name):
            getattr(model, name)({"use_reentrant": False})
    assert is_offloaded(model) and checkpointing_mode(model) == "offload"
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    assert _count_mlp_calls(model, batch, train=True, grad=True) == 2  # not nested: still one recompute
    name = "activation_checkpointing_disable" if hasattr(model, "activation_checkpointing_disable") else None
    getattr(model, name or "gradient_checkpointing_disable")()
    assert not is_offloaded(model) and checkpointing_mode(model) == "none"


def test_cache_kwargs_are_dropped_in_training(base, batch):
    model = copy.deepcopy(base)
    enable_offloaded_checkpointing(model)
    model.train()
    model(input_ids=batch, labels=batch, use_cache=True).loss.backward()


def test_pack_is_identity_off_cuda():
    offloader = _Offloader()
    t = torch.randn(1024, 1024)
    assert offloader.pack(t) is t and offloader.unpack(t) is t
    p = nn.Parameter(torch.randn(4))
    assert offloader.pack(p) is p


def test_missing_layers_is_a_clear_error():
    with pytest.raises(ValueError, match="decoder layers"):
        enable_offloaded_checkpointing(nn.Sequential(nn.Linear(2, 2)))


class _CudaInput:
    """What keep_attention reads of a layer's CUDA input (on a CPU nothing is offloaded)."""

    is_cuda = True

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes

    def numel(self) -> int:
        return self.nbytes

    def element_size(self) -> int:
        return 1


def test_attention_kept_only_while_the_host_allowance_holds_the_rest():
    mib = 1 << 20
    offloader = _Offloader(layers=4, host_allowance=600 * mib)
    x = _CudaInput(64 * mib)
    # layer 1: nothing parked yet; its own (guessed 5 x 64) + 3 inputs to come fit 600 MiB
    assert offloader.keep_attention(x)
    offloader._pinned += 289 * mib  # what that split layer parked (as measured after it ran)
    offloader._split_bytes = 289 * mib
    # layer 2: 289 parked + 289 + 2 x 64 > 600: run whole; so do the rest
    assert not offloader.keep_attention(x)
    offloader._pinned += 64 * mib
    assert not offloader.keep_attention(x) and offloader.attention_recomputed == 2
    # a new forward starts over from the first layer
    offloader._backward_started = True
    assert offloader.keep_attention(x) and offloader.attention_recomputed == 0
    # no allowance (explicit speed.offload_attention): always kept
    unbounded = _Offloader(layers=4)
    assert all(unbounded.keep_attention(x) for _ in range(4))
