"""LoRA over FP8 base weights on the CPU: the fused op, the grouped op and compiled layers against
PEFT's own forward over the same FP8 base, and the adapter gradients against the dense model."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from legaltune.speed import fp8
from legaltune.speed.fp8_linear import Fp8Linear, quantize_model_fp8
from legaltune.speed.lora_linear import fuse_lora_linears
from tests.conftest import loss_and_grads, make_tiny_llama, randomize_lora_b

PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _models(dtype: torch.dtype = torch.float32):
    """(PEFT over the dense model, PEFT over the same model with FP8 bases): equal adapters."""
    dense = make_tiny_llama(97, layers=2, seed=3).to(dtype)
    quantized = copy.deepcopy(dense)
    assert quantize_model_fp8(quantized) == 2 * len(PROJ)
    out = []
    for model in (dense, quantized):
        torch.manual_seed(0)
        peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=PROJ))
        randomize_lora_b(peft_model, 0.05, seed=1)
        out.append(peft_model.train())
    return out


def _ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(seed))


# (dtype, atol, rtol): the fused op against PEFT's forward over the same FP8 base — the same
# quantized GEMMs, so only the adapters' arithmetic differs (fp32 in PEFT, compute dtype fused)
# opcheck's schema test perturbs every input with a multiply, which CPU float8 tensors lack
OPCHECKS = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
SAME_BASE = [(torch.float32, 2e-5, 1e-4), (torch.bfloat16, 3e-2, 5e-2)]


@pytest.mark.parametrize("dtype,atol,rtol", SAME_BASE)
def test_fused_lora_over_fp8_matches_peft_over_the_same_fp8_base(dtype, atol, rtol):
    _dense, ref = _models(dtype)
    fast = copy.deepcopy(ref)
    assert fuse_lora_linears(fast) == 2 * len(PROJ)
    logits_r, loss_r, grads_r = loss_and_grads(ref, _ids())
    logits_f, loss_f, grads_f = loss_and_grads(fast, _ids())
    torch.testing.assert_close(logits_f, logits_r, atol=atol, rtol=rtol)
    torch.testing.assert_close(loss_f, loss_r, atol=atol, rtol=rtol)
    assert grads_f.keys() == grads_r.keys() and len(grads_r) == 4 * len(PROJ)
    for name, g in grads_r.items():
        assert grads_f[name].dtype == g.dtype == torch.float32, name  # fp32 adapters, fp32 gradients
        err, scale = (grads_f[name] - g).abs().max().item(), g.abs().max().item()
        assert err <= atol * 10 + rtol * scale, f"{name}: max|Δ| {err:.3g} vs max|g| {scale:.3g}"


def test_fp8_adapter_gradients_stay_close_to_the_dense_models():
    """What FP8 costs the adapters: their gradients against the same adapters over the dense fp32
    base (bf16 storage alone costs ~0.3 % per GEMM; FP8 ~3.7 %, measured in tests/test_fp8.py)."""
    dense, quantized = _models()
    fuse_lora_linears(quantized)
    _, loss_d, grads_d = loss_and_grads(dense, _ids(2))
    _, loss_q, grads_q = loss_and_grads(quantized, _ids(2))
    assert abs(loss_q.item() - loss_d.item()) / loss_d.item() < 0.01
    errors = {n: ((grads_q[n] - g).norm() / g.norm()).item() for n, g in grads_d.items()}
    assert max(errors.values()) < 0.15, max(errors.items(), key=lambda kv: kv[1])
    assert sum(errors.values()) / len(errors) < 0.06
    assert min(errors.values()) > 1e-4  # really through FP8 (a dense fallback would be ~1e-6)


@pytest.mark.parametrize("with_bias", [False, True])
def test_op_with_weight_scale_passes_opcheck_and_matches_the_eager_function(with_bias):
    from legaltune.speed.lora_linear import LoraLinearFunction
    from legaltune.speed.lora_op import lora_linear_op

    op = lora_linear_op()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 32, generator=gen, requires_grad=True)
    w8, ws = fp8.quantize_weight(torch.randn(16, 32, generator=gen))
    bias = torch.randn(16, generator=gen) if with_bias else None
    a = torch.randn(4, 32, generator=gen, requires_grad=True)
    b = torch.randn(16, 4, generator=gen, requires_grad=True)
    args = (x, w8, bias, a, b, 0.5, torch.float32, 16, False, ws)
    torch.library.opcheck(op, args, test_utils=OPCHECKS)
    out = op(*args)[0]
    ref = LoraLinearFunction.apply(x, None, w8, ws, bias, a, b, 0.5, torch.float32, 16, False)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    dense = fp8.dequantize_weight(w8, ws, torch.float32)
    assert (
        1e-3
        < (
            (out - (x @ dense.t() + 0.5 * (x @ a.t()) @ b.t() + (0 if bias is None else bias))).norm()
            / out.norm()
        )
        < 0.05
    )
    g = torch.randn(out.shape, generator=gen)
    for got, want in zip(
        torch.autograd.grad(out, (x, a, b), g), torch.autograd.grad(ref, (x, a, b), g), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kept_transposes", [False, True])
@pytest.mark.parametrize("kind", ["reference", "scaled_mm"])
def test_grouped_op_over_fp8_members_matches_them_one_by_one(kind, kept_transposes, fp8_backend):
    """Also with each weight's transpose kept (quantization.fp8_keep_transpose): the input gradient
    then reads it instead of transposing the weight, and must come out the same."""
    fp8_backend(kind)  # scaled_mm: the CPU kernel, with the CUDA layout rules on column slices
    from legaltune.speed.lora_group import lora_group_op
    from legaltune.speed.lora_op import lora_linear_op

    op, single = lora_group_op(), lora_linear_op()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 32, generator=gen, requires_grad=True)
    widths, ranks, scales = (32, 16, 16), (4, 4, 2), [0.5, 0.5, 2.0]
    quantized = [fp8.quantize_weight(torch.randn(n, 32, generator=gen)) for n in widths]
    ws, w_scales = [q[0] for q in quantized], [q[1] for q in quantized]
    a_s = [torch.randn(r, 32, generator=gen, requires_grad=True) for r in ranks]
    b_s = [torch.randn(n, r, generator=gen, requires_grad=True) for n, r in zip(widths, ranks, strict=True)]
    kept = [w.t().contiguous() for w in ws] if kept_transposes else [None] * 3
    args = (x, ws, [None] * 3, a_s, b_s, scales, torch.float32, w_scales, kept)
    torch.library.opcheck(op, args, test_utils=OPCHECKS)
    out = op(*args)[0]
    refs = [  # each member alone, never with a kept transpose: the reference computes it afresh
        single(x, w, None, a, b, s, torch.float32, n, False, sc)[0]
        for w, sc, a, b, s, n in zip(ws, w_scales, a_s, b_s, scales, widths, strict=True)
    ]
    torch.testing.assert_close(out, torch.cat(refs, dim=-1), rtol=1e-5, atol=1e-5)
    g = torch.randn(out.shape, generator=gen)
    inputs = (x, *a_s, *b_s)
    got = torch.autograd.grad(out, inputs, g)
    want = torch.autograd.grad(refs, inputs, list(g.split(widths, dim=-1)))
    for u, v in zip(got, want, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("split", [False, True])
def test_compiled_layers_over_fp8_call_the_ops_and_match_eager(split):
    """Compiled (aot_eager) layers over FP8 bases: the projections enter the graphs as the opaque
    ops (grouped in split halves), and loss and adapter gradients equal the eager fused model's."""
    from legaltune.speed.compile import compile_layers
    from legaltune.speed.offload import enable_offloaded_checkpointing
    from legaltune.speed.split_layer import layer_halves

    _dense, eager = _models()
    fuse_lora_linears(eager)
    compiled = copy.deepcopy(eager)
    graphs = []

    def backend(gm, example_inputs):  # noqa: ANN001, ANN202
        graphs.append(gm)
        return gm.forward

    assert compile_layers(compiled, backend=backend) == 2
    if split:
        enable_offloaded_checkpointing(compiled.get_base_model(), split=layer_halves)
    _, loss_e, grads_e = loss_and_grads(eager, _ids(3))
    _, loss_c, grads_c = loss_and_grads(compiled, _ids(3))
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-5)
    for name, g in grads_e.items():
        torch.testing.assert_close(grads_c[name], g, rtol=1e-4, atol=1e-5, msg=name)
    targets = [str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == "call_function"]
    ops = "legaltune.lora_linear_group.default" if split else "legaltune.lora_linear.default"
    assert graphs and targets.count(ops) >= len(graphs)
    assert not any("_scaled_mm" in t or "addmm" in t for t in targets)


def test_unadapted_fp8_projections_train_the_rest_and_speed_report_counts_them():
    """LoRA on q/v only: k/o/MLP stay plain Fp8Linear (their own autograd Function) and the
    gradient still flows through them to the adapters of earlier layers."""
    from legaltune.speed.apply import apply_speed

    model = make_tiny_llama(97, layers=2, seed=3)
    quantize_model_fp8(model)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    randomize_lora_b(peft_model, 0.05, seed=1)
    report = apply_speed(peft_model, mode="fast", compile=False)
    assert report.fused_lora == 4 and report.fp8_linears == 14
    assert "14 FP8 base linears (reference path" in report.summary()
    assert isinstance(peft_model.get_base_model().model.layers[0].mlp.down_proj, Fp8Linear)
    _, loss, grads = loss_and_grads(peft_model.train(), _ids(4))
    first_a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert torch.isfinite(loss) and grads[first_a].abs().sum() > 0
