"""What the methods after SFT (training.method dpo / orpo / grpo) add to the memory plan.

* dpo / orpo: TRL runs a pair's chosen and rejected sequences as one batch, so a micro-batch of N
  pairs is 2N rows. DPO's reference is a frozen copy of the init adapter (TRL's "ref" adapter) on the
  same base: one more set of LoRA weights, and a forward without gradients, whose activations are
  freed layer by layer (nothing to add beside the step's own).
* grpo: before each optimizer step the policy samples per_device_train_batch_size ×
  gradient_accumulation_steps answers in one ``generate``: a KV cache of that many rows of prompt +
  max_completion_length tokens, and the next-token logits of every row. Sampling and the training
  step do not overlap in time; the estimate adds both, an upper bound. With grpo.beta > 0 the
  reference is the frozen adapter copy, as for DPO.
"""

from __future__ import annotations

from legaltune.config.schema import PREFERENCE_METHODS, Config
from legaltune.model.arch import Arch
from legaltune.plan.memory import MemoryEstimate
from legaltune.plan.params import ParamCount


def rows_per_example(cfg: Config) -> int:
    """Rows one training example puts in a micro-batch (a preference pair: chosen and rejected)."""
    return 2 if cfg.training.method in PREFERENCE_METHODS else 1


def reference_copy(cfg: Config) -> bool:
    """Whether the method keeps a frozen copy of the init adapter as its reference."""
    t = cfg.training
    return t.init_adapter is not None and (t.method == "dpo" or (t.method == "grpo" and cfg.grpo.beta > 0))


def add_method_memory(
    cfg: Config, arch: Arch, params: ParamCount, memory: MemoryEstimate, *, seq_len: int, compute_bytes: int
) -> None:
    """Add the method's components and notes to ``memory`` (the SFT-shaped estimate of its step)."""
    method = cfg.training.method
    if method == "sft":
        return
    if reference_copy(cfg):
        memory.components["reference: frozen copy of the init adapter (TRL's 'ref' adapter; base shared)"] = (
            params.trainable * 4.0
        )
    if method in PREFERENCE_METHODS:
        memory.notes.append(
            f"{method}: chosen and rejected run as one batch (2 rows per pair, counted above)"
            + ("; the reference pass keeps no activations" if method == "dpo" else "; no reference model")
        )
    if method != "grpo":
        return
    t = cfg.training
    rows = t.per_device_train_batch_size * t.gradient_accumulation_steps
    kv = 2 * arch.layers * arch.kv_heads * arch.head_dim * seq_len * rows * compute_bytes
    logits = rows * arch.vocab * 4.0 * 2  # fp32 next-token logits and the processed copy sampling draws from
    memory.components[f"generation: KV cache of {rows} sampled answers × {seq_len:,} tokens"] = float(
        kv + logits
    )
    memory.notes.append(
        "grpo: answers are sampled before each step, not during it; the estimate adds both (an upper bound)"
    )
