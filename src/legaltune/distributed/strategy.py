"""distributed: in the config → the Trainer's arguments for DDP or FSDP2.

The Trainer hands these to accelerate, which wraps the model (DistributedDataParallel, or
``fully_shard`` per decoder layer) when training starts; nothing here wraps anything itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from legaltune.config.schema import Config
from legaltune.errors import UserError
from legaltune.speed.layers import find_decoder_layers

# Config attributes that name a mixture of experts: an expert no token of a batch was routed to gets
# no gradient, so adapters on experts need DDP's search for unused parameters.
_EXPERT_COUNTS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


@dataclass
class DistributedArgs:
    """What a run of ``world_size`` processes passes to the Trainer, and the lines it prints about it."""

    world_size: int
    strategy: str  # "single", "ddp" or "fsdp"
    trainer_args: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.strategy == "single":
            return "distributed: one process"
        return f"distributed: {self.strategy} over {self.world_size} processes"

    def to_dict(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "strategy": self.strategy, "notes": self.notes}


def unused_parameter_reason(model: nn.Module) -> str | None:
    """Why some trainable parameter may get no gradient in a step (None: every one always does).

    A forward runs the input embeddings, every decoder layer and the output head; LoRA adapters on
    their projections (and trained embeddings or head) therefore get a gradient each step, even a
    zero one (PEFT starts lora_B at zero). Outside them (a vision tower or projector that text
    batches never reach) or on the experts of a mixture (an expert no token was routed to), a
    parameter can go without one, and DDP without its search would wait for it forever.
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        return None
    covered: set[int] = set()
    try:
        covered.update(id(p) for p in find_decoder_layers(model).parameters())
    except ValueError:
        return "legaltune cannot find this model's decoder layers"
    for get in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, get, lambda: None)()
        if isinstance(module, nn.Module):
            covered.update(id(p) for p in module.parameters())
    for name, param in trainable:
        if id(param) not in covered:
            return f"{name} is outside the decoder layers and embeddings"
    config = getattr(model, "config", None)
    text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    if any(getattr(text, k, 0) or 0 for k in _EXPERT_COUNTS):
        experts = next((n for n, _ in trainable if ".experts." in n), None)
        if experts is not None:
            return f"{experts} is on an expert of a mixture, which a batch may not route to"
    return None


def find_unused_parameters(cfg: Config, model: nn.Module) -> tuple[bool, str]:
    """distributed.find_unused_parameters resolved for this model: (setting, why)."""
    setting = cfg.distributed.find_unused_parameters
    if setting != "auto":
        return bool(setting), f"distributed.find_unused_parameters: {str(setting).lower()}"
    reason = unused_parameter_reason(model)
    if reason is None:
        n = sum(1 for p in model.parameters() if p.requires_grad)
        return False, (
            f"find_unused_parameters false: all {n} trainable tensors are in the decoder layers or embeddings, "
            "which every forward runs"
        )
    return True, f"find_unused_parameters true: {reason}"


def decoder_layer_class(model: nn.Module) -> str:
    return type(find_decoder_layers(model)[0]).__name__


def distributed_args(cfg: Config, model: nn.Module, *, world_size: int, on_cuda: bool) -> DistributedArgs:
    """The Trainer arguments of ``cfg.distributed`` for this model and world size."""
    d = cfg.distributed
    if world_size <= 1:
        return DistributedArgs(world_size, "single")
    if d.strategy == "fsdp" and not on_cuda:
        raise UserError(
            "distributed.strategy fsdp: accelerate shards a model only over GPUs, and this run's processes have "
            "none (model.device_map cpu, or no CUDA device); set distributed.strategy: ddp to train on CPUs"
        )
    out = DistributedArgs(world_size, d.strategy)
    args = out.trainer_args
    args["ddp_timeout"] = int(d.timeout_minutes * 60)
    if d.backend != "auto":
        args["ddp_backend"] = d.backend
    if d.strategy == "ddp":
        unused, why = find_unused_parameters(cfg, model)
        args["ddp_find_unused_parameters"] = unused
        out.notes.append(why)
        return out
    layer = decoder_layer_class(model)
    args["fsdp"] = True
    args["fsdp_config"] = {
        "version": 2,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "transformer_layer_cls_to_wrap": [layer],
        "reshard_after_forward": d.fsdp_reshard_after_forward,
        # the adapter is small: checkpoints and the saved adapter gather it whole on rank 0
        "state_dict_type": "FULL_STATE_DICT",
        # legaltune checkpoints layers itself (offloaded or recomputed), inside each sharded layer
        "activation_checkpointing": False,
    }
    out.notes.append(
        f"fsdp: each {layer} sharded over {world_size} processes (frozen base, LoRA in fp32, gradients and "
        f"optimizer states), reshard after forward: {str(d.fsdp_reshard_after_forward).lower()}"
    )
    if cfg.quantization.load_in_4bit:
        out.notes.append(
            "fsdp with a 4-bit base: the packed weights stay whole on every GPU (FSDP2 cannot shard them); "
            "the LoRA weights, gradients and optimizer states are sharded"
        )
    return out


def keep_lora_reduction_fp32(trainer: Any) -> bool:
    """FSDP2 under bf16/fp16: reduce the LoRA gradients in fp32, as DDP does for fp32 parameters.

    accelerate's policy for ``bf16`` reduces in bf16; LoRA updates are small next to their weights and
    lose digits in a bf16 sum. The plugin is read when training starts (``accelerator.prepare``), so it
    is set on the Trainer's accelerator between construction and ``train()``. Returns whether it changed.
    """
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy

    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    policy = getattr(plugin, "mixed_precision_policy", None)
    if policy is None or getattr(policy, "reduce_dtype", None) in (None, torch.float32):
        return False
    plugin.mixed_precision_policy = MixedPrecisionPolicy(
        param_dtype=policy.param_dtype, reduce_dtype=torch.float32, output_dtype=policy.output_dtype
    )
    return True


__all__ = [
    "DistributedArgs",
    "decoder_layer_class",
    "distributed_args",
    "find_unused_parameters",
    "keep_lora_reduction_fp32",
    "unused_parameter_reason",
]
