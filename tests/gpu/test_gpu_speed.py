"""GPU checks of the speed engine against the PyTorch/PEFT reference (``pytest -m gpu``).

Every fast path is compared with the reference for forward and backward across a
(dtype, atol, rtol) table, and a 50-step convergence run compares the loss curves.
"""

from __future__ import annotations

import copy
import importlib.util
import json

import pytest
import torch
from peft import LoraConfig, get_peft_model

from legaltune.speed.apply import apply_speed
from legaltune.speed.compile import compile_layers
from legaltune.speed.kernels import apply_kernels, kernel_kind
from legaltune.speed.lora_linear import fuse_lora_linears
from tests.conftest import loss_and_grads, loss_curve, phrase_batches, randomize_lora_b
from tests.gpu.test_gpu_model import random_llama

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
needs_liger = pytest.mark.skipif(
    importlib.util.find_spec("liger_kernel") is None, reason="liger-kernel missing"
)
needs_bnb = pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes missing"
)
PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _llama(layers: int = 2, hidden: int = 512, dtype=torch.bfloat16, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=1024,
        hidden_size=hidden,
        intermediate_size=hidden * 7 // 2,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 128,
        max_position_embeddings=4096,
        use_cache=False,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg).to("cuda", dtype)


def _lora(model, seed: int = 0):
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=PROJ))
    randomize_lora_b(peft_model, 0.02)
    return peft_model


def _assert_grads_close(fast, ref, rel: float):
    for name, g in ref.items():
        err = (fast[name] - g).norm().item()
        assert err <= rel * g.norm().item() + 1e-6, f"{name}: ‖Δ‖ {err:.3g} vs ‖g‖ {g.norm().item():.3g}"


# (dtype, atol on logits, rtol on logits, relative L2 error of adapter gradients)
TABLE = [(torch.float32, 1e-4, 1e-4, 1e-4), (torch.bfloat16, 0.06, 0.05, 0.03)]


