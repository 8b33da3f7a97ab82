"""The speed engine in one call (legaltune.speed.apply) and through apply_lora, on the CPU.

Placement (which layers are compiled, which modules use the kernel forwards), equality with the
transformers + PEFT reference path (logits, loss, LoRA gradients), a short training run that must
follow the reference's loss curve, and the partial checkpointing policy of apply_lora.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model

from legaltune.config.schema import LoraConfig as LegalLoraConfig
from legaltune.config.schema import SpeedConfig
from legaltune.model.lora import apply_lora
from legaltune.speed.apply import apply_speed
from legaltune.speed.compile import is_compiled
from legaltune.speed.kernels import kernel_kind
from legaltune.speed.layers import find_decoder_layers
from legaltune.speed.lora_linear import fuse_lora_linears, is_fused
from legaltune.speed.offload import _offloaded_forward, checkpointed_layers, recompute_stats
from legaltune.speed.state import checkpointing_mode, speed_report
from tests.conftest import loss_and_grads, make_tiny_llama, randomize_lora_b

PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VOCAB = 97


def _peft(seed: int = 3, embed_scale: float = 1.0):
    model = make_tiny_llama(VOCAB, layers=2, seed=seed)
    if embed_scale != 1.0:
        # The tied embeddings (std 0.02) bound the logits of a 64-wide model to about ±1.3, too
        # flat to fit anything; scaled up, LoRA alone can learn the stream.
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(embed_scale)
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=PROJ)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, cfg)
    randomize_lora_b(peft_model, 0.05, seed=7)
    return peft_model


def _instance_forwards(model) -> set[str]:
    return {name for name, m in model.named_modules() if "forward" in m.__dict__}


def _assert_same_step(fast, ref, ids, *, atol: float, rtol: float) -> None:
    logits_r, loss_r, grads_r = loss_and_grads(ref, ids)
    logits_f, loss_f, grads_f = loss_and_grads(fast, ids)
    torch.testing.assert_close(logits_f, logits_r, atol=atol, rtol=rtol)
    torch.testing.assert_close(loss_f, loss_r, atol=atol, rtol=rtol)
    assert grads_f.keys() == grads_r.keys()
    assert len(grads_r) == 2 * 2 * len(PROJ)  # lora_A and lora_B of 7 projections in 2 layers
    assert all("lora_" in name for name in grads_r)
    for name, g in grads_r.items():
        assert g.abs().max() > 0, f"{name}: zero gradient, the comparison would prove nothing"
        torch.testing.assert_close(grads_f[name], g, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


def _ids(seed: int, shape=(2, 24)) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


# --- apply_speed ----------------------------------------------------------------------------------


def test_mode_off_changes_nothing():
    model = _peft()
    before = _instance_forwards(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = apply_speed(model, mode="off", kernels=True, compile=True, compile_backend="aot_eager")
    assert report.mode == "off"
    assert (report.fused_lora, report.rms_norm, report.swiglu, report.compiled_layers) == (0, 0, 0, 0)
    assert report.summary().startswith("speed: off")
    assert before == set() and _instance_forwards(model) == set()
    for module in model.modules():
        assert not is_fused(module) and kernel_kind(module) is None
    assert not any(is_compiled(layer) for layer in find_decoder_layers(model))
    after = model.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[k], v) for k, v in state.items())


def _fast_compiled():
    ref = _peft().train()
    fast = copy.deepcopy(ref)
    report = apply_speed(fast, mode="fast", kernels="auto", compile=True, compile_backend="aot_eager")
    return ref, fast, report


def test_fast_mode_compiles_every_layer_and_puts_kernels_only_outside_them():
    _, fast, report = _fast_compiled()
    for layer in find_decoder_layers(fast):
        # inductor fuses the norms and the gate itself: no kernel forwards inside compiled layers
        assert is_compiled(layer) and "forward" in layer.__dict__
        assert all(kernel_kind(m) is None for m in layer.modules())
    # the final norm sits outside the decoder layers and is not compiled: it gets the kernel
    assert kernel_kind(fast.get_base_model().model.norm) == "rms_norm"
    assert report.mode == "fast"
    assert report.fused_lora == 2 * len(PROJ)
    assert report.compiled_layers == 2
    assert (report.rms_norm, report.swiglu) == (1, 0)
    assert sum(is_fused(m) for m in fast.modules()) == report.fused_lora
    assert sum(kernel_kind(m) == "rms_norm" for m in fast.modules()) == report.rms_norm
    assert "2 compiled layers" in report.summary()


def test_fast_mode_without_compile_puts_kernels_in_every_layer():
    fast = _peft().train()
    report = apply_speed(fast, mode="fast", kernels="auto", compile=False)
    for layer in find_decoder_layers(fast):
        assert not is_compiled(layer)
        assert kernel_kind(layer.input_layernorm) == kernel_kind(layer.post_attention_layernorm) == "rms_norm"
        assert kernel_kind(layer.mlp) == "swiglu"
    assert (report.compiled_layers, report.rms_norm, report.swiglu) == (0, 5, 2)


def test_fast_mode_compiled_matches_reference():
    ref, fast, _ = _fast_compiled()
    _assert_same_step(fast, ref, _ids(1), atol=1e-5, rtol=1e-4)
    # a second step through the already compiled layer (no recompile on the same shapes)
    _assert_same_step(fast, ref, _ids(2), atol=1e-5, rtol=1e-4)


def test_fast_mode_eager_matches_reference_and_differs_without_adapters():
    ref = _peft().train()
    fast = copy.deepcopy(ref)
    report = apply_speed(fast, mode="fast", compile=False)
    assert report.compiled_layers == 0 and (report.rms_norm, report.swiglu) == (5, 2)
    assert not any(is_compiled(layer) for layer in find_decoder_layers(fast))
    ids = _ids(3)
    _assert_same_step(fast, ref, ids, atol=1e-5, rtol=1e-4)
    # the adapters matter: without them the logits move far beyond the tolerance above
    with torch.no_grad(), fast.disable_adapter():
        base_logits = fast(input_ids=ids).logits
        adapted = ref(input_ids=ids).logits
    assert (base_logits - adapted).abs().max() > 1e-2


# --- training -------------------------------------------------------------------------------------


def _phrase_batches(steps: int, *, batch: int = 4, seq: int = 24, seed: int = 11) -> list[torch.Tensor]:
    """A learnable stream: sequences made of a few fixed random phrases, in random order."""
    gen = torch.Generator().manual_seed(seed)
    phrases = torch.randint(0, VOCAB, (4, 6), generator=gen)
    per_seq = seq // phrases.shape[1]
    out = []
    for _ in range(steps):
        order = torch.randint(0, len(phrases), (batch, per_seq), generator=gen)
        out.append(phrases[order].reshape(batch, -1))
    return out


def _train(model, batches) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-3)
    losses = []
    for ids in batches:
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_fast_mode_training_follows_reference_loss_curve():
    batches = _phrase_batches(50)
    ref = _peft(embed_scale=3.0).train()
    fast = copy.deepcopy(ref)
    apply_speed(fast, mode="fast", compile=False)
    ref_losses = _train(ref, batches)
    fast_losses = _train(fast, batches)
    assert ref_losses[-1] < 0.7 * ref_losses[0], ref_losses
    assert ref_losses[-1] < 0.7 * math.log(VOCAB), ref_losses  # well below a uniform guess
    for step, (r, f) in enumerate(zip(ref_losses, fast_losses, strict=True)):
        assert abs(f - r) <= 0.02 * abs(r), f"step {step}: fast {f:.5f} vs reference {r:.5f}"


# --- apply_lora: speed engine + partial checkpointing -------------------------------------------------


def _lora_model(mode, checkpoint_layers):
    model = make_tiny_llama(VOCAB, layers=2, seed=5)
    cfg = LegalLoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=PROJ,
        use_rslora=False,
        use_gradient_checkpointing=mode,
        random_state=0,
    )
    peft_model = apply_lora(
        model,
        cfg,
        gradient_checkpointing=True,
        speed=SpeedConfig(mode="fast", compile=False),
        checkpoint_layers=checkpoint_layers,
    )
    randomize_lora_b(peft_model, 0.05, seed=7)
    return peft_model.train()


def _wrapped(model) -> list[bool]:
    return [
        getattr(layer.__dict__.get("forward"), "__func__", None) is _offloaded_forward
        for layer in find_decoder_layers(model)
    ]


@pytest.mark.parametrize(
    "mode,layers,expected",
    [("unsloth", 1, "offload 1/2"), (True, 1, "recompute 1/2"), ("unsloth", 0, "none")],
)
def test_apply_lora_records_partial_checkpointing(mode, layers, expected):
    model = _lora_model(mode, layers)
    base = model.get_base_model()
    assert checkpointing_mode(base) == expected
    report = speed_report(base)
    assert report.mode == "fast" and report.checkpointing == expected
    assert report.fused_lora == 2 * len(PROJ) and report.compiled_layers == 0
    assert checkpointed_layers(model) == layers
    assert _wrapped(model) == [True, False][:layers] + [False] * (2 - layers)
    # transformers' own checkpointing is not stacked on top
    assert not any(getattr(m, "gradient_checkpointing", False) for m in base.modules())


@pytest.mark.parametrize("mode", ["unsloth", True])
def test_partially_checkpointed_step_matches_unchecked(mode):
    ckpt = _lora_model(mode, 1)
    plain = _lora_model(mode, 0)
    assert checkpointed_layers(ckpt) == 1 and checkpointed_layers(plain) == 0
    # same weights: same base seed, same adapter seed, same lora_B values
    plain_state = plain.state_dict()
    for name, value in ckpt.state_dict().items():
        assert torch.equal(value, plain_state[name]), name

    calls = {"ckpt": [0, 0], "plain": [0, 0]}

    def counter(key, i):
        def hook(*_):
            calls[key][i] += 1

        return hook

    for key, model in (("ckpt", ckpt), ("plain", plain)):
        for i, layer in enumerate(find_decoder_layers(model)):
            layer.self_attn.register_forward_hook(counter(key, i))

    ids = _ids(4)
    _, loss_p, grads_p = loss_and_grads(plain, ids)
    assert recompute_stats(plain) is None and recompute_stats(ckpt).skips == 0
    _, loss_c, grads_c = loss_and_grads(ckpt, ids)
    # the checkpointed layer really ran again in backward; the other did not
    assert calls == {"ckpt": [2, 1], "plain": [1, 1]}
    # and its recompute skipped the down_proj GEMM (its output feeds nothing backward needs),
    # counted on this model's stats
    assert recompute_stats(ckpt).skips == 1
    torch.testing.assert_close(loss_c, loss_p, atol=1e-5, rtol=1e-5)
    assert grads_c.keys() == grads_p.keys() and len(grads_p) == 2 * 2 * len(PROJ)
    for name, g in grads_p.items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(grads_c[name], g, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_compiled_layers_run_eager_for_inference_and_compiled_for_training():
    """Generation (no grad, KV cache, growing lengths) must not go through the compiled graph."""
    from legaltune.speed.compile import compile_layers, uncompile_layers

    model = make_tiny_llama(97, layers=2, seed=4)
    layer = find_decoder_layers(model)[1]
    compile_layers(model, backend="aot_eager")
    calls = []
    compiled, owner, backend = layer.__dict__["_legaltune_compiled_fn"]
    counting = lambda *a, **k: calls.append(1) or compiled(*a, **k)  # noqa: E731
    layer.__dict__["_legaltune_compiled_fn"] = (counting, owner, backend)
    ids = torch.randint(0, 97, (1, 8), generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        eager_logits = model(input_ids=ids).logits
        model.generate(ids, max_new_tokens=3, do_sample=False)
    assert calls == []
    model.train()
    train_logits = model(input_ids=ids).logits
    assert calls == [1]
    torch.testing.assert_close(train_logits.detach(), eager_logits, atol=1e-5, rtol=1e-4)
    assert uncompile_layers(model) == 2 and "forward" not in layer.__dict__


def test_deep_copy_of_a_compiled_model_trains_its_own_layers():
    from legaltune.speed.compile import compile_layers

    model = get_peft_model(make_tiny_llama(97, layers=2, seed=5), LoraConfig(r=4, target_modules=["q_proj"]))
    compile_layers(model, backend="aot_eager")
    copy_ = copy.deepcopy(model).train()
    model.train()
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    copy_(input_ids=ids, labels=ids).loss.backward()
    copied = [p.grad for n, p in copy_.named_parameters() if p.requires_grad]
    original = [p.grad for n, p in model.named_parameters() if p.requires_grad]
    assert all(g is not None for g in copied), "the copy's adapters got no gradient"
    assert all(g is None for g in original), "the copy's step ran the original's layers"


def test_compile_decision_is_shared_by_the_engine_and_the_plan():
    from legaltune.speed.apply import resolve_compile
    from legaltune.speed.policy import compile_wanted

    assert compile_wanted("auto") and compile_wanted(True) and not compile_wanted(False)
    assert not resolve_compile("auto", on_cuda=False)  # auto needs a CUDA model with Triton
    assert resolve_compile(True, on_cuda=False)  # asked for explicitly: compiled


@pytest.mark.parametrize("offload", [True, False])
def test_checkpoint_around_compiled_layers_matches_reference(offload):
    """Checkpointing wraps the compiled forward (the recompute runs the compiled graph again):
    loss and adapter gradients equal the uncompiled, unchecked reference, over two steps."""
    from legaltune.speed.offload import enable_offloaded_checkpointing

    ref, fast, report = _fast_compiled()
    enable_offloaded_checkpointing(fast, offload=offload)
    assert report.compiled_layers == 2 and checkpointed_layers(fast) == 2
    assert all(is_compiled(layer) for layer in find_decoder_layers(fast))
    assert report.recompute_skips == 2
    _assert_same_step(fast, ref, _ids(1), atol=1e-5, rtol=1e-4)
    _assert_same_step(fast, ref, _ids(2), atol=1e-5, rtol=1e-4)
    assert recompute_stats(fast).skips == 2 * 2  # inside the compiled graph too: 2 layers x 2 steps


def test_recompute_skip_only_for_known_pre_norm_layers():
    """A decoder class not known to be pre-norm (Gemma-style layers normalise the MLP output, so
    its backward needs it) keeps computing down_proj in the recompute."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from legaltune.speed.lora_linear import mark_recompute_skips

    model = _peft().train()
    fuse_lora_linears(model)
    layers = find_decoder_layers(model)
    layers[1].__class__ = type("Gemma2DecoderLayer", (LlamaDecoderLayer,), {})
    assert mark_recompute_skips(model) == 1
    assert layers[0].mlp.down_proj.__dict__.get("_legaltune_skip_in_recompute") is True
    assert "_legaltune_skip_in_recompute" not in layers[1].mlp.down_proj.__dict__
