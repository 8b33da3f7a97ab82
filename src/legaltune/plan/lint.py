"""Lints: a config checked against seed 003's recommendations and against itself.

Each lint names the key, what it found, and *why* it matters, so that a user can decide; only
``error`` lints (the run cannot work) make ``legaltune plan`` exit non-zero.
"""

from __future__ import annotations

from legaltune.config.schema import RL_LEARNING_RATE
from legaltune.plan.distributed_lints import distributed_lints
from legaltune.plan.result import Lint, Plan

SEVEN = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def lint_plan(plan: Plan) -> list[Lint]:
    """All lints for a computed plan (config, arch, steps and memory estimate)."""
    cfg = plan.config
    lo, tr, m = cfg.lora, cfg.training, cfg.model
    out: list[Lint] = []

    def add(level: str, key: str, message: str, reason: str) -> None:
        out.append(Lint(level, key, message, reason))

    lr = tr.learning_rate
    if tr.method != "sft":
        if not RL_LEARNING_RATE / 10 <= lr <= RL_LEARNING_RATE * 10:
            add(
                "warn",
                "training.learning_rate",
                f"{lr:g} for {tr.method} is outside {RL_LEARNING_RATE / 10:g}…{RL_LEARNING_RATE * 10:g}",
                f"seed 003: {RL_LEARNING_RATE:g} for reinforcement learning (DPO, GRPO); an SFT-sized rate moves "
                "the policy far from the SFT adapter within a few steps, a much smaller one barely moves it",
            )
    elif not 5e-6 <= lr <= 2e-4:
        add(
            "warn",
            "training.learning_rate",
            f"{lr:g} is outside 5e-6…2e-4",
            "seed 003: 2e-4 is the starting point for LoRA/QLoRA; higher rates risk divergence, lower ones barely move the adapter",
        )
    if tr.max_steps <= 0 and tr.num_train_epochs > 3:
        add(
            "warn",
            "training.num_train_epochs",
            f"{tr.num_train_epochs:g} epochs",
            "seed 003: 1–3 epochs; more gives diminishing returns and overfits (watch eval loss rising while train loss falls)",
        )
    if lo.lora_alpha not in (lo.r, 2 * lo.r):
        add(
            "warn",
            "lora.lora_alpha",
            f"alpha {lo.lora_alpha:g} with r {lo.r}",
            "seed 003: alpha = r (standard) or 2·r",
        )
    if lo.lora_dropout > 0:
        add(
            "info",
            "lora.lora_dropout",
            f"dropout {lo.lora_dropout:g}",
            "seed 003: 0 by default (little benefit); it also costs an extra pass over the adapter inputs",
        )
    if lo.r not in (16, 32):
        add("info", "lora.r", f"rank {lo.r}", "seed 003: 8–128 works; 16 or 32 is the recommended choice")
    if lo.use_rslora and lo.r < 64:
        add(
            "warn",
            "lora.use_rslora",
            f"rsLoRA with r={lo.r}: scale alpha/√r = {plan.lora_scale:g} instead of alpha/r = {lo.lora_alpha / lo.r:g}",
            "rsLoRA pays off at high rank (seed 000: r ≥ 64); at small r it multiplies the effective learning rate",
        )
    targets = set(plan.targets)
    if not SEVEN <= targets:
        missing = sorted(SEVEN - targets)
        add(
            "info",
            "lora.target_modules",
            f"not adapted: {', '.join(missing)}",
            "seed 003: target all 7 linear projections (attention and MLP) for the best quality",
        )
    if cfg.training.weight_decay > 0.1:
        add(
            "warn",
            "training.weight_decay",
            f"{cfg.training.weight_decay:g}",
            "seed 003: 0.01 recommended, at most 0.1",
        )
    eff = plan.effective_batch
    if not 4 <= eff <= 64:
        add(
            "warn",
            "training.gradient_accumulation_steps",
            f"effective batch {eff} (= {tr.per_device_train_batch_size} × {tr.gradient_accumulation_steps} × {plan.world_size} GPU)",
            "seed 003: 4–16, recommended 16 (2 × 8); far larger batches take few optimizer steps per epoch",
        )
    if plan.total_steps is not None:
        if plan.warmup_steps >= plan.total_steps:
            add(
                "error",
                "training.warmup_steps",
                f"warm-up {plan.warmup_steps} ≥ total steps {plan.total_steps}",
                "the learning rate would never reach its peak; "
                + (
                    "set training.warmup_ratio: 0.05 instead of warmup_steps"
                    if tr.warmup_ratio is None and plan.total_steps > 1
                    else "set training.warmup_steps: 0 (too few steps to warm up), or train on more data"
                ),
            )
        elif not 0.05 <= plan.warmup_fraction <= 0.10:
            add(
                "warn",
                "training.warmup_steps",
                f"warm-up is {plan.warmup_fraction:.1%} of {plan.total_steps} steps",
                "seed 003: 5–10 % of total steps (warmup_ratio 0.05–0.1)",
            )
    tokens = tr.per_device_train_batch_size * m.max_seq_length
    if tokens > 65536:
        split = cfg.speed.mode == "auto" and cfg.speed.forward_tokens is not False and tr.method == "sft"
        add(
            "info" if split else "warn",
            "training.per_device_train_batch_size",
            f"{tr.per_device_train_batch_size} × {m.max_seq_length} = {tokens:,} tokens per micro-batch on one GPU",
            (
                "legaltune train runs a padding-free micro-batch this large as several forwards of its whole "
                "examples where it would need checkpointing (speed.forward_tokens: auto; same gradient); "
                "elsewhere its activations grow with its tokens"
            )
            if split
            else "activations and logits grow with tokens per micro-batch; lower the batch and raise "
            "gradient_accumulation_steps",
        )
    if cfg.data.packing and m.attn_implementation == "eager":
        add(
            "error",
            "data.packing",
            "packing with eager attention",
            "eager attention in legaltune's packed rows would need a [seq × seq] block mask per row; use sdpa, "
            "flash_attention_2 or flex_attention, which keep packed examples apart through per-example position ids",
        )
    if m.max_seq_length > plan.arch.max_positions > 0:
        add(
            "error",
            "model.max_seq_length",
            f"{m.max_seq_length} exceeds the model's {plan.arch.max_positions} positions",
            "the model was not trained on positions that far; lower max_seq_length",
        )
    if (cfg.quantization.load_in_4bit or cfg.quantization.load_in_8bit) and m.dtype == "float32":
        add(
            "warn",
            "model.dtype",
            "float32 compute with a quantized base",
            "bfloat16 is as accurate here and halves activations",
        )
    if cfg.quantization.load_in_fp8 and m.dtype in ("float16", "float32"):
        add(
            "warn",
            "model.dtype",
            f"load_in_fp8 with {m.dtype} compute",
            "on a GPU the FP8 GEMMs write bfloat16 and the load stops; set model.dtype: bfloat16 (or auto). "
            "A CPU runs the dequantizing reference path in any dtype",
        )
    if plan.gpu_bytes is not None and not plan.memory.fits(plan.gpu_bytes):
        add(
            "error",
            "memory",
            f"estimated {plan.memory.peak_bytes / 2**30:.1f} GiB (+1 GiB context) does not fit {plan.gpu_bytes / 2**30:.0f} GiB",
            "lower per_device_train_batch_size or max_seq_length, turn on checkpointing, or load_in_4bit",
        )
    out.extend(distributed_lints(plan))
    return out