@pytest.mark.parametrize("dtype,atol,rtol,grad_rel", TABLE)
def test_fused_lora_cuda_matches_peft(dtype, atol, rtol, grad_rel):
    ref = _lora(_llama(dtype=dtype)).train()
    fast = copy.deepcopy(ref)
    fuse_lora_linears(fast)
    ids = torch.randint(0, 1024, (2, 256), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    logits_r, loss_r, grads_r = loss_and_grads(ref, ids)
    logits_f, loss_f, grads_f = loss_and_grads(fast, ids)
    torch.testing.assert_close(logits_f, logits_r, atol=atol, rtol=rtol)
    torch.testing.assert_close(loss_f, loss_r, atol=atol / 10, rtol=rtol / 10)
    _assert_grads_close(grads_f, grads_r, grad_rel)


@needs_bnb
def test_fused_lora_nf4_matches_bitsandbytes(tmp_path):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    path = random_llama(tmp_path / "m", hidden=512, layers=2, vocab=512)
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    base = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.bfloat16, quantization_config=quant, device_map={"": 0}
    )
    ref = _lora(base).train()
    fast = copy.deepcopy(ref)
    assert fuse_lora_linears(fast) == 2 * len(PROJ)
    ids = torch.randint(0, 512, (2, 128), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    logits_r, loss_r, grads_r = loss_and_grads(ref, ids)
    logits_f, loss_f, grads_f = loss_and_grads(fast, ids)
    torch.testing.assert_close(logits_f, logits_r, atol=0.06, rtol=0.05)
    torch.testing.assert_close(loss_f, loss_r, atol=5e-3, rtol=5e-3)
    _assert_grads_close(grads_f, grads_r, 0.03)


@needs_bnb
@pytest.mark.parametrize("nested", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_triton_nf4_dequantize_is_bitwise_bitsandbytes(nested, dtype):
    import bitsandbytes.functional as bnbf

    from legaltune.speed.nf4 import dequantize_nf4, triton_nf4_supported

    torch.manual_seed(0)
    # Llama-3.1-8B's k/v and gate shapes scaled down, and one ending in a partial block
    for shape in [(1024, 4096), (1792, 512), (3, 64 * 5 + 32)]:
        w = torch.randn(shape, device="cuda", dtype=dtype) * 0.02
        packed, state = bnbf.quantize_4bit(w, quant_type="nf4", compress_statistics=nested, blocksize=64)
        assert triton_nf4_supported(packed, state, dtype)
        ref = bnbf.dequantize_4bit(packed, state).to(dtype)
        out = dequantize_nf4(packed, state, dtype)
        assert out.shape == ref.shape and out.dtype == ref.dtype
        assert torch.equal(out, ref), f"{shape}: max |diff| {(out.float() - ref.float()).abs().max().item()}"
        # FP4 and other dtypes are left to bitsandbytes
        assert not triton_nf4_supported(packed, state, torch.float64)
    # after the first shape, the others ran through the direct launch of the compiled kernel
    from legaltune.speed import nf4

    assert any(kernel is not None for kernel in nf4._COMPILED.values())


@needs_bnb
@pytest.mark.parametrize("offload", [False, True])
def test_compiled_nf4_layers_match_eager_without_keeping_dequantized_weights(tmp_path, offload):
    """4-bit bases under torch.compile: the fused LoRA op dequantizes inside, so the compiled
    layers give the eager values and keep no dequantized weight alive between forward and
    backward (a traced dequantize kept them all: 53.5 vs 40.4 GiB for Llama-3.1-8B). With
    offloaded checkpointing the recompute also skips the down_proj GEMM."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from legaltune.speed.lora_linear import mark_recompute_skips
    from legaltune.speed.offload import enable_offloaded_checkpointing, recompute_stats

    torch._dynamo.reset()
    path = random_llama(tmp_path / "m", hidden=1024, layers=4, vocab=512)
    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )
    base = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.bfloat16, quantization_config=quant, device_map={"": 0}
    )
    ref = _lora(base).train()
    fuse_lora_linears(ref)
    fast = copy.deepcopy(ref)
    assert compile_layers(fast) == 4
    if offload:
        assert mark_recompute_skips(fast) == 4
        enable_offloaded_checkpointing(fast)
    ids = torch.randint(0, 512, (2, 512), device="cuda", generator=torch.Generator("cuda").manual_seed(4))
    logits_r, _, grads_r = loss_and_grads(ref, ids)
    loss_and_grads(fast, ids)  # compile

    def kept_by_forward(model) -> int:
        """Bytes a forward leaves allocated for backward (then runs that backward)."""
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        out = model(input_ids=ids, labels=ids)
        kept = torch.cuda.memory_allocated() - before
        out.loss.backward()
        return kept

    eager_kept = kept_by_forward(ref)

    def skips() -> int:  # this model's recomputes so far (none without legaltune's checkpointing)
        stats = recompute_stats(fast)
        return stats.skips if stats is not None else 0

    before = skips()
    fast_kept = kept_by_forward(fast)
    skipped = skips() - before  # in that one step's recomputes
    logits_f, _, grads_f = loss_and_grads(fast, ids)
    torch.testing.assert_close(logits_f, logits_r, atol=0.06, rtol=0.05)
    _assert_grads_close(grads_f, grads_r, 0.03)
    dense = sum(m.weight.numel() * 4 for m in fast.modules() if getattr(m, "quant_state", None) is None and getattr(getattr(m, "weight", None), "quant_state", None) is not None)  # fmt: skip
    print(f"offload={offload}: forward keeps {fast_kept / 2**20:.0f} MiB compiled, {eager_kept / 2**20:.0f} MiB eager; dense projections {dense / 2**20:.0f} MiB")  # fmt: skip
    # eager dequantizes just in time and keeps none: compiled must not keep them either
    assert fast_kept < eager_kept * 1.1 + 2**20
    assert skipped == (4 if offload else 0)


@needs_liger
@pytest.mark.parametrize("dtype,atol,rtol,grad_rel", TABLE)
def test_liger_kernels_on_instance_match_pytorch(dtype, atol, rtol, grad_rel):
    ref = _lora(_llama(dtype=dtype)).train()
    fast = copy.deepcopy(ref)
    counts = apply_kernels(fast)
    assert counts == {"rms_norm": 2 * 2 + 1, "swiglu": 2, "geglu": 0}
    assert kernel_kind(fast.get_base_model().model.norm) == "rms_norm"
    assert kernel_kind(ref.get_base_model().model.norm) is None  # the other instance is untouched
    ids = torch.randint(0, 1024, (2, 256), device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    logits_r, loss_r, grads_r = loss_and_grads(ref, ids)
    logits_f, loss_f, grads_f = loss_and_grads(fast, ids)
    torch.testing.assert_close(logits_f, logits_r, atol=atol, rtol=rtol)
    _assert_grads_close(grads_f, grads_r, grad_rel)


@needs_liger
@pytest.mark.parametrize("dtype,atol,rtol,grad_rel", TABLE)
def test_liger_gemma3_kernels_match_pytorch(dtype, atol, rtol, grad_rel):
    """Gemma 3: RMSNorm (1 + w) in fp32 on the four layer norms, the q/k norms and the final one,
    and the GELU-tanh-gated MLP, through Liger, against the model's own PyTorch forward."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=1024, hidden_size=512, intermediate_size=1536, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=128, sliding_window=64, layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=4096, use_cache=False, attn_implementation="sdpa",
    )  # fmt: skip
    base = Gemma3ForCausalLM(config)
    with torch.no_grad():  # norms start at 0 (scale 1 + w): make the weight matter
        for name, p in base.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)
    ref = _lora(base.to("cuda", dtype)).train()
    fast = copy.deepcopy(ref)
    counts = apply_kernels(fast)
    assert counts == {"rms_norm": 2 * 6 + 1, "swiglu": 0, "geglu": 2}
    ids = torch.randint(0, 1024, (2, 256), device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    logits_r, loss_r, grads_r = loss_and_grads(ref, ids)
    logits_f, loss_f, grads_f = loss_and_grads(fast, ids)
    torch.testing.assert_close(logits_f, logits_r, atol=atol, rtol=rtol)
    _assert_grads_close(grads_f, grads_r, grad_rel)


@pytest.mark.parametrize("kernels", [False, True] if importlib.util.find_spec("liger_kernel") else [False])
def test_compiled_layers_match_eager_and_share_one_graph(kernels):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    ref = _lora(_llama(layers=4)).train()
    fuse_lora_linears(ref)
    if kernels:
        apply_kernels(ref)
    fast = copy.deepcopy(ref)
    assert compile_layers(fast) == 4
    ids = torch.randint(0, 1024, (2, 256), device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    logits_r, _, grads_r = loss_and_grads(ref, ids)
    logits_f, _, grads_f = loss_and_grads(fast, ids)
    torch.testing.assert_close(logits_f, logits_r, atol=0.06, rtol=0.05)
    _assert_grads_close(grads_f, grads_r, 0.03)
    graphs = counters["stats"]["unique_graphs"]
    print(f"kernels={kernels}: dynamo unique graphs for 4 layers: {graphs}")
    assert graphs <= 2 * (1 + kernels) + 2, f"{graphs} graphs: layers are not sharing the compiled code"


def test_fifty_steps_fast_vs_reference_loss_curves_within_2_percent():
    """Convergence: the whole speed engine vs transformers + PEFT, same data, seed and init."""
    ref = _lora(_llama(layers=4, seed=7), seed=7).train()
    fast = copy.deepcopy(ref)
    report = apply_speed(fast, mode="fast")
    assert report.fused_lora == 4 * len(PROJ)
    batches = phrase_batches(50, 1024)
    ref_curve, fast_curve = (loss_curve(model, batches) for model in (ref, fast))
    assert ref_curve[-1] < 0.7 * ref_curve[0], "the reference did not learn; the comparison would be empty"
    worst = max(abs(f - r) / r for f, r in zip(fast_curve, ref_curve, strict=True))
    print(f"loss {ref_curve[0]:.3f} → {ref_curve[-1]:.3f}; worst relative gap {worst:.4f}")
    assert worst <= 0.02, f"fast path's loss curve departs from the reference by {worst:.1%}"


def _tokenizer_dir():
    """The embedded model's tokenizer: LEGALTUNE_GPU_TOKENIZER, .gpu_tok/ (carried to the GPU
    machine, which cannot fetch the embedded model), or the local embedded model."""
    import os
    from pathlib import Path

    for cand in (os.environ.get("LEGALTUNE_GPU_TOKENIZER"), ".gpu_tok"):
        if cand and (Path(cand) / "tokenizer.json").is_file():
            return Path(cand)
    from legaltune.model.embedded import embedded_model_dir

    path = embedded_model_dir()
    if not (path / "tokenizer.json").is_file():
        pytest.skip("no tokenizer: copy the embedded model's tokenizer files to .gpu_tok/")
    return path


@pytest.mark.parametrize("ckpt", [False, "unsloth"])
def test_legaltune_train_speed_auto_matches_speed_off_on_gpu(tmp_path, ckpt):
    """The product path end to end (SFTTrainer, TRL's chunked head, autocast): speed auto vs off."""
    from transformers import AutoTokenizer

    from legaltune.train.trainer import run_training
    from tests.test_train import base_cfg

    tok = AutoTokenizer.from_pretrained(str(_tokenizer_dir()))
    results = {}
    for mode in ("off", "auto"):
        cfg = base_cfg(
            tmp_path / mode,
            model={"device_map": "auto"},
            lora={"target_modules": PROJ, "use_gradient_checkpointing": ckpt, "r": 8, "lora_alpha": 16},
            optimization={"gradient_checkpointing": ckpt is not False},
            training={"max_steps": 20, "learning_rate": 2e-3},
            speed={"mode": mode},
        )
        model = _llama(layers=4, hidden=512, dtype=torch.bfloat16, seed=1)
        model.resize_token_embeddings(len(tok))
        res = run_training(cfg, model_and_tokenizer=(model, tok), show_progress=False)
        losses = [
            json.loads(line)["loss"]
            for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in line and "eval" not in line
        ]
        summary = json.loads((res.run_dir / "train_summary.json").read_text())
        results[mode] = (losses, summary["speed"])
    (off, off_speed), (fast, fast_speed) = results["off"], results["auto"]
    print(f"ckpt={ckpt}: off {off[0]:.3f}→{off[-1]:.3f}  auto {fast[0]:.3f}→{fast[-1]:.3f}  {fast_speed}")
    assert off_speed["fused_lora"] == 0 and fast_speed["fused_lora"] == 4 * len(PROJ)
    # no offline architecture for this test model: auto keeps the configured checkpointing
    # on CUDA, offload keeps the attention half of Llama layers (speed.offload_attention: auto)
    assert fast_speed["checkpointing"] == ("none" if ckpt is False else "offload (attention kept)")
    assert off[-1] < off[0]
    assert abs(fast[-1] - off[-1]) / off[-1] < 0.05 and abs(fast[0] - off[0]) / off[0] < 0.01


@pytest.mark.parametrize("dtype,lp_atol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_lm_head_gradient_in_forward_matches_trls_head(dtype, lp_atol):
    """speed/lm_head.py on CUDA (its Triton row kernel): the outputs and loss of TRL's fused head,
    and adapter gradients as close to an fp32 reference as TRL's own head gets, with a vocabulary
    over several row blocks and rows over several token blocks."""
    from trl.trainer.utils import add_fused_lm_head

    from legaltune.speed import lm_head

    def build(dt):  # noqa: ANN001, ANN202
        base = _llama(dtype=torch.float32)
        base.resize_token_embeddings(9000)  # > 2 row blocks of the kernel, not a multiple of one
        add_fused_lm_head(base.to(dt), outputs=("log_probs", "entropy", "is_top1"))
        return _lora(base).train()

    ref32, ref = build(torch.float32), build(dtype)
    ours = copy.deepcopy(ref)
    assert lm_head.fuse_lm_head(ours.get_base_model())
    ids = torch.randint(0, 9000, (3, 700), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    labels = ids.clone()
    labels[:, :50] = -100
    results = []
    for model in (ref32, ref, ours):
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        out.loss.backward()
        grads = {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}
        results.append((out, grads))
    (_, exact), (ref_out, ref_grads), (out, grads) = results
    assert lm_head._covered(ours.get_base_model(), {})  # the Triton path ran, not TRL's
    torch.testing.assert_close(out.log_probs, ref_out.log_probs, atol=lp_atol, rtol=0)
    torch.testing.assert_close(out.entropy, ref_out.entropy, atol=lp_atol * 5, rtol=1e-3)
    torch.testing.assert_close(out.loss, ref_out.loss, atol=lp_atol, rtol=1e-4)
    # argmax ties/near-ties may flip in bf16; nearly all positions agree
    assert (out.is_top1 == ref_out.is_top1).float().mean() > 0.999
    for name, g in exact.items():
        ours_err = ((grads[name] - g).norm() / g.norm()).item()
        trl_err = ((ref_grads[name] - g).norm() / g.norm()).item()
        print(f"{name}: ours {ours_err:.3g}, TRL's {trl_err:.3g} from fp32")
        assert ours_err <= 1.5 * trl_err + 5e-4, (
            f"{name}: ours {ours_err:.3g} vs TRL's {trl_err:.3g} from fp32"
        )
