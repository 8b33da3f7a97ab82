"""The frozen input embedding kept in host memory: a lookup is a gather, not a GEMM.

Llama-3.1-8B's input embedding is 128,256 x 4,096 bf16 = 1.0 GiB that a LoRA run never trains and
reads only to look up each token's row. Where GPU memory is what limits a run (every layer
checkpointed, ``speed.gpu_memory_gb`` small, a 4-bit or FP8 base), the table lives in pinned host
memory instead. On a CUDA GPU with Triton, a kernel gathers each token's row straight from the
pinned table through its device mapping (at 8,192 tokens, 64 MiB over the host link), so the GPU
never waits for the CPU. Without Triton the rows are gathered on the CPU and copied over; that
needs the token ids on the CPU first, a synchronisation that measured 75 ms of a 2048×4 step of
Llama-3.1-8B on the H200 (the GPU's queue drains, then idles while the CPU issues the forward).
The values are the table's own, bit for bit, either way.

The weight leaves ``parameters()`` and ``state_dict()`` (a plain attribute now), so everything
that reads the model's device from its first parameter still finds the GPU, and ``.to()`` leaves
it where it is. Only a plain ``nn.Embedding`` whose table is not tied to the LM head (the head
needs it on the GPU) and has no adapter moves; anything else is left as it is and said so.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn


def host_embedding_blocker(model: Any) -> str | None:
    """Why the input embedding of ``model`` cannot live in host memory (None: it can)."""
    emb = model.get_input_embeddings()
    if type(emb) is not nn.Embedding:  # a scaled or adapted embedding has a forward of its own
        return f"the input embedding is a {type(emb).__name__}, not a plain nn.Embedding"
    weight = emb._parameters.get("weight")
    if weight is None:
        return "the input embedding is already in host memory"
    head = model.get_output_embeddings()
    if head is not None and getattr(head, "weight", None) is weight:
        return "the input embedding is tied to the LM head, which needs it on the GPU"
    if weight.requires_grad:
        return "the input embedding is trained"
    return None


GATHER_BLOCK = 1024


def _device_gather(table: torch.Tensor, input_ids: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``table[input_ids]`` on ``device`` by the Triton kernel reading the pinned ``table``."""
    from legaltune.speed.host_gather_kernels import gather_rows

    ids = input_ids.to(device).reshape(-1).contiguous()
    rows, dim = table.shape
    out = torch.empty(ids.numel(), dim, dtype=table.dtype, device=device)
    if ids.numel():
        with torch.cuda.device(device):
            gather_rows[(ids.numel(),)](table, ids, out, rows, DIM=dim, BLOCK=GATHER_BLOCK)
    return out.view(*input_ids.shape, dim)


def _gathered_on_device(self: nn.Embedding, input_ids: torch.Tensor) -> torch.Tensor:
    return _device_gather(self.weight, input_ids, self.compute_device)


def _device_gather_works(table: torch.Tensor, device: torch.device) -> bool:
    """Whether the kernel runs here and reads the pinned table right (first, middle and last rows,
    against the table itself); anything else keeps the CPU lookup."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    probe = torch.tensor([0, table.shape[0] // 2, table.shape[0] - 1])
    try:
        got = _device_gather(table, probe, device).cpu()
    except Exception:  # an old driver or Triton without host-pointer support: the CPU path still works
        return False
    return torch.equal(got, table[probe])


def _host_lookup(self: nn.Embedding, input_ids: torch.Tensor) -> torch.Tensor:
    rows = nn.functional.embedding(
        input_ids.to("cpu"),
        self.weight,
        self.padding_idx,
        self.max_norm,
        self.norm_type,
        self.scale_grad_by_freq,
    )
    if self.compute_device.type == "cuda":
        # pinned, so the copy runs asynchronously; PyTorch's host allocator keeps the block until it is done
        return rows.pin_memory().to(self.compute_device, non_blocking=True)
    return rows.to(self.compute_device)


def embeddings_to_host(model: Any) -> int:
    """Move the input embedding table of ``model`` (a transformers or PEFT model instance) to
    pinned host memory and look tokens up there; returns the bytes it took off the device, 0
    where :func:`host_embedding_blocker` says it cannot."""
    if host_embedding_blocker(model) is not None:
        return 0
    emb = model.get_input_embeddings()
    weight = emb._parameters.pop("weight")
    host = weight.detach().to("cpu")
    if weight.is_cuda:
        host = host.pin_memory()
    emb.compute_device = weight.device
    emb.weight = host  # a plain attribute: not a parameter, not in state_dict, not moved by .to()
    on_device = weight.is_cuda and emb.max_norm is None and _device_gather_works(host, weight.device)
    emb.host_gather = "GPU kernel" if on_device else "CPU"
    emb.forward = types.MethodType(_gathered_on_device if on_device else _host_lookup, emb)
    return weight.numel() * weight.element_size()


__all__ = ["embeddings_to_host", "host_embedding_blocker"]
