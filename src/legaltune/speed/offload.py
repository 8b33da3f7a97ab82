"""Offloaded activation checkpointing (the seed's ``use_gradient_checkpointing="unsloth"``).

Each decoder layer runs under non-reentrant ``torch.utils.checkpoint``: nothing inside the layer
is kept, it is recomputed in backward. What checkpointing *does* keep is the layer's input hidden
state, one ``batch × seq × hidden`` tensor per layer, which at 8k tokens is most of the activation
memory that remains. We move that tensor to pinned CPU memory with a non-blocking copy on a side
CUDA stream, so the copy overlaps the next layers' compute, and copy it back when backward needs
it for the recompute.

The mechanism is ``torch.autograd.graph.saved_tensors_hooks`` around the checkpoint call: the
checkpoint saves its inputs through autograd (so our pack hook sees them), while everything saved
*inside* the layer is handled by the checkpoint's own, innermost hooks. Only tensors on CUDA and of
meaningful size are offloaded, never parameters; on a CPU-only machine packing is the identity, so
the same code path runs (and is tested) there.

Everything is per model instance: each layer's ``forward`` is replaced by a wrapper on that layer
object only, and the model's checkpointing switches are overridden on the instance so that the
Trainer's ``gradient_checkpointing=True`` keeps this mode instead of stacking transformers' own
checkpointing on top.
"""

from __future__ import annotations

import functools
import logging
import types
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from legaltune.speed.layers import Halves, base_model, find_decoder_layers
from legaltune.speed.pinned_arena import PinnedArena
from legaltune.speed.policy import MIN_OFFLOAD_BYTES, pinned_bytes
from legaltune.speed.recompute import RecomputeStats, checkpoint_contexts
from legaltune.speed.state import set_checkpointing

logger = logging.getLogger(__name__)

# Copies out may lag the forward by at least this much before the compute stream waits for them.
MIN_BACKLOG_BYTES = 256 << 20
_INNER = "_legaltune_inner_forward"
_OFFLOADER = "_legaltune_offloader"
_HALVES = "_legaltune_halves"
_STATS = "_legaltune_recompute_stats"  # one RecomputeStats per model, shared by its wrapped layers


class _Packed:
    """One offloaded tensor: its pinned host copy (set when its burst is flushed) and, once read
    ahead, its way back to the GPU."""

    __slots__ = ("__weakref__", "copied", "device", "gpu", "host", "index", "nbytes", "ready")

    def __init__(self, device: torch.device, nbytes: int, index: int) -> None:
        self.device, self.nbytes, self.index = device, nbytes, index
        self.host: torch.Tensor | None = None
        self.copied: torch.cuda.Event | None = None
        self.gpu: torch.Tensor | None = None
        self.ready: torch.cuda.Event | None = None


def _dense(tensor: torch.Tensor) -> bool:
    """Whether the tensor fills one gap-free block of memory in some dimension order (contiguous, or
    a transpose of contiguous such as attention's ``[b, heads, s, d]`` views): then a copy with the
    same strides is one memcpy of that block."""
    if tensor.is_contiguous():
        return True
    order = sorted(range(tensor.dim()), key=lambda d: tensor.stride(d), reverse=True)
    return tensor.permute(order).is_contiguous()


