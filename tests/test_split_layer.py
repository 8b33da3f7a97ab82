"""The attention/MLP halves of a decoder layer (speed.offload_attention) on the CPU: the split layer
computes what the layer's own forward does, forward and backward, eager and compiled, and the
MLP half is the only part recomputed."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from legaltune.config.schema import LoraConfig as LtLoraConfig
from legaltune.config.schema import SpeedConfig
from legaltune.model.lora import apply_lora
from legaltune.speed.compile import compile_layers
from legaltune.speed.layers import find_decoder_layers
from legaltune.speed.lora_linear import fuse_lora_linears, mark_recompute_skips
from legaltune.speed.offload import _dense, enable_offloaded_checkpointing
from legaltune.speed.split_layer import layer_halves
from legaltune.speed.state import checkpointing_mode
from tests.conftest import randomize_lora_b

PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _peft(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    kw = dict(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, attn_implementation="sdpa", use_cache=False,
    )  # fmt: skip
    base = LlamaForCausalLM(LlamaConfig(**kw)) if arch == "llama" else Qwen3ForCausalLM(Qwen3Config(**kw))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=PROJ))
    randomize_lora_b(model, 0.02, seed=1)
    return model


def _loss_grads(model: torch.nn.Module, ids: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    model.train()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out.loss.item(), grads


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("compiled", [False, True])
def test_split_layer_matches_the_layer_forward(arch, compiled):
    ids = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(0))
    ref = _peft(arch)
    ref_loss, ref_grads = _loss_grads(ref, ids)
    model = copy.deepcopy(ref)
    fuse_lora_linears(model)
    mark_recompute_skips(model)
    if compiled:
        compile_layers(model, backend="aot_eager")
    enable_offloaded_checkpointing(model.get_base_model(), split=layer_halves)
    assert checkpointing_mode(model.get_base_model()) == "offload (attention kept)"
    calls = {"attn": 0, "mlp": 0}
    for layer in find_decoder_layers(model):
        # pre-hooks: checkpoint's recompute stops once the last saved tensor is back, before the
        # MLP returns
        # (the halves call the projections, not the attention/MLP modules)
        layer.self_attn.q_proj.register_forward_pre_hook(
            lambda *_: calls.__setitem__("attn", calls["attn"] + 1)
        )
        layer.mlp.gate_proj.register_forward_pre_hook(lambda *_: calls.__setitem__("mlp", calls["mlp"] + 1))
    loss, grads = _loss_grads(model, ids)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-6, msg=name)
    if not compiled:  # hooks do not fire inside compiled graphs
        assert calls == {"attn": 3, "mlp": 6}  # attention once per layer, the MLP again in backward


def test_split_only_the_first_layers_and_only_known_classes():
    model = _peft("llama")
    enable_offloaded_checkpointing(model.get_base_model(), split=layer_halves, split_layers=2)
    assert checkpointing_mode(model.get_base_model()) == "offload (attention kept in 2)"
    kinds = [layer.__dict__.get("_legaltune_halves") is not None for layer in find_decoder_layers(model)]
    assert kinds == [True, True, False]

    class OtherLayer(torch.nn.Module):
        pass

    assert layer_halves(OtherLayer()) is None


def test_offload_attention_setting_through_apply_lora():
    base = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, attn_implementation="sdpa", use_cache=False,
        )
    )  # fmt: skip
    lora = LtLoraConfig(r=4, lora_alpha=8, use_gradient_checkpointing="unsloth")
    # auto is off the GPU (nothing is offloaded on a CPU), true splits, false does not
    for setting, expected in (("auto", "offload"), (True, "offload (attention kept)"), (False, "offload")):
        model = apply_lora(
            copy.deepcopy(base),
            lora,
            speed=SpeedConfig(mode="fast", compile=False, offload_attention=setting),
        )
        assert checkpointing_mode(model.get_base_model()) == expected, setting


def test_dense_layouts():
    t = torch.zeros(2, 8, 4, 16)
    assert _dense(t) and _dense(t.transpose(1, 2)) and _dense(t.permute(0, 2, 3, 1))
    assert not _dense(t[..., :8]) and not _dense(t[:, ::2])


@pytest.mark.parametrize("recompute_norm", [True, False])
def test_compiled_attention_half_recomputes_the_normed_input(recompute_norm):
    # The compiled attention half saves the layer input for backward but not its normed copy
    # (rebuilt in backward from the input): a fifth less over the host link. The probe setting
    # recompute_norm=False shows the saved copy this removes.
    model = _peft("llama")
    fuse_lora_linears(model)
    compile_layers(model, backend="aot_eager")
    layer = find_decoder_layers(model)[0]
    attention, _mlp = layer_halves(layer, recompute_norm=recompute_norm)
    h = torch.randn(2, 24, 64, requires_grad=True)
    cos, sin = model.get_base_model().model.rotary_emb(h, torch.arange(24)[None].expand(2, 24))
    normed = layer.input_layernorm(h).detach()
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = attention(layer, h, position_embeddings=(cos, sin), attention_mask=None)
    out.sum().backward()
    grad = h.grad.clone()
    h.grad = None
    ref = layer.input_layernorm(h)
    (
        h + layer.self_attn(hidden_states=ref, position_embeddings=(cos, sin), attention_mask=None)[0]
    ).sum().backward()
    torch.testing.assert_close(grad, h.grad, rtol=1e-5, atol=1e-6)
    same_shape = [t for t in saved if t.shape == h.shape]
    assert any(t.data_ptr() == h.data_ptr() for t in same_shape)  # the input goes to the offloader
    assert any(torch.equal(t, normed) for t in same_shape) is not recompute_norm
