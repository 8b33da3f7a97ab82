"""A decoder layer as two halves, so checkpointing can keep the attention and recompute the MLP.

Pre-norm layers (Llama, Qwen, Mistral) are ``h + attn(norm(h))`` then ``h + mlp(norm(h))``;
sandwich-norm layers (Gemma 3) also normalise each branch's output before its residual add. Both
shapes split the same way.

Under offloaded checkpointing every layer is recomputed in backward. For a pre-norm layer
(``h + attn(norm(h))``, then ``h + mlp(norm(h))``) the attention half's recompute is the
q/k/v/o projections and the attention forward: on Llama-3.1-8B ~45 ms of a 2048x4 step and ~70 ms
of an 8192x1 step on the H100 (profiled). What that half saves for backward is small next to the
MLP's — at 8k tokens q, k, v, the attention output and the layer input, ~290 MB per layer against
~1 GB for the MLP's gate/up/activation — and small enough that the host link (~50 GB/s each way)
moves it while the next layers compute. So with a split: the attention half runs un-checkpointed
under the offloader's hooks (everything it saves goes to pinned host memory and comes back ahead of
backward), and only the MLP half is checkpointed.

The halves restate the forward of the decoder layers of the families that
:mod:`legaltune.speed.families` lists with ``SPLIT`` (identical in transformers 5.17-5.24; the CPU tests compare outputs and gradients with the layer's own forward).
Compiled layers get compiled halves (one compiled function per half, shared by all layers).
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from legaltune.speed.compile import compile_backend, mark_token_dims
from legaltune.speed.families import SPLIT, class_names, family_for_class
from legaltune.speed.layers import Halves
from legaltune.speed.lora_group import grouped_projections

# The families of the registry with SPLIT: pre-norm decoder layers (input_layernorm -> self_attn ->
# residual, post_attention_layernorm -> mlp -> residual, nothing else in their forward) whose
# attention and MLP forward _attention/_mlp restate (transformers 5.17-5.24), so that the
# projections sharing an input run as one grouped op (:mod:`legaltune.speed.lora_group`).


def _attention(attn: nn.Module, hidden_states: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """``self_attn(hidden_states, **kwargs)[0]`` with q/k/v grouped (a training forward: no cache)."""
    if (
        type(attn).__name__ not in class_names("Attention", SPLIT)
        or kwargs.get("past_key_values") is not None
        or kwargs.get("cache") is not None  # the name from transformers 5.24 on
        or kwargs.get("position_embeddings") is None
        # Gemma 2's attention softcapping: not restated (Gemma 3 has none)
        or getattr(attn, "attn_logit_softcapping", None) is not None
    ):
        return attn(hidden_states=hidden_states, **kwargs)[0]
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    module = sys.modules[type(attn).__module__]
    hidden_shape = (*hidden_states.shape[:-1], -1, attn.head_dim)
    q, k, v = (
        t.view(hidden_shape)
        for t in grouped_projections([attn.q_proj, attn.k_proj, attn.v_proj], hidden_states)
    )
    if hasattr(attn, "q_norm"):  # Qwen3, Gemma 3: per-head norms before RoPE (over the last dim)
        q, k = attn.q_norm(q), attn.k_norm(k)
    # v is a column slice of the grouped output: attention saves it for backward, and a slice would
    # keep the whole q/k/v buffer alive (and not offloadable as one block); a copy is 1/6 of it
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.contiguous().transpose(1, 2)
    cos, sin = kwargs.pop("position_embeddings")
    q, k = module.apply_rotary_pos_emb(q, k, cos, sin)
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(
        attn.config._attn_implementation, module.eager_attention_forward
    )
    kwargs.pop("past_key_values", None)
    kwargs.pop("cache", None)
    mask = kwargs.pop("attention_mask", None)
    # a per-layer window (Qwen's), else the config's (Mistral's); Llama has none
    window = getattr(attn, "sliding_window", getattr(attn.config, "sliding_window", None))
    out, _weights = interface(
        attn, q, k, v, mask, dropout=0.0 if not attn.training else attn.attention_dropout,
        scaling=attn.scaling, sliding_window=window, **kwargs,
    )  # fmt: skip
    return attn.o_proj(out.reshape(*hidden_states.shape[:-1], -1).contiguous())


def _mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``mlp(x)`` with gate/up grouped."""
    if type(mlp).__name__ not in class_names("MLP", SPLIT):
        return mlp(x)
    gate, up = grouped_projections([mlp.gate_proj, mlp.up_proj], x)
    return mlp.down_proj(mlp.act_fn(gate) * up)


