"""`legaltune plan`: what a config will do, before any weight is loaded."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from legaltune.config.schema import Config
from legaltune.errors import InputError
from legaltune.model.arch import Arch, load_arch
from legaltune.plan.lint import lint_plan
from legaltune.plan.memory import GIB, MemoryEstimate, estimate_memory
from legaltune.plan.methods import add_method_memory, rows_per_example
from legaltune.plan.params import count_params, lora_scale, resolve_targets
from legaltune.plan.result import Plan
from legaltune.plan.sharding import Parallel
from legaltune.speed.families import SPLIT, model_types
from legaltune.speed.policy import HOST_FRACTION, compile_wanted, liger_available

_SIZE = re.compile(r"^\s*([0-9.]+)\s*(gib|gb|g|mib|mb|m)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> float:
    """'80GiB' / '80GB' / '80' (GiB) → bytes. GB is read as GiB, as GPU vendors' '80 GB' means."""
    match = _SIZE.match(text)
    if not match:
        raise InputError(f"cannot read memory size {text!r}; write e.g. 80GiB or 24GB")
    value, unit = float(match.group(1)), (match.group(2) or "gib").lower()
    return value * (GIB if unit.startswith("g") else 1024**2)


def compute_steps(
    n_examples: int, batch: int, grad_accum: int, world: int, epochs: float, max_steps: int
) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps), as transformers' Trainer counts them.

    Each rank sees ceil(n / world) examples; a partial last accumulation window still steps.
    """
    per_rank = math.ceil(n_examples / world)
    micro = math.ceil(per_rank / batch)
    per_epoch = max(micro // grad_accum + int(micro % grad_accum > 0), 1)
    total = max_steps if max_steps > 0 else math.ceil(epochs * per_epoch)
    return per_epoch, total


def warmup_for(total: int | None, warmup_steps: int | None, warmup_ratio: float | None) -> int:
    """Warm-up steps: the count if given, else ceil(ratio × total) (transformers' rounding)."""
    if warmup_ratio is not None:
        return math.ceil(warmup_ratio * total) if total else 0
    return warmup_steps or 0


def _speed_activations(cfg: Config) -> bool:
    """Whether the speed engine's (smaller) activation model applies to this config.

    It was measured with fused LoRA linears (no dropout: a dropout keeps one masked copy of the input
    per projection), and with each layer either compiled or running Liger's norm/SwiGLU kernels
    (PyTorch's own keep fp32 copies). 8-bit bases are not fused. Otherwise the transformers + PEFT
    model is used, which is larger: auto then checkpoints more, never less, than needed.
    """
    sp = cfg.speed
    if sp.mode in ("off", False) or cfg.quantization.load_in_8bit or cfg.lora.lora_dropout > 0:
        return False
    compiled = compile_wanted(sp.compile)
    kernels = sp.kernels is True or (sp.kernels == "auto" and liger_available())
    return compiled or kernels


# speed.mode auto leaves this fraction of the budget unplanned: allocator fragmentation across
# varying sequence lengths (reserved − allocated was ≤ 1.1 GiB in every benchmark row).
AUTO_MARGIN = 0.05


def choose_checkpoint_layers(
    estimate: Callable[[int], MemoryEstimate], layers: int, budget: float | None
) -> tuple[int | None, str]:
    """The fewest checkpointed layers (the first N) whose estimated peak fits ``budget``.

    Returns (N, why); N is None (checkpoint every layer, as configured) when the budget is unknown.
    """
    if not budget:
        return None, "GPU memory unknown: every layer checkpointed as configured"
    usable = budget * (1 - AUTO_MARGIN)
    for n in range(layers + 1):
        if estimate(n).fits(usable):
            what = "no layer checkpointed" if n == 0 else f"{n}/{layers} layers checkpointed"
            return n, f"{what}: fits {budget / GIB:.0f} GiB (with {AUTO_MARGIN:.0%} margin)"
    if estimate(layers).fits(budget):
        return (
            layers,
            f"every layer checkpointed: fits {budget / GIB:.0f} GiB, not its {AUTO_MARGIN:.0%} margin",
        )
    return layers, f"does not fit {budget / GIB:.0f} GiB even with every layer checkpointed"


def choose_attention_layers(
    host_bytes: Callable[[int], float], offloaded: int, host_memory: float | None
) -> tuple[int, str]:
    """speed.offload_attention auto: the most offloaded layers (the first N) that may keep their
    attention half with the pinned host memory fitting ``HOST_FRACTION`` of ``host_memory``.

    Keeping it moves ~4.5x a layer's input over the host link and parks it in pinned memory: at long
    sequences or large batches that exceeds the machine's RAM (Llama-3.1-8B at 32 x 8,192 tokens: 289
    GiB for 32 layers). Unknown host memory (not Linux): every offloaded layer, as configured."""
    if not host_memory:
        return offloaded, ""
    usable = HOST_FRACTION * host_memory
    for n in range(offloaded, -1, -1):
        if host_bytes(n) <= usable:
            need = (
                f"{host_bytes(n) / GIB:.1f} GiB pinned host memory of {host_memory / GIB:.0f} GiB available"
            )
            if n == offloaded:
                return n, f"attention kept in every offloaded layer ({need})"
            return n, (
                f"attention kept in {n}/{offloaded} offloaded layers ({need}; all {offloaded} would need "
                f"{host_bytes(offloaded) / GIB:.0f} GiB, over the {HOST_FRACTION:.0%} allowed)"
            )
    return 0, (
        f"attention recomputed: the offloaded layer inputs alone need {host_bytes(0) / GIB:.0f} GiB pinned host "
        f"memory, over {HOST_FRACTION:.0%} of the {host_memory / GIB:.0f} GiB available (consider a smaller "
        "micro-batch, or lora.use_gradient_checkpointing: true)"
    )


def _attention_setting(cfg: Config, arch: Arch, checkpointing: bool | str) -> bool | int | str:
    """speed.offload_attention as it applies to this config: False where it cannot (no offloaded
    checkpointing, speed off, a model family the halves do not restate)."""
    sp = cfg.speed
    if checkpointing != "unsloth" or sp.mode in ("off", False) or arch.model_type not in model_types(SPLIT):
        return False
    return sp.offload_attention


def make_plan(
    cfg: Config,
    *,
    gpu_memory: float | None = None,
    world_size: int = 1,
    train_examples: int | None = None,
    fused_head: bool | None = None,
    checkpoint_layers: int | None = None,
    host_memory: float | None = None,
    micro_batch: tuple[int, int] | None = None,
    local_ranks: int | None = None,
    embeddings_on_host: bool = False,
) -> Plan:
    """Compute parameters, schedule, memory and lints for ``cfg``.

    ``fused_head``: whether the loss goes through TRL's chunked LM head; None = as `legaltune train`
    runs it (chunked unless lm_head has an adapter). False models full logits (a plain training loop).
    ``checkpoint_layers``: the layer count a run actually checkpointed (its report), instead of the
    speed policy's choice. ``host_memory``: bytes of host RAM available (speed.offload_attention
    auto keeps the attention half only in as many layers as fit it; None = in every offloaded layer).
    ``micro_batch``: the (rows, tokens per row) of the largest micro-batch the prepared data makes
    (:func:`legaltune.data.pack.largest_micro_batch`); None = the worst case, per_device_train_batch_size
    rows of max_seq_length. ``world_size``: GPUs of the run, per ``distributed.strategy`` (memory per
    GPU under DDP or FSDP2); ``local_ranks``: those of them on one machine (default all), which
    share its ``host_memory``. ``embeddings_on_host``: the input embedding table in host memory
    (speed.embeddings_on_host, as :func:`legaltune.plan.speed.plan_run` decides it).
    """
    arch = load_arch(cfg.model.model_name)
    local_ranks = max(1, min(local_ranks or world_size, world_size))
    rank_host = host_memory / local_ranks if host_memory else host_memory
    parallel = Parallel(world_size, cfg.distributed.strategy, cfg.distributed.fsdp_reshard_after_forward)
    targets = resolve_targets(arch, cfg.lora.target_modules)
    params = count_params(arch, cfg.lora.r, cfg.lora.target_modules, cfg.lora.bias)
    t = cfg.training
    eff = t.per_device_train_batch_size * t.gradient_accumulation_steps * world_size
    per_epoch = total = None
    if train_examples is not None:
        per_epoch, total = compute_steps(
            train_examples,
            t.per_device_train_batch_size,
            t.gradient_accumulation_steps,
            world_size,
            t.num_train_epochs,
            t.max_steps,
        )
    elif t.max_steps > 0:
        total = t.max_steps
    warmup = warmup_for(total, t.warmup_steps, t.warmup_ratio)
    compute_bytes = 4 if cfg.model.dtype == "float32" else 2
    checkpointing = cfg.lora.use_gradient_checkpointing if cfg.optimization.gradient_checkpointing else False
    speed = _speed_activations(cfg)
    after_sft = t.method != "sft"  # TRL's own checkpointing (recompute): no per-layer choice to make
    if after_sft and checkpointing:
        checkpointing = True
    common = dict(
        batch_size=(micro_batch[0] if micro_batch else t.per_device_train_batch_size) * rows_per_example(cfg),
        seq_len=micro_batch[1] if micro_batch else cfg.model.max_seq_length,
        compute_bytes=compute_bytes,
        load_in_4bit=cfg.quantization.load_in_4bit,
        load_in_8bit=cfg.quantization.load_in_8bit,
        double_quant=cfg.quantization.bnb_4bit_use_double_quant,
        load_in_fp8=cfg.quantization.load_in_fp8,
        fp8_keep_transpose=cfg.quantization.fp8_keep_transpose,
        embeddings_on_host=embeddings_on_host,
        optim=cfg.optimization.optim,
        checkpointing=checkpointing,
        attn_implementation=cfg.model.attn_implementation,
        r=cfg.lora.r,
        speed=speed,
        # `legaltune train` computes the loss through TRL's chunked head unless lm_head has an adapter
        fused_head="lm_head" not in cfg.lora.target_modules if fused_head is None else fused_head,
        parallel=parallel,
    )
    budget = cfg.speed.gpu_memory_gb * GIB if cfg.speed.gpu_memory_gb else gpu_memory
    layers, choice = checkpoint_layers, ""
    if checkpoint_layers is not None:
        choice = f"{checkpoint_layers} layers checkpointed (as the run did)"
    elif cfg.speed.mode == "auto" and checkpointing is not False and not after_sft:
        layers, choice = choose_checkpoint_layers(
            lambda n: estimate_memory(arch, params, **common, checkpoint_layers=n), arch.layers, budget
        )
    offloaded = 0 if checkpointing is False else arch.layers if layers is None else layers
    setting = False if after_sft else _attention_setting(cfg, arch, checkpointing)
    attention_layers, attention_choice = None, ""
    if setting == "auto":
        attention_layers, attention_choice = choose_attention_layers(
            lambda n: (
                estimate_memory(
                    arch, params, **common, checkpoint_layers=layers, attention_layers=n
                ).host_offload_bytes
            ),
            offloaded,
            rank_host,
        )
    elif setting is not False:
        attention_layers = offloaded if setting is True else min(int(setting), offloaded)
    memory = estimate_memory(
        arch, params, **common, checkpoint_layers=layers, attention_layers=attention_layers or 0
    )
    add_method_memory(cfg, arch, params, memory, seq_len=common["seq_len"], compute_bytes=compute_bytes)
    plan = Plan(
        config=cfg,
        arch=arch,
        params=params,
        targets=targets,
        lora_scale=lora_scale(cfg.lora.r, cfg.lora.lora_alpha, cfg.lora.use_rslora),
        world_size=world_size,
        effective_batch=eff,
        train_examples=train_examples,
        steps_per_epoch=per_epoch,
        total_steps=total,
        warmup_steps=warmup,
        memory=memory,
        gpu_bytes=budget,
        checkpoint_layers=layers,
        speed_choice=choice,
        attention_layers=attention_layers,
        attention_choice=attention_choice,
        parallel=parallel,
        local_ranks=local_ranks,
        host_memory=host_memory,
    )
    plan.lints = lint_plan(plan)
    return plan
