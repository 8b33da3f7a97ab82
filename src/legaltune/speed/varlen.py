"""Padding-free attention on SDPA models: FlashAttention's variable-length kernel through PyTorch.

A padding-free micro-batch is one row holding every example of the micro-batch back to back,
with ``position_ids`` restarting per example and the example boundaries as ``cu_seq_lens_q/k``
(the collator computes them, :class:`legaltune.data.pack.BatchCollator`). transformers' flash
attention integration reads those boundaries itself; with SDPA it would instead build a
block-diagonal mask of (tokens x tokens) and attend over all of it (a 26k-token micro-batch: a
700 MB mask and ~30x the attention work of the examples alone). Here the attention of such a
model instance is routed to ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention-2's varlen
kernel inside PyTorch, CUDA only), registered under its own name in transformers'
``AttentionInterface`` and selected on that instance only for the training loop: no mask function
is registered under that name, so transformers builds none, and :func:`disable_varlen_attention`
puts the model's own attention back for evaluation-time generation.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
from typing import Any

import torch
from torch import nn

from legaltune.errors import InputError

ATTN_NAME = "legaltune_varlen"
_SAVED = "_legaltune_attn_before_varlen"


@functools.cache
def varlen_supported() -> bool:
    """PyTorch's varlen attention importable and a CUDA device present."""
    return torch.cuda.is_available() and importlib.util.find_spec("torch.nn.attention.varlen") is not None


# The kernel and how this PyTorch spells causality and grouped heads, read once at registration so
# that the traced attention (inside compiled layers) does no introspection.
_KERNEL: dict[str, Any] = {}


def _load_kernel() -> None:
    from torch.nn.attention.varlen import varlen_attn

    params = set(inspect.signature(varlen_attn).parameters)
    _KERNEL.update(fn=varlen_attn, is_causal="is_causal" in params, gqa="enable_gqa" in params)


def varlen_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: (batch, heads, tokens, dim) in, (batch, tokens,
    heads, dim) out. Without ``cu_seq_lens_q`` (a batch not from the padding-free collator) it runs
    SDPA, which is what the model had."""
    cu_q = kwargs.get("cu_seq_lens_q")
    if cu_q is None or query.shape[0] != 1:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if dropout:
        raise InputError("padding-free attention has no attention dropout; set speed.padding_free: false")
    heads, kv_heads = query.shape[1], key.shape[1]
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (tokens, heads, dim)
    extra: dict[str, Any] = {"scale": scaling}
    if _KERNEL["is_causal"]:
        if sliding_window:
            raise InputError(
                "padding-free attention: this PyTorch's varlen kernel has no sliding window, which this model "
                "uses; set speed.padding_free: false, or upgrade PyTorch"
            )
        extra["is_causal"] = True
    else:
        extra["window_size"] = (sliding_window - 1 if sliding_window else -1, 0)
    if kv_heads != heads:
        if _KERNEL["gqa"]:
            extra["enable_gqa"] = True
        else:
            k = k.repeat_interleave(heads // kv_heads, dim=1)
            v = v.repeat_interleave(heads // kv_heads, dim=1)
    # max_q/max_k bound the kernel's grid, not the result: a constant upper bound (the config's
    # max_seq_length) keeps compiled layers from specialising on every micro-batch's longest example.
    max_q = int(kwargs.get("max_length_q") or q.shape[0])
    max_k = int(kwargs.get("max_length_k") or max_q)
    out = _KERNEL["fn"](
        q.contiguous(),
        k.contiguous(),
        v.contiguous(),
        cu_q,
        kwargs.get("cu_seq_lens_k", cu_q),
        max_q,
        max_k,
        **extra,
    )
    return out.unsqueeze(0), None


def _register() -> None:
    from transformers import AttentionInterface

    if not _KERNEL:
        _load_kernel()
    AttentionInterface.register(ATTN_NAME, varlen_attention_forward)


def enable_varlen_attention(model: nn.Module) -> bool:
    """Route this instance's SDPA attention to the varlen kernel (training with padding-free
    batches). Returns False, changing nothing, where it does not apply (no CUDA/varlen, another
    attention implementation)."""
    config = getattr(model, "config", None)
    if config is None or not varlen_supported():
        return False
    current = getattr(config, "_attn_implementation", None)
    if current == ATTN_NAME:
        return True
    if current != "sdpa":
        return False
    _register()
    model.__dict__[_SAVED] = current
    _set_attn(model, ATTN_NAME)
    return True


def disable_varlen_attention(model: nn.Module) -> None:
    """Undo :func:`enable_varlen_attention` on this instance."""
    before = model.__dict__.pop(_SAVED, None)
    if before is not None:
        _set_attn(model, before)


def _set_attn(model: nn.Module, name: str) -> None:
    # every sub-config the layers read (text configs of composite models included)
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            cfg._attn_implementation = name


__all__ = [
    "ATTN_NAME",
    "disable_varlen_attention",
    "enable_varlen_attention",
    "varlen_attention_forward",
    "varlen_supported",
]
