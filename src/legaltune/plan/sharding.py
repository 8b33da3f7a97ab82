"""Per-GPU bytes of the model's state (weights, LoRA weights, gradients, optimizer) under DDP or FSDP2.

DDP keeps the whole state on every GPU, plus its gradient buckets: the gradients are copied into
flat fp32 buckets that the all-reduce works on (``gradient_as_bucket_view`` is off in the Trainer).
FSDP2 (``fully_shard`` per decoder layer, as accelerate applies it) keeps 1/N of every parameter,
gradient and optimizer state on each of N GPUs and gathers a layer whole while it runs: with
``reshard_after_forward`` the current layer and the next one, prefetched (two layers); without it
every layer gathered in forward stays until its backward (the whole model). The head (with tied
embeddings, the embedding matrix it shares) is gathered from the end of forward to the start of
backward in accelerate's wrapping, so it is counted whole. A 4-bit base is not sharded: FSDP2
cannot shard bitsandbytes' packed weights, and accelerate leaves them out (whole on every GPU).
Activations are per GPU under both: each GPU runs its own micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass

from legaltune.model.arch import Arch


@dataclass(frozen=True)
class Parallel:
    """How a run is spread over GPUs, as the memory plan needs it."""

    world_size: int = 1
    strategy: str = "ddp"  # "ddp" or "fsdp" (distributed.strategy)
    reshard_after_forward: bool = True

    @property
    def shards(self) -> int:
        """Into how many pieces each sharded tensor is cut (1: replicated)."""
        return self.world_size if self.strategy == "fsdp" and self.world_size > 1 else 1

    @property
    def label(self) -> str:
        if self.world_size <= 1:
            return "1 GPU"
        return f"{self.strategy} over {self.world_size} GPUs"


def state_components(
    arch: Arch,
    *,
    weights: float,
    weights_name: str,
    linear_weights: float,
    trainable: int,
    optimizer_bytes: float,
    optimizer_name: str,
    compute_bytes: int,
    quantized: bool,
    parallel: Parallel,
) -> dict[str, float]:
    """Bytes per GPU of the model state. ``weights``: the whole base as stored (``linear_weights`` of it
    in the decoder layers' projections); ``trainable``: LoRA (and other trained) parameters, fp32."""
    n = parallel.shards
    lora = trainable * 4.0
    if n == 1:
        out = {
            weights_name: weights,
            "LoRA parameters (fp32)": lora,
            "LoRA gradients (fp32)": lora,
            f"optimizer states ({optimizer_name})": optimizer_bytes,
        }
        if parallel.world_size > 1:
            out["DDP gradient buckets (fp32)"] = lora
        return out
    # the 4-bit projections stay whole; the rest (embeddings, norms, head) is sharded
    whole = linear_weights if quantized else 0.0
    sharded = weights - whole
    out = {
        f"{weights_name}, {'projections whole, rest ' if quantized else ''}sharded 1/{n}": whole
        + sharded / n,
        f"LoRA parameters (fp32), sharded 1/{n}": lora / n,
        f"LoRA gradients (fp32), sharded 1/{n}": lora / n,
        f"optimizer states ({optimizer_name}), sharded 1/{n}": optimizer_bytes / n,
    }
    embedding = arch.vocab * arch.hidden * compute_bytes
    head = embedding  # tied or not, one vocab x hidden matrix is gathered through the step
    layer = (sharded - embedding * (1 if arch.tie_embeddings else 2)) / arch.layers
    layer_lora = lora / arch.layers * compute_bytes / 4  # gathered in the compute dtype
    gathered_layers = 2 if parallel.reshard_after_forward else arch.layers
    out[f"gathered for compute ({gathered_layers} layers + head)"] = (
        gathered_layers * (max(layer, 0.0) + layer_lora) + head
    )
    return out


__all__ = ["Parallel", "state_components"]
