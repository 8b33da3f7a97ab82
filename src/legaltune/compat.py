"""Old-style TRL/transformers calls from the seed (§0.3, §3–§6), mapped onto TRL 1.x and transformers 5.

The seed was written for TRL < 0.12 and transformers 4: ``SFTTrainer(tokenizer=..., dataset_text_field=...,
packing=..., max_seq_length=...)`` and ``TrainingArguments(evaluation_strategy=..., warmup_ratio=...)``.
TRL 1.x takes the tokenizer as ``processing_class`` and the data options in ``SFTConfig``
(``max_seq_length`` is now ``max_length``); transformers 5 renamed ``evaluation_strategy`` and folds
``warmup_ratio`` into a fractional ``warmup_steps`` (5.23 also renames ``gradient_checkpointing``
to ``activation_checkpointing``). These wrappers translate, and refuse contradictions instead of
picking one silently.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import torch
import transformers
import trl

from legaltune.errors import InputError

# old name → new name, applied only where the running transformers has the new name.
_RENAMES = (
    ("evaluation_strategy", "eval_strategy"),
    ("no_cuda", "use_cpu"),
    ("gradient_checkpointing", "activation_checkpointing"),
    ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"),
)


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


def _translate_training_kwargs(kwargs: dict[str, Any], cls: type) -> dict[str, Any]:
    kwargs = dict(kwargs)
    names = _field_names(cls)
    for old, new in _RENAMES:
        if old in kwargs and new in names and new != old:
            value = kwargs.pop(old)
            if new in kwargs and kwargs[new] != value:
                raise InputError(
                    f"{old}={value!r} and {new}={kwargs[new]!r} disagree; {old} is the old name of {new}"
                )
            kwargs[new] = value
    if "warmup_ratio" in kwargs and "warmup_ratio" not in names:
        ratio = kwargs.pop("warmup_ratio")
        if ratio:
            if not 0 < ratio < 1:
                raise InputError(f"warmup_ratio={ratio!r}: must be in (0, 1)")
            if kwargs.get("warmup_steps"):
                raise InputError(
                    f"warmup_ratio={ratio!r} and warmup_steps={kwargs['warmup_steps']!r}: set one, not both"
                )
            # transformers 5 reads a float warmup_steps in [0, 1) as a fraction of the total steps.
            kwargs["warmup_steps"] = float(ratio)
    return kwargs


def TrainingArguments(**kwargs: Any) -> transformers.TrainingArguments:  # noqa: N802 (mirrors the class name)
    """``transformers.TrainingArguments`` accepting the seed's old argument names."""
    return transformers.TrainingArguments(
        **_translate_training_kwargs(kwargs, transformers.TrainingArguments)
    )


def _as_dict(args: transformers.TrainingArguments) -> dict[str, Any]:
    d = args.to_dict()
    for key in d:
        if key.endswith("_token"):
            # to_dict masks tokens as "<HUB_TOKEN>" for logging; a rebuilt config needs the real value.
            d[key] = getattr(args, key)
    return d


def to_sft_config(
    args: transformers.TrainingArguments | None, overrides: dict[str, Any] | None = None
) -> trl.SFTConfig:
    """An ``SFTConfig`` from ``TrainingArguments``/``SFTConfig``/None, with SFT fields from ``overrides``."""
    overrides = dict(overrides or {})
    if args is None:
        if not torch.cuda.is_available():
            # SFTConfig defaults to bf16 and refuses to start on a CPU-only machine unless told.
            overrides.setdefault("use_cpu", True)
        return trl.SFTConfig(**overrides)
    if isinstance(args, trl.SFTConfig) and not overrides:
        return args
    if not isinstance(args, transformers.TrainingArguments):
        raise TypeError(f"args must be TrainingArguments or SFTConfig, not {type(args).__name__}")
    names = _field_names(trl.SFTConfig)
    d = {k: v for k, v in _as_dict(args).items() if k in names}
    d.update(overrides)
    return trl.SFTConfig(**d)


class SFTTrainer(trl.SFTTrainer):
    """``trl.SFTTrainer`` that also accepts the seed's pre-1.0 call.

    ``tokenizer`` → ``processing_class``; ``max_seq_length`` → ``SFTConfig.max_length``; any other
    keyword that TRL 1.x moved into ``SFTConfig`` (``dataset_text_field``, ``packing``,
    ``dataset_num_proc``, …) is moved there. Without an explicit length, the model's
    ``max_seq_length`` (set by ``FastLanguageModel``) is used instead of TRL's default of 1024.
    """

    def __init__(
        self,
        model: Any = None,
        args: transformers.TrainingArguments | None = None,
        *,
        tokenizer: Any = None,
        max_seq_length: int | None = None,
        **kwargs: Any,
    ) -> None:
        if tokenizer is not None:
            given = kwargs.get("processing_class")
            if given is not None and given is not tokenizer:
                raise InputError("tokenizer and processing_class are both given and differ; pass one")
            kwargs["processing_class"] = tokenizer
        trainer_params = set(inspect.signature(trl.SFTTrainer.__init__).parameters)
        sft_fields = _field_names(trl.SFTConfig)
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in sft_fields and k not in trainer_params}
        if max_seq_length is not None:
            if overrides.get("max_length", max_seq_length) != max_seq_length:
                raise InputError(
                    f"max_seq_length={max_seq_length} and max_length={overrides['max_length']} disagree; "
                    "max_seq_length is the old name of max_length"
                )
            overrides["max_length"] = max_seq_length
        elif "max_length" not in overrides and not isinstance(args, trl.SFTConfig):
            # A plain TrainingArguments carries no length; TRL would truncate to 1024.
            model_len = getattr(model, "max_seq_length", None)
            if isinstance(model_len, int):
                overrides["max_length"] = model_len
        super().__init__(model=model, args=to_sft_config(args, overrides), **kwargs)
        from legaltune.speed.lm_head import fuse_speed_lm_head

        # a model from FastLanguageModel.get_peft_model carries the speed engine: its LM head too
        fuse_speed_lm_head(self.model)


__all__ = ["SFTTrainer", "TrainingArguments", "to_sft_config"]
