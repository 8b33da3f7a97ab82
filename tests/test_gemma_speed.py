"""Gemma 3 through the speed engine on the CPU: every fast path the family registry grants it is
compared with the model's own forward (fp32, explicit tolerances) on a tiny random Gemma 3 with
sliding-window and full-attention layers, and what it does not get is said in the speed report."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from legaltune.speed.apply import apply_speed
from legaltune.speed.compile import compile_layers
from legaltune.speed.kernels import kernel_kind
from legaltune.speed.layers import find_decoder_layers
from legaltune.speed.lm_head import head_covered, token_block
from legaltune.speed.lora_linear import fuse_lora_linears, mark_recompute_skips
from legaltune.speed.offload import enable_offloaded_checkpointing
from legaltune.speed.split_layer import layer_halves
from legaltune.speed.state import checkpointing_mode
from tests.conftest import randomize_lora_b

PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VOCAB, SEQ, WINDOW = 96, 24, 6


@pytest.fixture(autouse=True, scope="module")
def _fresh_dynamo():
    """Compiled frames this module leaves behind (the fused LoRA forward is shared with Llama's
    layers) would count towards dynamo's recompile limit in later modules' compile tests."""
    yield
    torch._dynamo.reset()


def _gemma(window: int = WINDOW, seed: int = 0) -> Gemma3ForCausalLM:
    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=1, head_dim=32, sliding_window=window,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        max_position_embeddings=256, use_cache=False, attn_implementation="sdpa",
    )  # fmt: skip
    model = Gemma3ForCausalLM(config)
    with torch.no_grad():  # Gemma's norms start at weight 0 (scale 1 + w): make the (1 + w) visible
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)
    return model


def _peft(window: int = WINDOW) -> torch.nn.Module:
    model = get_peft_model(
        _gemma(window), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=PROJ)
    )
    randomize_lora_b(model, 0.05, seed=1)
    return model.train()


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(seed))


def _step(model, ids):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), out.loss.detach(), grads


def _assert_same(fast, ref, ids, rtol=1e-5, atol=1e-6):
    logits_r, loss_r, grads_r = _step(ref, ids)
    logits_f, loss_f, grads_f = _step(fast, ids)
    torch.testing.assert_close(logits_f, logits_r, rtol=rtol, atol=atol)
    torch.testing.assert_close(loss_f, loss_r, rtol=rtol, atol=atol)
    assert grads_f.keys() == grads_r.keys() and len(grads_r) == 2 * 3 * len(PROJ)
    for name, g in grads_r.items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(grads_f[name], g, rtol=rtol, atol=atol, msg=name)


def test_the_tiny_model_exercises_the_sliding_window():
    # a window shorter than the sequence changes the result: the tests below run both layer kinds
    ids = _ids()
    with torch.no_grad():
        assert not torch.allclose(_gemma(WINDOW)(ids).logits, _gemma(1000)(ids).logits, atol=1e-3)


@pytest.mark.parametrize("compiled", [False, True])
def test_split_halves_match_the_gemma_layer(compiled):
    """The sandwich-norm halves (post-attention norm, pre/post-feedforward norms), grouped q/k/v and
    gate/up, q/k norms and the per-layer sliding window equal Gemma3DecoderLayer's own forward."""
    ref = _peft()
    model = copy.deepcopy(ref)
    fuse_lora_linears(model)
    assert mark_recompute_skips(model) == 0  # the registry: not for Gemma's sandwich layers
    if compiled:
        compile_layers(model, backend="aot_eager")
    enable_offloaded_checkpointing(model.get_base_model(), split=layer_halves)
    assert checkpointing_mode(model.get_base_model()) == "offload (attention kept)"
    calls = {"attn": 0, "mlp": 0}
    for layer in find_decoder_layers(model):
        layer.self_attn.q_proj.register_forward_pre_hook(
            lambda *_: calls.__setitem__("attn", calls["attn"] + 1)
        )
        layer.mlp.gate_proj.register_forward_pre_hook(lambda *_: calls.__setitem__("mlp", calls["mlp"] + 1))
    _assert_same(model, ref, _ids(1))
    _assert_same(model, ref, _ids(2))
    if not compiled:  # attention once per layer and step, the MLP again in backward
        assert calls == {"attn": 2 * 3, "mlp": 2 * 6}


