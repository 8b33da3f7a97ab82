"""The speed plan of one run, decided once, before any weight loads.

`legaltune train` calls :func:`plan_run` with the prepared data and the machine it runs on; the
result says how micro-batches are laid out (padding-free or padded), how many layers are
checkpointed (from the memory the data's largest micro-batch needs on this GPU, not the config's
``batch x max_seq_length`` worst case), the optimizer the engine runs, the host memory the
offloaded activations will pin, and what stops the run before it starts (error lints, host memory
that would not fit). ``legaltune plan`` prints the same decision from the config alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from legaltune.config.schema import Config
from legaltune.plan.core import make_plan
from legaltune.plan.memory import GIB
from legaltune.plan.result import Plan

# Pinned pages cannot be swapped: past this share of the host memory available at start, a run is
# refused before its weights load instead of being killed by the OOM killer mid-step.
HOST_REFUSE_FRACTION = 0.8
# What the offloader's arena reserves per byte the plan counts: on the H200 (seed 000, 260k-token
# micro-batches) it reserved 68.0 GiB, 61.2 GiB of it in use at most, where the plan said 57.5 GiB.
PINNED_RESERVE_FACTOR = 1.2


@dataclass
class RunSpeedPlan:
    """What `legaltune train` will do about speed and memory (see module doc)."""

    padding_free: bool
    padding_free_why: str
    micro_batch: tuple[int, int]  # (rows, tokens per row) of the largest micro-batch the data makes
    # most tokens of one forward (train/split_forward.py); None: whole micro-batches
    forward_tokens: int | None = None
    embeddings_on_host: bool = False  # the input embedding table in pinned host memory
    checkpoint_layers: int | None = None
    choice: str = ""
    plan: Plan | None = None
    host_available: float | None = None  # this process's share of the machine's host memory
    host_ranks: int = 1  # the processes of this run on this machine, which share it
    on_cuda: bool = False
    optimizer: str = ""  # what the Trainer runs (optimization.optim, or its fused form on CUDA)
    problems: list[str] = field(default_factory=list)  # each stops the run unless overridden
    notes: list[str] = field(default_factory=list)

    @property
    def host_offload_bytes(self) -> float:
        return self.plan.memory.host_offload_bytes if self.plan else 0.0

    def summary(self) -> str:
        rows, tokens = self.micro_batch
        layout = "padding-free" if self.padding_free else "padded"
        parts = [f"largest micro-batch {rows} × {tokens:,} tokens ({layout})"]
        if self.forward_tokens:
            parts.append(
                f"trained in forwards of ≤ {self.forward_tokens:,} tokens (whole examples, same gradient)"
            )
        if self.embeddings_on_host:
            parts.append("input embeddings in host memory")
        if self.plan is not None:
            parts.append(f"planned peak {self.plan.memory.peak_bytes / GIB:.1f} GiB")
            if self.host_offload_bytes:
                parts.append(f"{self.host_offload_bytes / GIB:.1f} GiB pinned host memory")
        if self.choice:
            parts.append(self.choice)
        return "plan: " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "padding_free": self.padding_free,
            "padding_free_why": self.padding_free_why,
            "optimizer": self.optimizer,
            "micro_batch": list(self.micro_batch),
            "forward_tokens": self.forward_tokens,
            "embeddings_on_host": self.embeddings_on_host,
            "checkpoint_layers": self.checkpoint_layers,
            "choice": self.choice,
            "peak_gib": round(self.plan.memory.peak_bytes / GIB, 3) if self.plan else None,
            "host_offload_gib": round(self.host_offload_bytes / GIB, 3),
            "host_available_gib": round(self.host_available / GIB, 1) if self.host_available else None,
            "host_ranks": self.host_ranks,
            "problems": self.problems,
            "notes": self.notes,
        }


def optimizer_name(cfg: Config, *, use_cuda: bool) -> str:
    """optimization.optim, with the speed engine's one substitution: on CUDA, ``adamw_torch`` runs as
    ``adamw_torch_fused`` (the same AdamW update in one kernel over all LoRA tensors)."""
    if cfg.optimization.optim == "adamw_torch" and use_cuda and cfg.speed.mode not in ("off", False):
        return "adamw_torch_fused"
    return cfg.optimization.optim


def padding_free_choice(
    cfg: Config, *, on_cuda: bool, attn: str, varlen: bool | None = None
) -> tuple[bool, str]:
    """speed.padding_free as it applies: auto = on a CUDA GPU, speed engine on, with a varlen
    attention kernel (flash-attn's, or PyTorch's for SDPA models). ``varlen``: whether PyTorch's
    varlen kernel is there (None: look on this machine; `plan` for a GPU from a CPU says True)."""
    setting = cfg.speed.padding_free
    if cfg.training.method != "sft":
        return False, f"{cfg.training.method}: TRL's collator pads each batch"
    if setting is False:
        return False, "speed.padding_free: false"
    if cfg.speed.mode == "off" and setting == "auto":
        return False, "speed.mode off: the transformers + PEFT reference batches"
    if attn == "flash_attention_2":
        return True, "flash-attn varlen kernel"
    if attn == "sdpa":
        if varlen is None:
            from legaltune.speed.varlen import varlen_supported

            varlen = varlen_supported()
        if on_cuda and varlen:
            return True, "PyTorch's varlen flash kernel (speed/varlen.py)"
        if setting is True:
            # correct everywhere (transformers keeps the examples apart with a block mask), only slower
            return True, "SDPA with a block-diagonal mask (no varlen kernel here: slower than padding)"
        return False, "no varlen attention kernel here (needs CUDA)"
    if setting is True:
        return True, f"{attn} with per-example positions"
    return False, f"attention {attn!r} has no varlen kernel"


# auto's groups are this share of the largest that the memory plan fits without checkpointing: a
# forward that checkpoints nothing has no layer to give back if the estimate is short (it was 5.6 %
# under the measured peak at seed 003's 8,192-token forwards: 50.2 vs 53.1 GiB on the H200).
FORWARD_HEADROOM = 0.85
# A forward of fewer tokens than this keeps the GPU's matrix units less busy than the recompute of
# a checkpointed layer costs; auto never splits below it (nor below the longest example).
MIN_FORWARD_TOKENS = 8192


def forward_tokens(
    cfg: Config, plan: Plan, longest: int, micro_tokens: int, plan_for: Callable[[int], Plan]
) -> int | None:
    """speed.forward_tokens as it applies to a padding-free run whose largest micro-batch is
    ``micro_tokens`` tokens and whose longest example is ``longest``: the cap of one forward, or
    None for one forward per micro-batch. auto splits only where the whole micro-batch would need
    layers checkpointed (``plan``), into groups of ``FORWARD_HEADROOM`` of the largest that need none
    (a binary search over ``plan_for(tokens)``), or where even those would be smaller than ``MIN_FORWARD_TOKENS`` or one
    example, into groups of that size and checkpointing what they need."""
    setting = cfg.speed.forward_tokens
    if setting is False:
        return None
    if setting != "auto":
        cap = max(int(setting), longest)
        return cap if cap < micro_tokens else None
    if cfg.speed.mode != "auto" or not plan.checkpoint_layers:
        return None
    floor = max(longest, min(MIN_FORWARD_TOKENS, micro_tokens))
    if floor >= micro_tokens:
        return None
    if plan_for(floor).checkpoint_layers:
        return floor
    lo, hi = floor, micro_tokens  # lo needs no checkpointing, hi does
    while hi - lo > 256:
        mid = (lo + hi) // 2
        if plan_for(mid).checkpoint_layers:
            hi = mid
        else:
            lo = mid
    return max(floor, int(lo * FORWARD_HEADROOM))


def embeddings_on_host(cfg: Config, plan: Plan, *, on_cuda: bool, world_size: int = 1) -> bool:
    """speed.embeddings_on_host as it applies: an untied input embedding without an adapter, not
    under FSDP (which shards it), when true, or under auto when ``plan`` (made with the table on
    the GPU) checkpoints every layer on a CUDA GPU."""
    setting = cfg.speed.embeddings_on_host
    eligible = (
        setting is not False
        and cfg.training.method == "sft"
        and not plan.arch.tie_embeddings
        and "embed_tokens" not in cfg.lora.target_modules
        and not (world_size > 1 and cfg.distributed.strategy == "fsdp")
    )
    if not eligible:
        return False
    if setting is True:
        return True
    every = plan.checkpoint_layers is not None and plan.checkpoint_layers >= plan.arch.layers
    return on_cuda and cfg.speed.mode == "auto" and every


def plan_run(
    cfg: Config,
    lengths: list[int],
    *,
    on_cuda: bool,
    attn: str,
    gpu_memory: float | None,
    host_memory: float | None,
    world_size: int = 1,
    varlen: bool | None = None,
    local_ranks: int = 1,
) -> RunSpeedPlan:
    """The run's speed plan from the config, the prepared training rows' ``lengths`` and the
    machine (``gpu_memory``/``host_memory`` in bytes, None where unknown; ``host_memory`` is the
    machine's, shared by its ``local_ranks`` processes of a ``world_size`` run)."""
    from legaltune.data.pack import largest_micro_batch

    padding_free, why = padding_free_choice(cfg, on_cuda=on_cuda, attn=attn, varlen=varlen)
    micro = largest_micro_batch(lengths, cfg.training.per_device_train_batch_size, padding_free=padding_free)
    result = RunSpeedPlan(
        padding_free,
        why,
        micro,
        host_available=host_memory / local_ranks if host_memory else host_memory,
        host_ranks=local_ranks,
        on_cuda=on_cuda,
        optimizer=optimizer_name(cfg, use_cuda=on_cuda),
    )
    budget = gpu_memory if on_cuda else None

    def plan_for(micro_batch: tuple[int, int], host_table: bool = False) -> Plan:
        return make_plan(
            cfg,
            gpu_memory=budget,
            world_size=world_size,
            local_ranks=local_ranks,
            train_examples=len(lengths),
            host_memory=host_memory,
            micro_batch=micro_batch if micro_batch[0] else None,
            embeddings_on_host=host_table,
        )

    try:
        forward = micro  # what one forward holds
        plan = plan_for(forward)
        # FSDP reduce-scatters at every backward and accelerate has no way to hold it off for the
        # groups of one micro-batch; DDP's gradient reduction is held to the last group (no_sync)
        if padding_free and micro[0] and (world_size == 1 or cfg.distributed.strategy == "ddp"):
            cap = forward_tokens(cfg, plan, max(lengths), micro[1], lambda t: plan_for((1, t)))
            if cap is not None:
                forward, result.forward_tokens = (1, cap), cap
                plan = plan_for(forward)
        if embeddings_on_host(cfg, plan, on_cuda=on_cuda, world_size=world_size):
            result.embeddings_on_host = True
            plan = plan_for(forward, True)
    except Exception as exc:  # no architecture offline, target names the plan cannot map, …
        result.notes.append(f"no memory plan for this model ({exc}); checkpointing as configured")
        return result
    result.plan = plan
    if cfg.speed.mode == "auto" and (on_cuda or cfg.speed.gpu_memory_gb):
        result.checkpoint_layers, result.choice = plan.checkpoint_layers, plan.speed_choice
    for lint in plan.lints:
        if lint.level == "error":
            result.problems.append(f"{lint.key}: {lint.message} — {lint.reason}")
    host, share = result.host_offload_bytes * PINNED_RESERVE_FACTOR, result.host_available
    if on_cuda and share and host > HOST_REFUSE_FRACTION * share:
        of = (
            f"the {share / GIB:.0f} GiB available"
            if local_ranks == 1
            else (
                f"this process's {share / GIB:.0f} GiB share of the {host_memory / GIB:.0f} GiB available to the "
                f"{local_ranks} processes on this machine"
            )
        )
        result.problems.append(
            f"host memory: offloaded activations would pin about {host / GIB:.0f} GiB of {of} "
            f"(over {HOST_REFUSE_FRACTION:.0%}) and the OOM killer would stop the run — lower "
            "training.per_device_train_batch_size or model.max_seq_length, or set lora.use_gradient_checkpointing: "
            "true (recompute on the GPU, no host memory)"
        )
    return result


__all__ = [
    "FORWARD_HEADROOM",
    "HOST_REFUSE_FRACTION",
    "MIN_FORWARD_TOKENS",
    "PINNED_RESERVE_FACTOR",
    "RunSpeedPlan",
    "embeddings_on_host",
    "forward_tokens",
    "optimizer_name",
    "padding_free_choice",
    "plan_run",
]
