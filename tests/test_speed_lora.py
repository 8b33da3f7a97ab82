"""The fused LoRA linear (legaltune.speed.lora_linear) against PEFT's own forward, on the CPU."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from legaltune.speed.lora_linear import fuse_lora_linears, is_fused, unfuse_lora_linears
from tests.conftest import loss_and_grads, make_tiny_llama, randomize_lora_b

PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _peft(dropout: float = 0.0, rslora: bool = False, dtype: torch.dtype = torch.float32, bias: bool = False):
    model = make_tiny_llama(97, layers=2, seed=3).to(dtype)
    if bias:  # a biased base layer (Qwen-style q/k/v)
        lin = model.model.layers[0].self_attn.q_proj
        lin.bias = torch.nn.Parameter(torch.randn(lin.out_features, dtype=dtype))
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules=PROJ, use_rslora=rslora)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, cfg)
    randomize_lora_b(peft_model, 0.05)
    return peft_model


# (dtype, atol, rtol) of logits and adapter gradients vs PEFT. fp32: same math, reordered sums.
# bf16: PEFT runs the adapters in fp32, the fused path in bf16 with fp32 gradient accumulation.
TOLERANCES = [(torch.float32, 2e-5, 1e-4), (torch.bfloat16, 3e-2, 5e-2)]


@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES)
@pytest.mark.parametrize("rslora,bias", [(False, False), (True, True)])
def test_fused_matches_peft(dtype, atol, rtol, rslora, bias):
    ref = _peft(rslora=rslora, dtype=dtype, bias=bias).train()
    fast = copy.deepcopy(ref)
    assert fuse_lora_linears(fast) == 2 * len(PROJ)
    ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(1))
    logits_r, loss_r, grads_r = loss_and_grads(ref, ids)
    logits_f, loss_f, grads_f = loss_and_grads(fast, ids)
    torch.testing.assert_close(logits_f, logits_r, atol=atol, rtol=rtol)
    torch.testing.assert_close(loss_f, loss_r, atol=atol, rtol=rtol)
    assert grads_f.keys() == grads_r.keys() and len(grads_r) == 4 * len(PROJ)
    for name, g in grads_r.items():
        assert grads_f[name].dtype == g.dtype, name  # fp32 adapters keep fp32 gradients
        scale = g.abs().max().item() + 1e-12
        err = (grads_f[name] - g).abs().max().item()
        assert err <= atol * 10 + rtol * scale, f"{name}: max|Δ| {err:.3g} vs max|g| {scale:.3g}"


def test_dropout_path_matches_peft_under_same_rng():
    ref = _peft(dropout=0.3).train()
    fast = copy.deepcopy(ref)
    fuse_lora_linears(fast)
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(2))
    torch.manual_seed(5)
    _, loss_r, grads_r = loss_and_grads(ref, ids)
    torch.manual_seed(5)
    _, loss_f, grads_f = loss_and_grads(fast, ids)
    torch.testing.assert_close(loss_f, loss_r, atol=2e-5, rtol=1e-4)
    for name, g in grads_r.items():
        torch.testing.assert_close(grads_f[name], g, atol=2e-5, rtol=1e-3)


def test_fused_falls_back_when_adapters_disabled_and_changes_the_output():
    fast = _peft().eval()
    fuse_lora_linears(fast)
    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        tuned = fast(input_ids=ids).logits
        with fast.disable_adapter():
            base = fast(input_ids=ids).logits
        ref_base = fast.get_base_model()  # same weights: compare with the adapters really off
    assert not torch.allclose(tuned, base, atol=1e-4), "disabling the adapters must change the output"
    unfuse_lora_linears(fast)
    with torch.no_grad(), fast.disable_adapter():
        torch.testing.assert_close(ref_base(input_ids=ids).logits, base)


def test_unfuse_restores_peft_forward_and_merge_still_works():
    model = _peft()
    n = fuse_lora_linears(model)
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    assert is_fused(layer)
    assert fuse_lora_linears(model) == 0  # idempotent
    assert unfuse_lora_linears(model) == n
    assert not is_fused(layer) and "forward" not in layer.__dict__
    ids = torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(4))
    fuse_lora_linears(model)
    with torch.no_grad():
        before = model(input_ids=ids).logits
        merged = model.merge_and_unload()
        torch.testing.assert_close(merged(input_ids=ids).logits, before, atol=1e-5, rtol=1e-4)


def test_other_instances_and_the_class_are_untouched():
    from peft.tuners.lora.layer import Linear

    a, b = _peft(), _peft()
    fuse_lora_linears(a)
    assert "forward" not in b.get_base_model().model.layers[0].self_attn.q_proj.__dict__
    assert Linear.forward.__qualname__ == "Linear.forward"


@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_trained_base_biases_keep_peft_forward_and_get_gradients(bias):
    model = make_tiny_llama(97, layers=1, seed=3)
    lin = model.model.layers[0].self_attn.q_proj
    lin.bias = torch.nn.Parameter(torch.randn(lin.out_features))
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], bias=bias))
    assert fuse_lora_linears(peft_model) == 0  # the fused node has no bias gradient: PEFT's path stays
    ids = torch.randint(0, 97, (1, 8), generator=torch.Generator().manual_seed(0))
    peft_model(input_ids=ids, labels=ids).loss.backward()
    assert lin.bias.grad is not None


def test_hooked_or_subclassed_bases_are_not_fused():
    class Scaled(torch.nn.Linear):  # a quantized-style subclass: its weight is not the whole story
        def forward(self, x):
            return super().forward(x) * 2

    model = make_tiny_llama(97, layers=1, seed=3)
    attn = model.model.layers[0].self_attn
    old = attn.v_proj
    attn.v_proj = Scaled(old.in_features, old.out_features, bias=False)
    attn.k_proj._hf_hook = object()  # what accelerate's offload hooks leave on a module
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj"]))
    assert fuse_lora_linears(peft_model) == 1  # q_proj only


@pytest.mark.parametrize("with_bias", [False, True])
def test_compile_op_passes_opcheck_and_matches_the_eager_function(with_bias):
    """The custom op used inside compiled layers: schema, fake (meta) shapes and autograd pass
    torch.library.opcheck, and its value and gradients equal the eager Function's."""
    from legaltune.speed.lora_linear import LoraLinearFunction
    from legaltune.speed.lora_op import lora_linear_op

    op = lora_linear_op()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 16, generator=gen, requires_grad=True)
    w, bias = torch.randn(12, 16, generator=gen), torch.randn(12, generator=gen) if with_bias else None
    a = torch.randn(4, 16, generator=gen, requires_grad=True)
    b = torch.randn(12, 4, generator=gen, requires_grad=True)
    torch.library.opcheck(op, (x, w, bias, a, b, 0.5, torch.float32, 12, False))
    out = op(x, w, bias, a, b, 0.5, torch.float32, 12, False)[0]
    ref = LoraLinearFunction.apply(x, None, w, None, bias, a, b, 0.5, torch.float32, 12, False)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    g = torch.randn(out.shape, generator=gen)
    for got, want in zip(
        torch.autograd.grad(out, (x, a, b), g), torch.autograd.grad(ref, (x, a, b), g), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def _compiled_step_graphs(*, split: bool) -> list:
    """The FX graphs dynamo hands the backend in one training step of a fused, compiled model
    (with ``split``: offload-checkpointed with attention/MLP halves)."""
    from legaltune.speed.compile import compile_layers
    from legaltune.speed.offload import enable_offloaded_checkpointing
    from legaltune.speed.split_layer import layer_halves

    graphs = []

    def backend(gm, example_inputs):  # noqa: ANN001, ANN202
        graphs.append(gm)
        return gm.forward

    fast = _peft().train()
    fuse_lora_linears(fast)
    assert compile_layers(fast, backend=backend) == 2
    if split:
        enable_offloaded_checkpointing(fast.get_base_model(), split=layer_halves)
    ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(1))
    fast(input_ids=ids, labels=ids).loss.backward()
    return graphs