def test_split_halves_pass_each_layer_its_own_sliding_window():
    """SDPA gets the window through the per-layer mask; flash-attn and the varlen kernel read the
    attention's ``sliding_window`` argument: the halves pass what the layer's own forward passes
    (the window on sliding layers, None on full ones)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    seen: list[int | None] = []

    def probe(module, q, k, v, mask, sliding_window=None, **kwargs):
        seen.append(sliding_window)
        return sdpa_attention_forward(module, q, k, v, mask, **kwargs)

    AttentionInterface.register("legaltune_window_probe", probe)
    ref = _peft()
    ref.get_base_model().config._attn_implementation = "legaltune_window_probe"
    model = copy.deepcopy(ref)
    fuse_lora_linears(model)
    enable_offloaded_checkpointing(model.get_base_model(), split=layer_halves)
    for m in (ref, model):
        seen.clear()
        m.train()(input_ids=_ids(6)).logits.sum().backward()  # a training step: the halves run
        assert seen == [WINDOW, WINDOW, None], seen  # once a layer: the attention is not recomputed


def test_split_halves_differ_from_pre_norm_halves():
    # the sandwich halves are not the Llama ones: run as pre-norm, the result would differ
    from legaltune.speed import split_layer

    layer = find_decoder_layers(_peft())[0]
    attention, mlp = layer_halves(layer)
    assert (attention, mlp) == (split_layer.sandwich_attention_half, split_layer.sandwich_mlp_half)
    h = torch.randn(2, SEQ, 64)
    assert not torch.allclose(split_layer.mlp_half(layer, h), mlp(layer, h), atol=1e-3)


def test_speed_engine_on_gemma_matches_reference_and_names_what_it_skips():
    ref = _peft()
    fast = copy.deepcopy(ref)
    report = apply_speed(fast, mode="fast", kernels=True, compile=False)
    layers = find_decoder_layers(fast)
    # every Gemma RMSNorm (4 per layer, q/k norms, final) and every GeGLU MLP gets the kernel forward
    assert report.rms_norm == 3 * 6 + 1 and report.geglu == 3 and report.swiglu == 0
    for layer in layers:
        for norm in (
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ):
            assert kernel_kind(getattr(layer, norm)) == "rms_norm"
        assert kernel_kind(layer.self_attn.q_norm) == kernel_kind(layer.self_attn.k_norm) == "rms_norm"
        assert kernel_kind(layer.mlp) == "geglu"
    assert report.recompute_skips == 0
    (note,) = report.notes
    assert note.startswith("down_proj recompute skip: not applied to Gemma 3") and "MLP output" in note
    assert "GeGLU" in report.summary()
    _assert_same(fast, ref, _ids(3))  # on the CPU the kernel forwards dispatch to PyTorch's


def test_compiled_gemma_layers_match_reference():
    ref = _peft()
    fast = copy.deepcopy(ref)
    report = apply_speed(fast, mode="fast", kernels="auto", compile=True, compile_backend="aot_eager")
    assert report.compiled_layers == 3
    _assert_same(fast, ref, _ids(4), rtol=1e-4, atol=1e-5)
    _assert_same(fast, ref, _ids(5), rtol=1e-4, atol=1e-5)


def test_lm_head_covers_gemma3_with_a_tile_sized_to_its_vocabulary():
    model = _peft().get_base_model()
    assert head_covered(model)  # tied, frozen, no softcapping in Gemma 3
    model.config.final_logit_softcapping = 30.0  # Gemma 2's: TRL's head keeps it
    assert not head_covered(model)
    assert token_block(128_256) == 1024 and token_block(262_144) == 501 and token_block(49_152) == 1024
