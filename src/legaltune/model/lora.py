"""Attach LoRA adapters (seed §0.2, §2) and choose the activation-checkpointing mode (§2.7).

Targets are checked against the model before PEFT sees them, so a typo names the missing module
and lists the linear layers that do exist instead of PEFT's generic "target modules not found".
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from legaltune.distributed.env import local_world_size
from legaltune.errors import UserError
from legaltune.speed.offload import enable_offloaded_checkpointing
from legaltune.speed.policy import attention_host_allowance, offload_attention_wanted
from legaltune.speed.state import checkpointing_mode, set_checkpointing, set_speed_report

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

    from legaltune.config.schema import LoraConfig, SpeedConfig

ALL_LINEAR = "all-linear"
EMBEDDING_TARGETS = ("embed_tokens", "lm_head")


class TargetModuleError(UserError, ValueError):
    """target_modules names modules the model does not have."""


def _is_linear(module: nn.Module) -> bool:
    # bitsandbytes' Linear4bit / Linear8bitLt subclass nn.Linear, so quantized models are covered.
    return isinstance(module, nn.Linear)


def available_targets(model: nn.Module) -> list[str]:
    """Short names of the modules LoRA can target: every linear layer, plus embeddings."""
    names = {
        n.rsplit(".", 1)[-1]
        for n, m in model.named_modules()
        if n and (_is_linear(m) or isinstance(m, nn.Embedding))
    }
    return sorted(names)


def resolve_target_modules(model: nn.Module, target_modules: list[str] | str) -> list[str] | str:
    """Validate ``target_modules`` against ``model``; ``["all-linear"]`` becomes PEFT's string form."""
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    if ALL_LINEAR in target_modules:  # alone: LoraConfig refuses it combined with names
        return ALL_LINEAR
    module_names = [n for n, _ in model.named_modules() if n]
    missing = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in module_names)]
    if missing:
        raise TargetModuleError(
            f"target_modules: {', '.join(missing)} not found in {type(model).__name__}; "
            f"its linear/embedding modules are: {', '.join(available_targets(model))} (or use [{ALL_LINEAR}])"
        )
    return list(dict.fromkeys(target_modules))


def _freeze_for_kbit(model: nn.Module) -> None:
    """What we keep of peft's prepare_model_for_kbit_training: freeze every base weight.

    peft's function also casts every non-quantized fp16/bf16 weight to fp32 and has no switch to
    skip it. For Llama-3.1-8B that is embed_tokens + lm_head (2 × 525M parameters): +2.1 GB of
    weights, and an fp32 lm_head makes the logits (the largest activation at 8k tokens) fp32 too,
    doubling them. bf16 norms and heads train fine with fp32 LoRA adapters (what Unsloth does), so we
    keep the loaded dtype; checkpointing is configured below, non-reentrant, which needs no
    input-grad hook.
    """
    for param in model.parameters():
        param.requires_grad_(False)


