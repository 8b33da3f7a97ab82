"""What differs between architectures in a GGUF: llama, qwen2 and gemma3 (text).

Tensor names come from the ``gguf`` package's own HF → GGUF name map (``TensorNameMap``), so only
the transformations and hyperparameters that llama.cpp expects per architecture live here:

* llama: Q/K rows permuted (HF rotate-half RoPE → llama.cpp's interleaved pairs; see gguf_export).
* qwen2: llama.cpp runs it with NeoX (rotate-half) RoPE, so Q/K stay as they are; q/k/v have biases.
* gemma3: HF's RMSNorm multiplies by (1 + w), llama.cpp's by w, so every norm weight is stored + 1;
  sliding-window layers are named per layer (``layer_types``) with their own RoPE base; the
  embedding scale √hidden and the tied output are llama.cpp's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gguf
import numpy as np

from legaltune.export.merge import ExportError

Loader = Callable[[], np.ndarray]


def rope_parameters(config: dict[str, Any], layer_type: str | None = None) -> dict[str, Any]:
    """transformers ≥5 writes rope_parameters (per layer type for Gemma 3); older config.json files
    rope_theta + rope_scaling."""
    rope = dict(config.get("rope_parameters") or {})
    if layer_type and isinstance(rope.get(layer_type), dict):
        rope = dict(rope[layer_type])
    elif "full_attention" in rope and isinstance(rope["full_attention"], dict):
        rope = dict(rope["full_attention"])
    if not rope:
        rope = {"rope_theta": config.get("rope_theta", 10000.0), **(config.get("rope_scaling") or {})}
        if layer_type == "sliding_attention":
            rope = {"rope_theta": config.get("rope_local_base_freq", 10000.0)}
    rope.setdefault("rope_type", rope.get("type", "default"))
    return rope


def permute_qk(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """HF rotate-half row order → GGUF interleaved order, per head (rows or a 1-D bias)."""
    half = weight.shape[0] // n_heads // 2
    return weight.reshape(n_heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


@dataclass(frozen=True)
class Arch:
    """One architecture: its GGUF name, which HF classes map to it, and what is done to its tensors."""

    name: str  # GGUF general.architecture
    model_types: tuple[str, ...]
    gguf_arch: gguf.MODEL_ARCH
    interleave_rope: bool = False  # Q/K rows permuted to llama.cpp's interleaved RoPE pairs
    norm_shift: float = 0.0

    def tensor_name(self, hf_name: str, n_blocks: int) -> str | None:
        """GGUF name of an HF tensor; None for buffers GGUF does not store (rotary inv_freq)."""
        stem, _, suffix = hf_name.rpartition(".")
        if stem.endswith("rotary_emb") or suffix == "inv_freq":
            return None
        name = gguf.get_tensor_name_map(self.gguf_arch, n_blocks).get_name(
            hf_name, try_suffixes=(".weight", ".bias")
        )
        if name is None:
            raise ExportError(
                f"tensor {hf_name} has no GGUF name in the {self.name} layout; is this a plain "
                f"{'/'.join(self.model_types)} model?"
            )
        return name

    def transform(self, gguf_name: str, load: Loader, config: dict[str, Any]) -> Loader:
        """The loader of the tensor as llama.cpp wants it (permuted, shifted, or as is)."""
        kind = gguf_name.split(".")[-2]
        if self.interleave_rope and kind in ("attn_q", "attn_k"):
            heads = config["num_attention_heads"]
            if kind == "attn_k":
                heads = config.get("num_key_value_heads") or heads
            return lambda: permute_qk(load(), heads)
        if self.norm_shift and gguf_name.endswith("norm.weight"):
            return lambda: load() + np.float32(self.norm_shift)
        return load

    def hyperparameters(self, writer: gguf.GGUFWriter, config: dict[str, Any], head_dim: int) -> None:
        for gguf_key, hf_key in {
            "context_length": "max_position_embeddings",
            "embedding_length": "hidden_size",
            "block_count": "num_hidden_layers",
            "feed_forward_length": "intermediate_size",
            "head_count": "num_attention_heads",
            "layer_norm_rms_eps": "rms_norm_eps",
            "vocab_size": "vocab_size",
        }.items():
            getattr(writer, f"add_{gguf_key}")(config[hf_key])
        writer.add_head_count_kv(config.get("num_key_value_heads") or config["num_attention_heads"])
        if self.name == "gemma3" or head_dim != config["hidden_size"] // config["num_attention_heads"]:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        rope = rope_parameters(config)
        writer.add_rope_freq_base(rope["rope_theta"])
        if self.name == "llama":
            writer.add_rope_dimension_count(head_dim)
        if rope["rope_type"] == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(rope["factor"])
        elif rope["rope_type"] not in ("default", "llama3") or (
            rope["rope_type"] == "llama3" and self.name != "llama"
        ):
            raise ExportError(
                f"RoPE type {rope['rope_type']!r} is not supported by this exporter for {self.name}"
            )
        if self.name == "qwen2" and config.get("use_sliding_window"):
            raise ExportError("use_sliding_window: true is not supported for qwen2 GGUF export")
        if self.name == "gemma3":
            _gemma3(writer, config, head_dim)


def _gemma3(writer: gguf.GGUFWriter, config: dict[str, Any], head_dim: int) -> None:
    scalar = config.get("query_pre_attn_scalar", head_dim)
    if scalar != head_dim:
        # llama.cpp scales attention by 1/√head_dim for every Gemma 3 but the 27B layout
        raise ExportError(
            f"query_pre_attn_scalar {scalar} ≠ head_dim {head_dim}: llama.cpp scales Gemma 3 attention "
            "by 1/√head_dim, so this model would compute a different attention there"
        )
    if config.get("attn_logit_softcapping"):
        raise ExportError("attn_logit_softcapping is not part of Gemma 3 in llama.cpp")
    if config.get("final_logit_softcapping"):
        writer.add_final_logit_softcapping(config["final_logit_softcapping"])
    layer_types = config.get("layer_types") or []
    if "sliding_attention" in layer_types and config.get("sliding_window"):
        writer.add_sliding_window(config["sliding_window"])
        writer.add_sliding_window_pattern([t == "sliding_attention" for t in layer_types])
        local = rope_parameters(config, "sliding_attention")
        if local["rope_type"] != "default":
            raise ExportError(f"sliding-window RoPE type {local['rope_type']!r} is not supported for gemma3")
        writer.add_rope_freq_base_swa(local["rope_theta"])


ARCHS = {
    arch.name: arch
    for arch in (
        Arch("llama", ("llama",), gguf.MODEL_ARCH.LLAMA, interleave_rope=True),
        Arch("qwen2", ("qwen2",), gguf.MODEL_ARCH.QWEN2),
        Arch("gemma3", ("gemma3_text",), gguf.MODEL_ARCH.GEMMA3, norm_shift=1.0),
    )
}
SUPPORTED = ", ".join(f"{a.name} ({'/'.join(a.model_types)})" for a in ARCHS.values())


def arch_for(config: dict[str, Any], where: str) -> Arch:
    """The architecture of a config.json, or an error naming what is supported."""
    model_type = config.get("model_type", "unknown")
    for arch in ARCHS.values():
        if model_type in arch.model_types:
            return arch
    hint = ""
    if model_type == "gemma3":
        hint = " (a multimodal Gemma 3: export its text model, Gemma3ForCausalLM, instead)"
    archs = config.get("architectures") or [model_type]
    raise ExportError(
        f"{where} is a {archs[0]} model (model_type {model_type!r}){hint}; GGUF export supports {SUPPORTED}. "
        "Use llama.cpp's convert_hf_to_gguf.py for others."
    )
