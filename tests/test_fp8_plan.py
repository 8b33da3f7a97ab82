"""`legaltune plan` with quantization.load_in_fp8: FP8 weight bytes and the GEMM transients."""

from __future__ import annotations

import pytest

from legaltune.config.load import build_config
from legaltune.model.arch import load_arch
from legaltune.plan.core import make_plan
from legaltune.plan.memory import GIB, fp8_transient_bytes

SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _plan(fp8: bool, checkpointing: bool | str = "unsloth", mode: str = "fast", keep_transpose: bool = False):
    return make_plan(
        build_config(
            {
                "model": {"max_seq_length": 2048},
                "quantization": {"load_in_fp8": fp8, "fp8_keep_transpose": keep_transpose},
                "lora": {"target_modules": SEVEN, "use_gradient_checkpointing": checkpointing},
                "training": {"per_device_train_batch_size": 4},
                "speed": {"mode": mode},
            }
        )
    )


def _weights(plan) -> tuple[str, float]:
    (name,) = [k for k in plan.memory.components if k.startswith("weights")]
    return name, plan.memory.components[name]


def test_fp8_weights_are_one_byte_per_projection_weight_plus_channel_scales():
    arch = load_arch("unsloth/Llama-3.1-8B-Instruct")
    shapes = arch.linear_shapes().values()
    linear = arch.layers * sum(i * o for i, o in shapes)
    rows = arch.layers * sum(o for _, o in shapes)
    bf16_name, bf16 = _weights(_plan(False))
    fp8_name, fp8 = _weights(_plan(True))
    rest = bf16 - 2 * linear  # embeddings, norms, LM head: still bf16
    assert fp8 == pytest.approx(linear + 4 * rows + rest)
    assert "FP8" in fp8_name and "FP8" not in bf16_name
    # Llama-3.1-8B: 14.96 GiB of bf16 weights, 8.46 GiB with FP8 projections
    assert bf16 / GIB == pytest.approx(14.96, abs=0.01) and fp8 / GIB == pytest.approx(8.46, abs=0.01)


def test_fp8_transients_are_counted_and_the_peak_drops_by_the_weight_saving():
    bf16, fp8 = _plan(False), _plan(True)
    key = "FP8 GEMM transients (quantized activations, transposed weight)"
    assert key in fp8.memory.components and key not in bf16.memory.components
    arch = fp8.arch
    tokens = 2048 * 4
    # backward's, the larger: gate/up's gradient (14,336 wide, 1 byte + one fp32 scale per token)
    # and the transposed copy of their 14,336 × 4,096 weight
    assert fp8_transient_bytes(arch, tokens) == tokens * (14336 + 4) + 14336 * 4096
    saving = _weights(bf16)[1] - _weights(fp8)[1]
    drop = bf16.memory.peak_bytes - fp8.memory.peak_bytes
    assert drop == pytest.approx(saving - fp8.memory.components[key])
    assert 6.0 < drop / GIB < 6.5
    assert fp8.to_dict()["memory"]["peak_gib"] < bf16.to_dict()["memory"]["peak_gib"] - 6


def test_speed_auto_checkpoints_fewer_layers_with_fp8_weights():
    """speed.mode auto on an 80 GiB GPU at 2048×4 (no offload needed for either at this size) and a
    40 GiB budget: the ~6.5 GiB saved by FP8 weights lets auto keep more layers un-checkpointed."""

    def layers(fp8: bool) -> int:
        cfg = build_config(
            {
                "model": {"max_seq_length": 2048},
                "quantization": {"load_in_fp8": fp8},
                "lora": {"target_modules": SEVEN},
                "training": {"per_device_train_batch_size": 4},
                "speed": {"mode": "auto", "gpu_memory_gb": 40},
            }
        )
        return make_plan(cfg).checkpoint_layers

    assert layers(True) < layers(False)


def test_fp8_with_fp16_compute_is_a_lint():
    plan = make_plan(build_config({"quantization": {"load_in_fp8": True}, "model": {"dtype": "float16"}}))
    (lint,) = [x for x in plan.lints if x.key == "model.dtype"]
    assert lint.level == "warn" and "load_in_fp8" in lint.message and "model.dtype: bfloat16" in lint.reason
    assert not [x for x in _plan(True).lints if x.key == "model.dtype"]


def test_kept_transposes_add_a_byte_per_weight_and_leave_the_transient_copy_out():
    """quantization.fp8_keep_transpose: the weights grow by one byte per projection weight (7 GiB
    for Llama-3.1-8B); the backward no longer makes its transient transposed copy."""
    plain, kept = _plan(True), _plan(True, keep_transpose=True)
    arch = kept.arch
    linear = arch.layers * sum(i * o for i, o in arch.linear_shapes().values())
    assert _weights(kept)[1] - _weights(plain)[1] == pytest.approx(linear)
    assert "kept transposes" in _weights(kept)[0]
    assert "FP8 GEMM transients (quantized activations)" in kept.memory.components
    tokens = 2048 * 4
    assert fp8_transient_bytes(arch, tokens, keep_transpose=True) == tokens * (14336 + 4)
    assert kept.memory.peak_bytes - plain.memory.peak_bytes == pytest.approx(linear - 14336 * 4096)