def _ties_embeddings(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    if config is None:
        return False
    get_text = getattr(config, "get_text_config", None)
    text_config = get_text() if callable(get_text) else config
    return bool(getattr(text_config, "tie_word_embeddings", False))


def _checkpointing_mode(
    model: PreTrainedModel,
    enabled: bool,
    mode: bool | str,
    layers: int | None = None,
    split: Callable[[nn.Module], Any] | None = None,
    split_layers: int | None = None,
    host_allowance: float | None = None,
) -> str:
    if not enabled or mode is False or layers == 0:
        return "none"
    if mode == "unsloth" or layers is not None:
        # a partial policy (the first `layers` layers) always goes through our per-layer wrapper
        enable_offloaded_checkpointing(
            model,
            layers=layers,
            offload=mode == "unsloth",
            split=split,
            split_layers=split_layers,
            host_allowance=host_allowance,
        )
        return str(checkpointing_mode(model))
    kwargs = {"use_reentrant": False}
    # transformers 5.23 renamed the switch (the old name warns); 5.17 only has the old one.
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    # Needed only if something later switches to reentrant checkpointing (frozen embeddings would then
    # give the first checkpoint no input requiring grad and the LoRA weights no gradient).
    model.enable_input_require_grads()
    return "recompute"


@contextlib.contextmanager
def quiet_peft_wrap() -> Iterator[None]:
    """Around wrapping a model in PEFT (``get_peft_model``, ``PeftModel.from_pretrained``) only:
    PeftModel reads ``model.is_gradient_checkpointing``, which transformers ≥ 5.23 deprecates with a
    FutureWarning on every wrap. The call is PEFT's, not ours, so that one warning is filtered here."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


def apply_lora(
    model: PreTrainedModel,
    lora_cfg: LoraConfig,
    *,
    gradient_checkpointing: bool = True,
    max_seq_length: int | None = None,
    speed: SpeedConfig | None = None,
    checkpoint_layers: int | None = None,
) -> PeftModel:
    """Wrap ``model`` in a PEFT LoRA model per ``lora_cfg`` and set its checkpointing mode.

    ``speed`` applies the speed engine (fused LoRA, kernels, compiled layers) to the instance first;
    None or ``mode: off`` keeps the plain transformers + PEFT path. ``checkpoint_layers`` checkpoints
    only the first N decoder layers (None = all; the speed policy's choice).

    The mode (``"none"``, ``"recompute"``, ``"offload"``, or ``"offload 12/32"`` for a partial
    policy) and the speed report are kept beside the model: :func:`legaltune.speed.state.checkpointing_mode`
    and :func:`legaltune.speed.state.speed_report` read them.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = resolve_target_modules(model, lora_cfg.target_modules)
    quantized = bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))
    if quantized:
        _freeze_for_kbit(model)

    embeddings_targeted = isinstance(targets, list) and any(t in EMBEDDING_TARGETS for t in targets)
    tied = embeddings_targeted and _ties_embeddings(model)
    peft_config = PeftLoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.lora_alpha,
        lora_dropout=lora_cfg.lora_dropout,
        bias=lora_cfg.bias,
        target_modules=targets,
        use_rslora=lora_cfg.use_rslora,
        task_type="CAUSAL_LM",
        # Tied models (SmolLM2, Llama-3.2-1B/3B) have one matrix for embed_tokens and lm_head. PEFT
        # then ties the lm_head adapter to the embed_tokens adapter (A/B as transposed views), so a
        # merge writes one consistent delta into the shared weight; separate adapters on a shared
        # weight cannot be merged. This is why PEFT warns otherwise, and why we opt in.
        ensure_weight_tying=tied,
    )
    # Adapter init draws from the global RNG: seeding right before creation makes random_state
    # reproduce the same adapters (lora_A kaiming-uniform; lora_B starts at zero).
    torch.manual_seed(lora_cfg.random_state)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(lora_cfg.random_state)
    with quiet_peft_wrap():
        peft_model = get_peft_model(model, peft_config)

    base = peft_model.get_base_model()
    report = None
    if speed is not None:
        from legaltune.speed.apply import apply_speed

        # before checkpointing: the checkpoint wrapper must sit outside the compiled layer forward
        report = apply_speed(peft_model, mode=speed.mode, kernels=speed.kernels, compile=speed.compile)
    split, split_layers, host_allowance = None, None, None
    if (
        speed is not None
        and speed.mode != "off"
        and offload_attention_wanted(speed.offload_attention, on_cuda=next(base.parameters()).is_cuda)
    ):
        from legaltune.speed.split_layer import layer_halves

        split = layer_halves
        if not isinstance(speed.offload_attention, (bool, str)):  # an integer: the first N layers
            split_layers = int(speed.offload_attention)
        elif speed.offload_attention == "auto":  # only as many layers as the host's RAM holds
            host_allowance = attention_host_allowance(local_world_size())  # the ranks on this node
    mode = _checkpointing_mode(
        base,
        gradient_checkpointing,
        lora_cfg.use_gradient_checkpointing,
        checkpoint_layers,
        split,
        split_layers,
        host_allowance,
    )
    set_checkpointing(base, mode)
    if report is not None:
        report.checkpointing = mode
        set_speed_report(base, report)
    seq = max_seq_length if max_seq_length is not None else getattr(base, "max_seq_length", None)
    if seq is not None:
        base.max_seq_length = seq
    return peft_model