def test_compiled_layer_calls_the_opaque_op_not_a_traced_addmm():
    """Traced, the Function's in-place addmm_ would become an out-of-place addmm (a full-size copy
    per projection on CUDA): compiled layers must contain the opaque op, once per projection."""
    graphs = _compiled_step_graphs(split=False)
    targets = [str(node.target) for gm in graphs for node in gm.graph.nodes if node.op == "call_function"]
    assert graphs and targets.count("legaltune.lora_linear.default") == len(PROJ) * len(graphs)
    assert not any("addmm" in t for t in targets)


def test_recompute_keeps_dequantized_4bit_weights_for_the_backward_that_follows(monkeypatch):
    # A 4-bit weight dequantized during a checkpoint recompute is reused by that layer's backward
    # (which follows at once) instead of being dequantized again; at most two are kept.
    from legaltune.speed import lora_math as ll
    from legaltune.speed import recompute

    dense = {}
    calls = []

    def fake_dequantize(weight, quant_state, dtype):
        calls.append(id(weight))
        return dense[id(weight)].to(dtype)

    monkeypatch.setattr(ll, "dequantize_nf4", fake_dequantize)
    monkeypatch.setattr(ll, "_RECOMPUTE_WEIGHTS", {})
    torch.manual_seed(0)
    weights = [torch.zeros(4, dtype=torch.uint8) for _ in range(3)]  # stand-ins for packed weights
    for w in weights:
        dense[id(w)] = torch.randn(6, 5)
    x, a, b, g = torch.randn(3, 5), torch.randn(2, 5), torch.randn(6, 2), torch.randn(3, 6)

    def forward(w):
        return ll.lora_forward(x, x, w, "nf4-state", None, a, b, 0.5, torch.float32, out_features=6)

    def backward(w, xa):
        args = (g, x, xa, w, "nf4-state", a, b, 0.5, torch.float32)
        return ll.lora_backward(*args, need_x=True, separate_lora_input=False)[0]

    out, xa = forward(weights[0])  # a plain forward keeps nothing
    assert calls == [id(weights[0])] and not ll._RECOMPUTE_WEIGHTS
    torch.testing.assert_close(out, x @ dense[id(weights[0])].t() + 0.5 * (x @ a.t()) @ b.t())
    expected = backward(weights[0], xa)  # dequantizes again
    assert len(calls) == 2
    with recompute.recomputing():
        xas = [forward(w)[1] for w in weights]
    assert len(calls) == 5 and len(ll._RECOMPUTE_WEIGHTS) == 2  # the first one was dropped
    torch.testing.assert_close(backward(weights[0], xas[0]), expected)
    assert len(calls) == 6  # not kept: dequantized again
    backward(weights[2], xas[2])
    backward(weights[1], xas[1])
    assert len(calls) == 6 and not ll._RECOMPUTE_WEIGHTS  # both reused, and released


