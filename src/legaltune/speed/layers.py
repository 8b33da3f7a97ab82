"""The decoder layers of a causal LM, as every speed-up that works layer by layer finds them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from legaltune.errors import InputError

_LAYER_PATHS = (
    "model.layers",
    "model.decoder.layers",
    "model.language_model.layers",
    "transformer.h",
    "layers",
)

# (attention half, MLP half) of a decoder layer: see offload.enable_offloaded_checkpointing(split=...)
Halves = tuple[Callable[..., Any], Callable[..., Any]]


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (the model itself when it is not wrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The repeated decoder blocks of a (possibly PEFT-wrapped) causal LM."""
    base = base_model(model)
    for path in _LAYER_PATHS:
        obj: Any = base
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj
    raise InputError(
        f"offloaded checkpointing: cannot find the decoder layers of {type(base).__name__} "
        f"(looked for {', '.join(_LAYER_PATHS)}); set lora.use_gradient_checkpointing: true for this model"
    )