class _Offloader:
    """Pack/unpack hooks that park large CUDA activations in pinned host memory.

    Backward reads the packed tensors back in reverse order. With ``read_ahead`` (the default), when
    one is unpacked the copy of the one packed just before it starts on the side stream, so it runs
    while this layer is recomputed and back-propagated instead of stalling the compute stream when
    the previous layer needs it (one copy per layer: ~1.3-5 ms for 64 MiB, x 32 layers per step).
    The GPU destination is allocated on the compute stream (the side stream only writes it), so
    all activation memory stays in the compute stream's allocator pool.

    The offloader keeps only weak references to what it packed: the autograd graph owns the packed
    objects, so their room in the pinned arena (:mod:`legaltune.speed.pinned_arena`) is free again
    once the graph is, for the next micro-batch to reuse.

    Copies are issued per burst, not per tensor: a compiled layer saves all its activations at once
    at the end of its forward, so ``pack`` only queues the tensor and :meth:`flush` (called by the
    layer wrapper when the layer returns, and by the first unpack) issues the burst's copies after
    one stream wait, under one stream switch, with one completion event. Read-aheads are batched
    the same way. Each stream call costs tens of microseconds of Python, and the CPU issuing a
    layer is, in parts of a step, what the GPU waits for (``benchmarks/train_step.py`` phases).
    """

    def __init__(self, read_ahead: bool = True, layers: int = 1, host_allowance: float | None = None) -> None:
        self._streams: dict[torch.device, torch.cuda.Stream] = {}
        self._packed: list[weakref.ref[_Packed]] = []
        self._backward_started = False
        self.read_ahead = read_ahead
        self.layers = max(layers, 1)  # layers packing into this offloader (sets the read-ahead window)
        self.read_aheads = 0  # copies started ahead of need (tests and profiling read it)
        self.offloaded_bytes = 0  # this forward's bytes moved to the host
        self.kept_bytes = 0  # this forward's large tensors left on the GPU (not one dense block)
        self.stalls = 0  # times the compute stream waited for a copy out to bound GPU memory
        self._ahead_bytes = 0  # read ahead, not yet unpacked
        self._cursor = -1  # next packed index to read ahead
        self._in_flight: list[tuple[torch.cuda.Event, int]] = []  # copies out not yet known done
        self._in_flight_bytes = 0
        self._last_layer_bytes = 0
        self._seen: dict[int, tuple[weakref.ref[torch.Tensor], int]] = {}
        self._pending: list[tuple[torch.Tensor, _Packed]] = []  # packed, copy not yet issued
        self.bursts = 0  # flushes that issued copies (tests read it)
        # Pinned host bytes a forward may park (None: unbounded); see keep_attention.
        self.host_allowance = host_allowance
        self._pinned = 0  # this forward's pinned bytes, as the host allocator rounds them
        self._layers_started = 0  # layers of this forward that asked keep_attention
        self._split_bytes = 0  # pinned bytes of the last layer that kept its attention half
        self.attention_recomputed = 0  # this forward's split layers run whole (host memory)
        self.arena: PinnedArena | None = None  # the pinned host memory, made at the first copy out
        self._arena_failed = False

    def __deepcopy__(self, memo: dict[int, Any]) -> _Offloader:
        # a copied model gets its own (lazily created) side streams
        return _Offloader(read_ahead=self.read_ahead, layers=self.layers, host_allowance=self.host_allowance)

    def keep_attention(self, hidden: torch.Tensor) -> bool:
        """Whether the layer about to run (with this input) may keep its attention half.

        Keeping it parks ~4.5x the layer's input in pinned host memory: at long sequences or large
        batches a whole forward's worth exceeds the machine's RAM. So a layer keeps it only while
        this forward's pinned bytes, plus this layer's (as the last split layer measured, or 5x
        its input before any), plus the inputs of the layers still to come, stay within
        ``host_allowance``: the first layers keep it, the rest are recomputed whole — the same
        rule as ``legaltune plan``'s speed.offload_attention line."""
        if self._backward_started:  # the first layer after a backward: a new forward
            self._new_forward()
        self._layers_started += 1
        if self.host_allowance is None or not hidden.is_cuda:
            return True
        layer_input = pinned_bytes(hidden.numel() * hidden.element_size())
        split = self._split_bytes or 5 * layer_input
        remaining = max(self.layers - self._layers_started, 0)
        if self._pinned + split + remaining * layer_input <= self.host_allowance:
            return True
        self.attention_recomputed += 1
        return False

    def _window(self) -> int:
        """Bytes to keep read ahead in backward: one layer's worth (at least one tensor)."""
        return self.offloaded_bytes // self.layers

    def _stream(self, device: torch.device) -> torch.cuda.Stream:
        if device not in self._streams:
            self._streams[device] = torch.cuda.Stream(device=device)
        return self._streams[device]

    def pack(self, tensor: torch.Tensor) -> Any:
        # parameters first: a bitsandbytes parameter routes every attribute read through Python
        if (
            isinstance(tensor, nn.Parameter)
            or not tensor.is_cuda
            or tensor.numel() * tensor.element_size() < MIN_OFFLOAD_BYTES
        ):
            return tensor
        if self._backward_started:  # the first pack after a backward: a new forward
            self._new_forward()
        if not _dense(tensor):
            self.kept_bytes += tensor.numel() * tensor.element_size()
            return tensor
        # A tensor saved again (RoPE's cos/sin or the attention mask, by every layer) is alive on the
        # GPU for the whole forward anyway: later saves keep it there. (Handing every layer the first
        # layer's packed copy would also move the read-ahead cursor back to the first layer.)
        seen = self._seen.get(tensor.data_ptr())
        if seen is not None and seen[0]() is tensor and seen[1] == tensor._version:
            return tensor
        packed = _Packed(tensor.device, tensor.numel() * tensor.element_size(), len(self._packed))
        self._pending.append((tensor, packed))
        self._packed.append(weakref.ref(packed))
        self._seen[tensor.data_ptr()] = (weakref.ref(tensor), tensor._version)
        self.offloaded_bytes += packed.nbytes
        self._pinned += pinned_bytes(packed.nbytes)
        return packed

    def flush(self) -> None:
        """Issue the copies out of every tensor packed since the last flush (see the class doc)."""
        pending, self._pending = self._pending, []
        self.bursts += bool(pending)
        for device in {packed.device for _, packed in pending}:
            burst = [(t, p) for t, p in pending if p.device == device]
            stream = self._stream(device)
            compute = torch.cuda.current_stream(device)
            # The side stream must see the tensors fully computed before copying them out.
            stream.wait_stream(compute)
            with torch.cuda.stream(stream):
                for tensor, packed in burst:
                    packed.host = self._host_copy(tensor)
                    packed.host.copy_(tensor, non_blocking=True)
                copied = torch.cuda.Event()
                copied.record(stream)
            for tensor, packed in burst:
                packed.copied = copied
                # Tell the caching allocator the side stream still reads this memory, so it is not
                # handed to a later kernel on the compute stream before the copy has finished.
                tensor.record_stream(stream)
            self._bound_in_flight(copied, sum(p.nbytes for _, p in burst), compute)

    def _host_copy(self, tensor: torch.Tensor) -> torch.Tensor:
        """Pinned room for a copy of ``tensor`` with its strides (so the copy is one memcpy of its
        block): in the arena, or from PyTorch's pinned allocator if the arena cannot register."""
        if not self._arena_failed:
            if self.arena is None:
                self.arena = PinnedArena()
            try:
                return self.arena.take(tensor)
            except (RuntimeError, OSError) as error:
                self._arena_failed = True
                logger.warning("pinned arena unavailable (%s); using PyTorch's pinned allocator", error)
        return torch.empty_like(tensor, device="cpu", pin_memory=True)

    def _new_forward(self) -> None:
        self._last_layer_bytes = self._window()
        self._packed, self._backward_started, self._seen = [], False, {}
        self.offloaded_bytes = self.kept_bytes = self._ahead_bytes = 0
        self._pinned = self._layers_started = self.attention_recomputed = 0
        self._cursor = -1

    def _bound_in_flight(self, copied: torch.cuda.Event, nbytes: int, compute: torch.cuda.Stream) -> None:
        """A tensor's GPU memory is freed only once its copy out is done. If the link falls behind
        the forward, make the compute stream wait for the oldest copies (a GPU-side wait) rather
        than let the backlog of not-yet-freed activations grow without bound."""
        self._in_flight.append((copied, nbytes))
        self._in_flight_bytes += nbytes
        while self._in_flight and self._in_flight[0][0].query():
            self._in_flight_bytes -= self._in_flight.pop(0)[1]
        # The running total is a fraction of a layer's bytes early in the forward: use the last
        # forward's per-layer bytes (or a floor on the first step).
        limit = 2 * max(self._last_layer_bytes, self._window(), nbytes, MIN_BACKLOG_BYTES)
        while self._in_flight_bytes > limit and len(self._in_flight) > 1:
            event, size = self._in_flight.pop(0)
            compute.wait_event(event)
            self._in_flight_bytes -= size
            self.stalls += 1

    def unpack(self, packed: Any) -> torch.Tensor:
        if isinstance(packed, torch.Tensor):
            return packed
        if self._pending:  # backward of a forward whose last burst was not flushed by a layer wrapper
            self.flush()
        if not self._backward_started:
            self._backward_started = True
            self._cursor = len(self._packed) - 1
        compute = torch.cuda.current_stream(packed.device)
        if packed.gpu is not None:  # read ahead while the layer after it ran backward
            compute.wait_event(packed.ready)
            tensor, packed.gpu = packed.gpu, None
            self._ahead_bytes -= packed.nbytes
        else:  # the first tensor backward reaches (or read-ahead off, or a second backward)
            compute.wait_event(packed.copied)  # GPU-side wait (no host sync) for the host copy
            tensor = packed.host.to(packed.device, non_blocking=True)  # keeps the strides
        if self.read_ahead:
            self._cursor = min(self._cursor, packed.index - 1)
            self._fill_window(compute)
        return tensor

    def _fill_window(self, compute: torch.cuda.Stream) -> None:
        """Start copies back for the tensors packed before the ones backward is at, newest first,
        until one layer's worth of bytes is on its way."""
        window = self._window()
        reads = []
        while self._cursor >= 0 and (self._ahead_bytes < window or self._ahead_bytes == 0):
            ref = self._packed[self._cursor]
            self._cursor -= 1
            packed = ref()
            if packed is None or packed.gpu is not None:
                continue
            reads.append(packed)
            self._ahead_bytes += packed.nbytes
        if reads:
            self._start_reads(reads, compute)

    def _start_reads(self, reads: list[_Packed], compute: torch.cuda.Stream) -> None:
        """One stream wait and one completion event for a batch of copies back (one device: the
        compute stream's)."""
        # allocated on the compute stream, so activation memory stays in its allocator pool
        gpus = [torch.empty_like(packed.host, device=packed.device) for packed in reads]
        stream = self._stream(reads[0].device)
        stream.wait_stream(compute)  # the memory may still be in use by queued compute work
        waited: set[int] = set()
        with torch.cuda.stream(stream):
            for packed, gpu in zip(reads, gpus, strict=True):
                if id(packed.copied) not in waited:  # a burst shares one event
                    stream.wait_event(packed.copied)
                    waited.add(id(packed.copied))
                gpu.copy_(packed.host, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(stream)
        for packed, gpu in zip(reads, gpus, strict=True):
            gpu.record_stream(stream)
            packed.gpu, packed.ready = gpu, ready
        self.read_aheads += len(reads)


# The wrappers are plain functions bound to one instance with types.MethodType, not closures: a
# bound method is re-bound by copy.deepcopy, so a copied model runs its own layers, not the original's.
def _offloaded_forward(layer: nn.Module, *args: Any, **kwargs: Any) -> Any:
    inner = layer.__dict__.get(_INNER) or types.MethodType(type(layer).forward, layer)
    if not (layer.training and torch.is_grad_enabled()):
        return inner(*args, **kwargs)
    if getattr(layer, "gradient_checkpointing", False):
        # transformers' own checkpointing was switched on behind our back; nesting both would
        # recompute every layer twice.
        logger.warning(
            "transformers checkpointing was enabled on an offload-checkpointed layer; turning it off"
        )
        layer.gradient_checkpointing = False
    # A recompute would append to a KV cache a second time; training never needs one.
    if kwargs.get("use_cache"):
        kwargs["use_cache"] = False
    for key in ("past_key_values", "past_key_value", "layer_past"):
        if kwargs.get(key) is not None:
            kwargs[key] = None
    if not args and "hidden_states" in kwargs:
        # Positional tensors are saved through autograd (and so offloaded); keyword ones are not.
        args = (kwargs.pop("hidden_states"),)
    offloader: _Offloader | None = layer.__dict__[_OFFLOADER]
    halves = layer.__dict__.get(_HALVES)
    contexts = functools.partial(checkpoint_contexts, layer.__dict__.get(_STATS))
    if halves is not None and offloader is not None and len(args) == 1 and offloader.keep_attention(args[0]):
        attention, mlp = halves
        # Attention kept, its saved activations offloaded; the MLP checkpointed (input offloaded).
        before = offloader._pinned
        with torch.autograd.graph.saved_tensors_hooks(offloader.pack, offloader.unpack):
            mid = attention(layer, args[0], **kwargs)
            offloader.flush()
            out = checkpoint(mlp, layer, mid, use_reentrant=False, context_fn=contexts)
        offloader.flush()
        offloader._split_bytes = offloader._pinned - before
        return out
    if offloader is None:  # recompute-only layer (a partial checkpointing policy)
        return checkpoint(inner, *args, use_reentrant=False, context_fn=contexts, **kwargs)
    with torch.autograd.graph.saved_tensors_hooks(offloader.pack, offloader.unpack):
        out = checkpoint(inner, *args, use_reentrant=False, context_fn=contexts, **kwargs)
    offloader.flush()
    return out


def _is_wrapped(layer: nn.Module) -> bool:
    return getattr(layer.__dict__.get("forward"), "__func__", None) is _offloaded_forward


def _wrap_layer(
    layer: nn.Module, offloader: _Offloader | None, stats: RecomputeStats, halves: Halves | None = None
) -> None:
    if "forward" in layer.__dict__:  # e.g. accelerate's dispatch hook: call it inside, restore on disable
        layer.__dict__[_INNER] = layer.__dict__["forward"]
    layer.__dict__[_OFFLOADER] = offloader
    layer.__dict__[_STATS] = stats
    if halves is not None:
        layer.__dict__[_HALVES] = halves
    layer.forward = types.MethodType(_offloaded_forward, layer)


def _unwrap_layer(layer: nn.Module) -> None:
    if not _is_wrapped(layer):
        return
    del layer.__dict__["forward"]
    layer.__dict__.pop(_OFFLOADER, None)
    layer.__dict__.pop(_HALVES, None)
    layer.__dict__.pop(_STATS, None)
    if _INNER in layer.__dict__:
        layer.forward = layer.__dict__.pop(_INNER)


def _keep_offload(hf: nn.Module, *_args: Any, **_kwargs: Any) -> None:
    """Stands in for ``*_checkpointing_enable``: the Trainer's switch keeps offloaded checkpointing."""
    logger.info("model uses offloaded checkpointing; keeping it instead of transformers' checkpointing")
    enable_offloaded_checkpointing(hf)


def _gradient_checkpointing_disable(hf: nn.Module) -> None:
    disable_offloaded_checkpointing(hf)
    type(hf).gradient_checkpointing_disable(hf)


def _activation_checkpointing_disable(hf: nn.Module) -> None:
    disable_offloaded_checkpointing(hf)
    type(hf).activation_checkpointing_disable(hf)


# transformers 5.17 has only the gradient_* names; 5.23 adds activation_* (the Trainer calls those).
_SWITCHES = {
    "gradient_checkpointing_enable": _keep_offload,
    "activation_checkpointing_enable": _keep_offload,
    "gradient_checkpointing_disable": _gradient_checkpointing_disable,
    "activation_checkpointing_disable": _activation_checkpointing_disable,
}


def is_offloaded(model: nn.Module) -> bool:
    """Whether legaltune's per-layer checkpointing (offloaded or partial) is active on ``model``."""
    return any(_is_wrapped(layer) for layer in find_decoder_layers(model))


def recompute_stats(model: nn.Module) -> RecomputeStats | None:
    """What this model's recomputes saved so far (None: no layer runs under legaltune's checkpointing)."""
    return next((layer.__dict__[_STATS] for layer in find_decoder_layers(model) if _is_wrapped(layer)), None)


def pinned_arena_stats(model: nn.Module) -> tuple[int, int, float] | None:
    """(bytes registered, the most bytes one forward kept there at once, seconds spent faulting in
    and registering) of this model's pinned arena; None before its first offloaded copy, or
    without offloading."""
    for layer in find_decoder_layers(model):
        offloader = layer.__dict__.get(_OFFLOADER) if _is_wrapped(layer) else None
        if offloader is not None and offloader.arena is not None:
            arena = offloader.arena
            return arena.reserved, arena.peak_live_bytes, arena.register_seconds
    return None


def checkpointed_layers(model: nn.Module) -> int:
    """How many decoder layers run under legaltune's checkpointing wrapper."""
    return sum(_is_wrapped(layer) for layer in find_decoder_layers(model))


def enable_offloaded_checkpointing(
    model: nn.Module,
    *,
    layers: int | None = None,
    offload: bool = True,
    read_ahead: bool = True,
    split: Callable[[nn.Module], Halves | None] | None = None,
    split_layers: int | None = None,
    host_allowance: float | None = None,
) -> None:
    """Checkpoint decoder layers of this model instance, offloading the saved layer inputs to CPU.

    ``layers``: how many, counted from the first layer (None = all). The first layers are the ones
    checkpointed because their saved inputs wait longest for backward (the copy has the most time
    to hide), and the last layers' kept activations are the first backward needs. ``offload=False``
    recomputes those layers without moving their inputs (plain non-reentrant checkpointing).
    ``read_ahead=False`` copies each offloaded input back only when backward needs it (slower; for
    measuring what the read-ahead buys).

    ``split`` (offload only): called with each layer, returns the layer's two halves
    ``(attention(layer, hidden, **kw), mlp(layer, hidden))`` or None. A layer with halves keeps its
    attention half (every activation it saves goes to the host, none is recomputed) and
    checkpoints only its MLP half: backward then recomputes no attention, at the cost of moving
    ~5x the bytes over the host link (see :mod:`legaltune.speed.split_layer`). ``split_layers``:
    only the first N checkpointed layers are split (None = all). ``host_allowance``: pinned host
    bytes one forward may park; split layers beyond it run whole (see ``_Offloader.keep_attention``).

    Idempotent. Turns transformers' own checkpointing off first, and makes later calls to the
    model's ``gradient_checkpointing_enable``/``activation_checkpointing_enable`` (the Trainer's
    ``gradient_checkpointing=True``) keep this mode; ``*_disable`` or
    :func:`disable_offloaded_checkpointing` turn it off.
    """
    all_layers = find_decoder_layers(model)
    hf = base_model(model)
    if is_offloaded(model):
        return
    count = len(all_layers) if layers is None else max(0, min(layers, len(all_layers)))
    if any(getattr(m, "gradient_checkpointing", False) for m in hf.modules()):
        name = "activation_checkpointing_disable"
        getattr(type(hf), name if hasattr(type(hf), name) else "gradient_checkpointing_disable")(hf)
    if count == 0:
        set_checkpointing(hf, "none")
    else:
        offloader = _Offloader(read_ahead, layers=count, host_allowance=host_allowance) if offload else None
        split_count = 0
        stats = RecomputeStats()
        for index, layer in enumerate(list(all_layers)[:count]):
            wanted = split is not None and offload and (split_layers is None or index < split_layers)
            halves = split(layer) if wanted else None
            split_count += halves is not None
            _wrap_layer(layer, offloader, stats, halves)
        for name, function in _SWITCHES.items():
            if hasattr(type(hf), name):
                setattr(hf, name, types.MethodType(function, hf))
        kind = "offload" if offload else "recompute"
        if split_count:
            kind += " (attention kept)" if split_count == count else f" (attention kept in {split_count})"
        set_checkpointing(hf, kind if count == len(all_layers) else f"{kind} {count}/{len(all_layers)}")


def disable_offloaded_checkpointing(model: nn.Module) -> None:
    """Undo :func:`enable_offloaded_checkpointing` on this instance (no-op if it is not active)."""
    hf = base_model(model)
    wrapped = checkpointed_layers(model)
    for layer in find_decoder_layers(model):
        _unwrap_layer(layer)
    for name in _SWITCHES:
        hf.__dict__.pop(name, None)
    if wrapped:  # ours, in any mode (transformers' own recompute is not ours to report as off)
        set_checkpointing(hf, "none")


__all__ = [
    "MIN_OFFLOAD_BYTES",
    "checkpointed_layers",
    "disable_offloaded_checkpointing",
    "enable_offloaded_checkpointing",
    "is_offloaded",
    "pinned_arena_stats",
    "recompute_stats",
]
