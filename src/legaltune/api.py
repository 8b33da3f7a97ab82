"""The seed's Unsloth-style API (seed 000 §0.1, §0.2), backed by legaltune's loader and LoRA code.

``FastLanguageModel.from_pretrained`` and ``FastLanguageModel.get_peft_model`` accept the seed's
calls unchanged and build the same config objects a YAML run uses, so a notebook written against
Unsloth and ``legaltune train`` load and adapt models the same way. Arguments we do not implement
raise ``TypeError`` naming them, rather than being silently ignored.

Defaults are the config's (``legaltune.config.schema``, seed 003's recommendations), with two
documented differences: ``from_pretrained``'s ``max_seq_length`` is 2048, as in Unsloth (the config's
is 8192, seed 000's), and ``get_peft_model``'s ``speed`` is ``"fast"`` (a config's ``speed.mode`` is
``auto``, which needs the batch shape that only a training config gives).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from legaltune.config.schema import SEVEN_PROJECTIONS, LoraConfig, ModelConfig, QuantizationConfig
from legaltune.errors import InputError

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def _reject_unknown(method: str, kwargs: dict[str, Any]) -> None:
    if kwargs:
        names = ", ".join(repr(k) for k in kwargs)
        raise TypeError(f"FastLanguageModel.{method}() got unsupported argument(s) {names}")


def _dtype_name(dtype: torch.dtype | str | None) -> str:
    """The seed passes None or torch dtypes; the config speaks strings."""
    if dtype is None:
        return "auto"
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    if isinstance(dtype, str):
        return dtype
    raise TypeError(f"dtype must be None, a torch.dtype or a string, not {type(dtype).__name__}")


class FastLanguageModel:
    """Drop-in for ``unsloth.FastLanguageModel``: load a causal LM, then add LoRA adapters."""

    @staticmethod
    def from_pretrained(
        model_name: str = ModelConfig.model_name,
        max_seq_length: int = 2048,
        dtype: torch.dtype | str | None = None,
        load_in_4bit: bool = QuantizationConfig.load_in_4bit,
        load_in_8bit: bool = QuantizationConfig.load_in_8bit,
        load_in_fp8: bool | str = QuantizationConfig.load_in_fp8,
        attn_implementation: str = ModelConfig.attn_implementation,
        device_map: str | dict[str, Any] | None = ModelConfig.device_map,
        trust_remote_code: bool = ModelConfig.trust_remote_code,
        **kwargs: Any,
    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """Load ``model_name`` (hub id, local dir, .gguf, or ``smollm2-135m-instruct``) and its tokenizer.

        ``load_in_fp8=True``: the decoder projections in FP8 (``quantization.load_in_fp8``, docs/fp8.md)."""
        _reject_unknown("from_pretrained", kwargs)
        if load_in_fp8 not in (True, False):
            raise InputError(
                f"load_in_fp8={load_in_fp8!r}: legaltune implements load_in_fp8=True (per-token activation and "
                "per-channel weight scales) or False; Unsloth's block-wise 'block' scaling is not implemented"
            )
        from legaltune.model.load import load_model

        model_cfg = ModelConfig(
            model_name=model_name,
            max_seq_length=max_seq_length,
            dtype=_dtype_name(dtype),
            attn_implementation=attn_implementation,
            device_map=device_map,
            trust_remote_code=trust_remote_code,
        )
        quant_cfg = QuantizationConfig(
            load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit, load_in_fp8=bool(load_in_fp8)
        )
        model, tokenizer = load_model(model_cfg, quant_cfg)
        model.max_seq_length = max_seq_length
        return model, tokenizer

    @staticmethod
    def get_peft_model(
        model: PreTrainedModel,
        r: int = LoraConfig.r,
        target_modules: list[str] | str | None = None,
        lora_alpha: float = LoraConfig.lora_alpha,
        lora_dropout: float = LoraConfig.lora_dropout,
        bias: str = LoraConfig.bias,
        use_gradient_checkpointing: bool | str = LoraConfig.use_gradient_checkpointing,
        random_state: int = LoraConfig.random_state,
        use_rslora: bool = LoraConfig.use_rslora,
        max_seq_length: int | None = None,
        loftq_config: Any = None,
        speed: str = "fast",
        **kwargs: Any,
    ) -> PeftModel:
        """Add LoRA adapters; ``use_gradient_checkpointing="unsloth"`` = recompute + CPU offload of layer inputs.

        Defaults are a config's ``lora`` defaults: r 16, alpha 16, no dropout, no rsLoRA, all seven
        projections (``target_modules=None``).

        ``speed`` (legaltune's): ``"fast"`` applies the speed engine (fused LoRA linears, kernels,
        compiled layers on CUDA) with checkpointing on every layer as asked; ``"off"`` keeps the plain
        transformers + PEFT path. (``"auto"`` needs a batch and sequence plan: use ``legaltune train``.)
        """
        _reject_unknown("get_peft_model", kwargs)
        if loftq_config:
            raise NotImplementedError(
                "loftq_config is not supported by legaltune; use load_in_4bit=True (QLoRA) with standard LoRA init"
            )
        if speed not in ("fast", "off"):
            raise InputError(
                f"speed {speed!r}: choose 'fast' or 'off' ('auto' is for legaltune train configs)"
            )
        from legaltune.config.schema import SpeedConfig
        from legaltune.model.lora import apply_lora

        targets = list(SEVEN_PROJECTIONS) if target_modules is None else target_modules
        lora_cfg = LoraConfig(
            r=r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            bias=bias,
            target_modules=[targets] if isinstance(targets, str) else list(targets),
            use_rslora=use_rslora,
            use_gradient_checkpointing=use_gradient_checkpointing,
            random_state=random_state,
        )
        return apply_lora(
            model,
            lora_cfg,
            gradient_checkpointing=use_gradient_checkpointing is not False,
            max_seq_length=max_seq_length,
            speed=SpeedConfig(mode=speed),
        )


__all__ = ["FastLanguageModel"]