def attention_half(layer: nn.Module, hidden_states: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """``h + self_attn(input_layernorm(h))``; keyword arguments go to the attention as the layer's
    own forward passes them."""
    return hidden_states + _attention(layer.self_attn, layer.input_layernorm(hidden_states), **kwargs)


def attention_half_recompute_norm(
    layer: nn.Module, hidden_states: torch.Tensor, **kwargs: Any
) -> torch.Tensor:
    """:func:`attention_half` with the input norm recomputed in backward (compiled halves only).

    Otherwise the compiled half saves both the layer input (for the norm's backward) and its normed
    copy (for the q/k/v projections' backward): 64 MiB each per layer at 8k tokens, a fifth of what
    the half sends over the host link. Tagged for recompute, the normed copy is rebuilt from the
    input in backward (one elementwise pass). Eager halves keep :func:`attention_half`: there, a
    nested checkpoint would hold the layer input on the GPU instead of letting it be offloaded."""
    normed = checkpoint(layer.input_layernorm, hidden_states, use_reentrant=False)
    return hidden_states + _attention(layer.self_attn, normed, **kwargs)


def mlp_half(layer: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """``h + mlp(post_attention_layernorm(h))``."""
    return hidden_states + _mlp(layer.mlp, layer.post_attention_layernorm(hidden_states))


# Sandwich-norm layers (Gemma 3): each branch's output is normalised before the residual add, and
# the MLP has its own input norm (post_attention_layernorm belongs to the attention branch).
def sandwich_attention_half(layer: nn.Module, hidden_states: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """``h + post_attention_layernorm(self_attn(input_layernorm(h)))``."""
    out = _attention(layer.self_attn, layer.input_layernorm(hidden_states), **kwargs)
    return hidden_states + layer.post_attention_layernorm(out)


def sandwich_attention_half_recompute_norm(
    layer: nn.Module, hidden_states: torch.Tensor, **kwargs: Any
) -> torch.Tensor:
    """:func:`sandwich_attention_half` with the input norm recomputed in backward (compiled halves),
    as :func:`attention_half_recompute_norm`."""
    normed = checkpoint(layer.input_layernorm, hidden_states, use_reentrant=False)
    return hidden_states + layer.post_attention_layernorm(_attention(layer.self_attn, normed, **kwargs))


def sandwich_mlp_half(layer: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """``h + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h)))``."""
    out = _mlp(layer.mlp, layer.pre_feedforward_layernorm(hidden_states))
    return hidden_states + layer.post_feedforward_layernorm(out)


# (attention half, its norm-recomputing variant, MLP half) per layer shape
_HALVES = {
    False: (attention_half, attention_half_recompute_norm, mlp_half),
    True: (sandwich_attention_half, sandwich_attention_half_recompute_norm, sandwich_mlp_half),
}
_NORMS = {
    False: ("input_layernorm", "post_attention_layernorm"),
    True: (
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
    ),
}


@functools.cache
def _compiled(backend: str, recompute_norm: bool = True, sandwich: bool = False) -> Halves:
    plain, recomputing, mlp_fn = _HALVES[sandwich]
    attention = torch.compile(recomputing if recompute_norm else plain, backend=backend)
    mlp = torch.compile(mlp_fn, backend=backend)

    # the halves see every micro-batch length too: one graph for all (compile.mark_token_dims)
    def attention_marked(layer: nn.Module, hidden_states: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        mark_token_dims(hidden_states, **kwargs)
        return attention(layer, hidden_states, **kwargs)

    def mlp_marked(layer: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        mark_token_dims(hidden_states)
        return mlp(layer, hidden_states)

    return attention_marked, mlp_marked


def layer_halves(layer: nn.Module, *, recompute_norm: bool = True) -> Halves | None:
    """The halves for this layer (compiled if the layer was compiled), or None if its class is not
    one whose forward the halves restate. ``recompute_norm=False`` (a benchmark probe) saves the
    normed input of compiled halves instead of recomputing it."""
    family = family_for_class(type(layer).__name__)
    if (
        family is None
        or not family.supports(SPLIT)
        or type(layer).__name__ != family.class_name("DecoderLayer")
    ):
        return None
    sandwich = family.sandwich_norms
    if not all(hasattr(layer, n) for n in ("self_attn", "mlp", *_NORMS[sandwich])):
        return None
    backend = compile_backend(layer)
    if backend is not None:
        return _compiled(backend, recompute_norm, sandwich)
    plain, _recomputing, mlp_fn = _HALVES[sandwich]
    return plain, mlp_fn


__all__ = [
    "attention_half",
    "attention_half_recompute_norm",
    "layer_halves",
    "mlp_half",
    "sandwich_attention_half",
    "sandwich_mlp_half",
]
