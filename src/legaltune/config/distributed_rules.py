"""Config rules of the distributed: section that involve other sections (run by the config loader, beside
method_rules.py): what FSDP2 allows of a quantized base."""

from __future__ import annotations

from collections.abc import Callable

from legaltune.config.schema import Config

# (key path, what is wrong, how to fix it)
Bad = Callable[[str, str, str], None]


def check_distributed(cfg: Config, bad: Bad) -> None:
    """FSDP2 with a quantized base: what bitsandbytes' weights allow."""
    q = cfg.quantization
    if cfg.distributed.strategy != "fsdp":
        return
    if q.load_in_8bit:
        bad(
            "distributed.strategy",
            "fsdp cannot shard an 8-bit (LLM.int8) base: FSDP2 shards floating-point weights only",
            "set distributed.strategy: ddp (each GPU holds the 8-bit base), or quantization.load_in_4bit instead",
        )
    if q.load_in_fp8:
        bad(
            "quantization.load_in_fp8",
            "fsdp with an FP8 base is not supported yet: sharding the float8 weights apart from their "
            "per-channel scales is untested",
            "set distributed.strategy: ddp (each GPU holds the FP8 base, ~1 byte per weight), or quantization.load_in_fp8: false",
        )
    if q.load_in_4bit and q.bnb_4bit_quant_storage != "uint8":
        bad(
            "quantization.bnb_4bit_quant_storage",
            f"{q.bnb_4bit_quant_storage} storage lets FSDP2 shard the packed 4-bit weights, but the gathered "
            "weight comes back as a plain tensor without its quantization state (bitsandbytes issue #1945), so "
            "the layers would compute with the packed bytes as if they were weights",
            "set quantization.bnb_4bit_quant_storage: uint8 (the 4-bit base then stays whole on every GPU; LoRA, "
            "gradients and optimizer states are sharded), or distributed.strategy: ddp",
        )


__all__ = ["check_distributed"]
