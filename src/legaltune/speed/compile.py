"""``torch.compile`` of the decoder layers of one model instance.

Each layer's forward becomes a compiled function stored on that layer object (nothing class-level),
used for training steps only. Inductor fuses the elementwise work between the matmuls — RoPE,
residual adds, norms, the SiLU gate — and its partitioner recomputes cheap elementwise results in
backward instead of saving them. The layers share the compiled code (transformers' layers have
identical code and dynamo treats module parameters as inputs): the GPU test counts 2 dynamo graphs
for 4 layers. Checkpointing wraps the compiled forward: the recompute in backward runs the compiled
graph again. The fused LoRA projections enter the graph as an opaque op
(:mod:`legaltune.speed.lora_op`), so their in-place GEMM epilogue survives compilation.

The first steps of a run pay the compile (tens of seconds for an 8B layer; inductor's caches
live under legaltune's cache directory, so a second run reuses them). The token dimension is
marked dynamic from the first call, so sequence lengths that vary between micro-batches share one
graph.
"""

from __future__ import annotations

import functools
import importlib.util
import types
import weakref
from typing import Any

import torch
from torch import nn

from legaltune.speed.layers import find_decoder_layers

_COMPILED = "_legaltune_compiled"
_COMPILED_FN = "_legaltune_compiled_fn"


def _training_compiled_forward(layer: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """Training steps run the compiled graph; evaluation and generation (KV cache, one token at a
    time, no grad) run the eager forward, which would otherwise recompile for every new length."""
    if not (layer.training and torch.is_grad_enabled()):
        return layer.__dict__["_legaltune_uncompiled"](*args, **kwargs)
    fn, owner, backend = layer.__dict__[_COMPILED_FN]
    if owner() is not layer:
        # A deep copy of the model: the compiled function still closes over the original layer's
        # forward (functions are copied by reference); compile this layer's own forward instead.
        fn = torch.compile(layer.__dict__["_legaltune_uncompiled"], backend=backend)
        layer.__dict__[_COMPILED_FN] = (fn, weakref.ref(layer), backend)
    if args:
        mark_token_dims(*args, **kwargs)
    else:
        mark_token_dims(kwargs.get("hidden_states"), **kwargs)
    return fn(*args, **kwargs)


def mark_token_dims(hidden: Any, *args: Any, **kwargs: Any) -> None:
    """Mark the token dimension of a layer's inputs dynamic before dynamo sees them.

    Real data gives every micro-batch another length (padded to its longest example, or all its
    examples back to back when padding-free) and, padding-free, another number of examples (the
    ``cu_seq_lens`` boundaries). Left to automatic dynamic shapes, dynamo compiles the first shape
    static, recompiles once per input whose size changed, and past its recompile limit runs the
    layer eager for the rest of the run (13 recompiles in one step of seed 000's preset). Marked up
    front, one graph serves every length. ``hidden`` is the layer input, (batch, tokens, hidden)."""
    if not isinstance(hidden, torch.Tensor) or hidden.dim() < 2 or hidden.shape[1] <= 1:
        return
    tokens = hidden.shape[1]
    for key, value in kwargs.items():
        if key.startswith("cu_seq_lens") and isinstance(value, torch.Tensor):
            torch._dynamo.maybe_mark_dynamic(value, 0)
    stack: list[Any] = [hidden, *args, *kwargs.values()]
    while stack:
        value = stack.pop()
        if isinstance(value, (tuple, list)):
            stack.extend(value)
        elif isinstance(value, torch.Tensor):
            for dim in range(1, value.dim()):
                if value.shape[dim] == tokens:
                    torch._dynamo.maybe_mark_dynamic(value, dim)


@functools.cache
def compile_supported() -> bool:
    """Inductor needs Triton for CUDA kernels; without a GPU, compiling buys nothing here."""
    return torch.cuda.is_available() and importlib.util.find_spec("triton") is not None


def compile_layers(model: nn.Module, *, backend: str = "inductor") -> int:
    """Compile the forward of the decoder layers of this instance; returns how many were compiled.

    Call it before checkpointing is applied, so that the checkpoint wraps the compiled forward.
    Idempotent. ``backend`` is for tests (``"aot_eager"`` checks tracing without a C compiler).
    """
    count = 0
    for layer in find_decoder_layers(model):
        if layer.__dict__.get(_COMPILED):
            continue
        inner = layer.__dict__.get("forward") or types.MethodType(type(layer).forward, layer)
        layer.__dict__["_legaltune_uncompiled"] = inner
        layer.__dict__[_COMPILED_FN] = (torch.compile(inner, backend=backend), weakref.ref(layer), backend)
        layer.forward = types.MethodType(_training_compiled_forward, layer)
        layer.__dict__[_COMPILED] = True
        count += 1
    return count


def uncompile_layers(model: nn.Module) -> int:
    """Undo :func:`compile_layers` on this instance."""
    count = 0
    for layer in find_decoder_layers(model):
        if layer.__dict__.pop(_COMPILED, False):
            inner = layer.__dict__.pop("_legaltune_uncompiled")
            layer.__dict__.pop(_COMPILED_FN, None)
            if getattr(inner, "__func__", None) is type(layer).forward:
                layer.__dict__.pop("forward", None)
            else:
                layer.forward = inner
            count += 1
    return count


def is_compiled(layer: nn.Module) -> bool:
    return bool(layer.__dict__.get(_COMPILED))


def compile_backend(layer: nn.Module) -> str | None:
    """The backend this layer was compiled with (None: not compiled)."""
    return layer.__dict__[_COMPILED_FN][2] if is_compiled(layer) else None


__all__ = [
    "compile_backend",
    "compile_layers",
    "compile_supported",
    "is_compiled",
    "mark_token_dims",
    "uncompile_layers",
]