@pytest.mark.parametrize("with_bias", [False, True, "all"])
def test_grouped_op_passes_opcheck_and_matches_its_members_one_by_one(with_bias):
    """q/k/v-style projections sharing an input, as one op: schema, fake shapes and autograd pass
    opcheck, and outputs and gradients (input, every A and B) equal the members' own fused ops."""
    from legaltune.speed.lora_group import lora_group_op
    from legaltune.speed.lora_op import lora_linear_op

    op, single = lora_group_op(), lora_linear_op()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 16, generator=gen, requires_grad=True)
    widths, ranks, scales = (12, 4, 4), (4, 4, 2), [0.5, 0.5, 2.0]
    ws = [torch.randn(n, 16, generator=gen) for n in widths]
    biases = [torch.randn(12, generator=gen) if with_bias else None, None, None]
    if with_bias == "all":  # Qwen2's q/k/v: every member biased
        biases = [torch.randn(n, generator=gen) for n in widths]
    a_s = [torch.randn(r, 16, generator=gen, requires_grad=True) for r in ranks]
    b_s = [torch.randn(n, r, generator=gen, requires_grad=True) for n, r in zip(widths, ranks, strict=True)]
    args = (x, ws, biases, a_s, b_s, scales, torch.float32, [None, None, None], [None, None, None])
    torch.library.opcheck(op, args)
    out = op(*args)[0]
    refs = [
        single(x, w, bias, a, b, s, torch.float32, n, False)[0]
        for w, bias, a, b, s, n in zip(ws, biases, a_s, b_s, scales, widths, strict=True)
    ]
    torch.testing.assert_close(out, torch.cat(refs, dim=-1), rtol=1e-6, atol=1e-6)
    g = torch.randn(out.shape, generator=gen)
    inputs = (x, *a_s, *b_s)
    got = torch.autograd.grad(out, inputs, g)
    want = torch.autograd.grad(refs, inputs, list(g.split(widths, dim=-1)))
    for name, u, v in zip(["x", "A_q", "A_k", "A_v", "B_q", "B_k", "B_v"], got, want, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5, msg=name)


def test_compiled_split_layers_group_qkv_and_gate_up():
    """In compiled halves, q/k/v and gate/up run as one grouped op each (two per layer); o_proj
    and down_proj stay single ops. Eager layers call the projections one by one."""
    graphs = _compiled_step_graphs(split=True)
    per_graph = [[str(n.target) for n in gm.graph.nodes if n.op == "call_function"] for gm in graphs]
    # the attention half (twice: the first layer's input needs no grad) and the MLP half: one group
    # (q/k/v or gate/up) and one single projection (o_proj or down_proj) each
    assert len(per_graph) == 3
    for targets in per_graph:
        assert targets.count("legaltune.lora_linear_group.default") == 1
        assert targets.count("legaltune.lora_linear.default") == 1
