"""Write a Llama-architecture model (or a run, merged first) as a GGUF file for llama.cpp and friends.

Besides renaming tensors, one transformation matters: HF Llama applies RoPE with ``rotate_half``,
rotating each head's dimension i together with i + d/2, while llama.cpp's Llama RoPE rotates the
adjacent pairs (2i, 2i+1). HF's checkpoints were themselves permuted from Meta's interleaved layout,
so we permute the rows of W_q and W_k back, per head (row i → 2i, row i + d/2 → 2i + 1). Both q and
k get the same permutation, so every q·k dot product — and the model's output — is unchanged.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable
from math import pi, prod
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

from legaltune.export.merge import ExportError, inspect_run, load_merged

TYPES = {
    "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
SUPPORTED = ("LlamaForCausalLM",)  # SmolLM/SmolLM2, Llama-2/3.x
# HF module path inside model.layers.N → GGUF name inside blk.N
_LAYER = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
_GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
# Llama-3's pre-tokenizer split, as its tokenizer.json writes it; llama.cpp calls it "llama-bpe".
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

Loader = Callable[[], np.ndarray]


def permute_qk(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """HF rotate-half row order → GGUF interleaved order, per head (rows or a 1-D bias)."""
    half = weight.shape[0] // n_heads // 2
    return weight.reshape(n_heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_name(hf_name: str) -> str | None:
    """GGUF tensor name for an HF Llama tensor; None for buffers that GGUF does not store."""
    stem, _, suffix = hf_name.rpartition(".")
    if stem.endswith("rotary_emb") or suffix == "inv_freq":
        return None
    if stem in _GLOBAL:
        return f"{_GLOBAL[stem]}.{suffix}"
    match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", stem)
    if match and match.group(2) in _LAYER:
        return f"blk.{match.group(1)}.{_LAYER[match.group(2)]}.{suffix}"
    raise ExportError(f"tensor {hf_name} has no GGUF name in the Llama layout; is this a plain Llama model?")


def rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """transformers ≥5 writes rope_parameters; older config.json files rope_theta + rope_scaling."""
    rope = dict(config.get("rope_parameters") or {})
    if not rope:
        rope = {"rope_theta": config.get("rope_theta", 10000.0), **(config.get("rope_scaling") or {})}
    rope.setdefault("rope_type", rope.get("type", "default"))
    return rope


def llama3_rope_factors(rope: dict[str, Any], head_dim: int) -> np.ndarray:
    """Llama-3.x RoPE scaling as llama.cpp's rope_freqs tensor: HF divides each inverse frequency by
    `factor` (long wavelengths), 1 (short) or a smooth mix; llama.cpp takes that divisor per frequency."""
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old_ctx = rope["original_max_position_embeddings"]
    inv_freq = 1.0 / rope["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * pi / inv_freq
    smooth = (old_ctx / wavelen - low) / (high - low)
    mixed = 1.0 / ((1 - smooth) / factor + smooth)
    divisors = np.where(wavelen < old_ctx / high, 1.0, np.where(wavelen > old_ctx / low, factor, mixed))
    return divisors.astype(np.float32)


def _tensor_type(shape: tuple[int, ...], qtype: Q) -> Q:
    if len(shape) == 1:
        return Q.F32  # norms, biases, rope_freqs: tiny, and precision-sensitive
    if qtype == Q.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0]:
        return Q.F16  # rows that are not whole q8_0 blocks stay f16, as llama.cpp does
    return qtype


def _check_quantizer(qtype: Q) -> None:
    try:  # fail before a long merge, not after it
        gguf.quants.quantize(np.zeros((1, 32), dtype=np.float32), qtype)
    except (AttributeError, NotImplementedError) as exc:
        raise ExportError(
            f"the installed gguf package cannot write {qtype.name} ({exc}); upgrade gguf, or export f16 "
            "and quantize with llama.cpp's llama-quantize"
        ) from exc


def _check_architecture(config: dict[str, Any], where: str) -> None:
    archs = config.get("architectures") or [config.get("model_type", "unknown")]
    if archs[0] not in SUPPORTED or config.get("model_type", "llama") != "llama":
        raise ExportError(
            f"{where} is a {archs[0]} model; GGUF export supports Llama-architecture models only "
            f"({', '.join(SUPPORTED)}: SmolLM2, Llama-3.x). Use llama.cpp's convert_hf_to_gguf.py for others."
        )


def _safetensors_tensors(model_dir: Path) -> dict[str, tuple[tuple[int, ...], Loader]]:
    """Shapes now, data on demand (memory-mapped): an 8B model is converted one tensor at a time."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ExportError(f"{model_dir} has config.json but no *.safetensors weights")
    tensors: dict[str, tuple[tuple[int, ...], Loader]] = {}
    for handle in (safe_open(str(file), framework="pt") for file in files):
        for key in handle.keys():
            load = lambda f=handle, k=key: f.get_tensor(k).float().numpy()  # noqa: E731
            tensors[key] = (tuple(handle.get_slice(key).get_shape()), load)
    return tensors


def _tokenizer_metadata(writer: gguf.GGUFWriter, tokenizer: Any, vocab_size: int) -> None:
    """BPE vocabulary, token types, merges, special ids and chat template, under llama.cpp's keys."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("decoder")):
        raise ExportError(
            f"the tokenizer is not byte-level BPE (model {model.get('type')!r}); GGUF export writes the "
            "'gpt2' tokenizer model of Llama-3 and SmolLM2 only"
        )
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]  # rows of the embedding that no token uses
    types = [gguf.TokenType.UNUSED] * vocab_size
    for token, index in tokenizer.get_vocab().items():
        if index >= vocab_size:
            raise ExportError(f"token {token!r} has id {index} ≥ the model's vocab_size {vocab_size}")
        tokens[index], types[index] = token, gguf.TokenType.NORMAL
    for index, added in tokenizer.added_tokens_decoder.items():
        types[index] = gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(spec.get("pre_tokenizer")))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])])
    ids = {name: getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "unk", "pad")}
    for name, index in ids.items():
        if index is not None:
            getattr(writer, f"add_{name}_token_id")(index)
    # Whether encoding adds BOS/EOS decides how llama.cpp tokenizes a prompt; ask the tokenizer itself.
    plain, full = tokenizer("a", add_special_tokens=False)["input_ids"], tokenizer("a")["input_ids"]
    extra = len(full) > len(plain)
    writer.add_add_bos_token(bool(extra and ids["bos"] is not None and full[0] == ids["bos"]))
    writer.add_add_eos_token(bool(extra and ids["eos"] is not None and full[-1] == ids["eos"]))
    if isinstance(tokenizer.chat_template, str):
        writer.add_chat_template(tokenizer.chat_template)


def _pre_tokenizer(pre: dict[str, Any] | None) -> str:
    """llama.cpp's name for this pre-tokenizer (it picks its split regex by this name)."""
    steps = (pre or {}).get("pretokenizers", [pre] if pre else [])
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and steps[0].get("pattern", {}).get("Regex") == _LLAMA3_SPLIT:
        return "llama-bpe"
    message = f"unrecognised pre-tokenizer {kinds}; writing 'default', llama.cpp may split text differently"
    warnings.warn(message, stacklevel=3)
    return "default"


def _hyperparameters(writer: gguf.GGUFWriter, config: dict[str, Any], head_dim: int, name: str) -> None:
    writer.add_type("model")
    writer.add_name(name)
    keys = {
        "context_length": "max_position_embeddings",
        "embedding_length": "hidden_size",
        "block_count": "num_hidden_layers",
        "feed_forward_length": "intermediate_size",
        "head_count": "num_attention_heads",
        "layer_norm_rms_eps": "rms_norm_eps",
        "vocab_size": "vocab_size",
    }
    for gguf_key, hf_key in keys.items():
        getattr(writer, f"add_{gguf_key}")(config[hf_key])
    writer.add_head_count_kv(config.get("num_key_value_heads") or config["num_attention_heads"])
    rope = rope_parameters(config)
    writer.add_rope_freq_base(rope["rope_theta"])
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config["hidden_size"] // config["num_attention_heads"]:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    elif rope["rope_type"] not in ("default", "llama3"):  # llama3 travels as the rope_freqs tensor
        raise ExportError(f"RoPE type {rope['rope_type']!r} is not supported by this exporter")


def _plan(
    config: dict[str, Any], tensors: dict[str, tuple[tuple[int, ...], Loader]], head_dim: int, qtype: Q
):
    """(gguf name, shape, type, loader) of every tensor to write; Q/K permuted, a tied output dropped."""
    tied = config.get("tie_word_embeddings", "lm_head.weight" not in tensors)
    if not tied and "lm_head.weight" not in tensors:
        raise ExportError("tie_word_embeddings is false but the weights have no lm_head.weight")
    heads = {"attn_q": config["num_attention_heads"]}
    heads["attn_k"] = config.get("num_key_value_heads") or heads["attn_q"]
    plan: list[tuple[str, tuple[int, ...], Q, Loader]] = []
    rope = rope_parameters(config)
    if rope["rope_type"] == "llama3":
        factors = llama3_rope_factors(rope, head_dim)
        plan.append(("rope_freqs.weight", factors.shape, Q.F32, lambda: factors))
    for hf_name, (shape, load) in tensors.items():
        name = gguf_name(hf_name)
        if name is None or (tied and name == "output.weight"):
            continue  # a tied output is the embedding matrix; llama.cpp reuses token_embd for it
        kind = name.split(".")[-2]
        if kind in heads:
            load = lambda load=load, n=heads[kind]: permute_qk(load(), n)  # noqa: E731
        plan.append((name, shape, _tensor_type(shape, qtype), load))
    return plan


def export_gguf(
    source: str | Path,
    output_file: str | Path,
    type: str = "f16",
    *,
    overwrite: bool = False,
    merge_dtype: str | None = None,
) -> Path:
    """Write `source` — a run directory (merged first, in memory) or a model directory — as GGUF.

    `type`: f16, bf16 or q8_0 (2-D weights; norms stay f32). `merge_dtype`: precision of the
    in-memory merge of a run (default fp32, or bf16 for a bf16 export; fp32 needs 4 bytes/param of RAM).
    """
    if type not in TYPES:
        raise ExportError(f"unknown GGUF type {type!r}: choose one of {', '.join(TYPES)}")
    qtype, file_type = TYPES[type]
    _check_quantizer(qtype)
    source, output_file = Path(source), Path(output_file)
    if output_file.exists() and not overwrite:
        raise ExportError(f"{output_file} exists; choose another file or pass overwrite=True")
    if (source / "adapter_config.json").is_file() or (source / "adapter").is_dir():
        info = inspect_run(source)
        base_config = Path(info.base) / "config.json"
        if base_config.is_file():  # check before spending minutes on a merge
            _check_architecture(json.loads(base_config.read_text(encoding="utf-8")), info.base)
        model, tokenizer, _ = load_merged(source, merge_dtype or ("bf16" if type == "bf16" else "fp32"))
        config = model.config.to_dict()
        _check_architecture(config, info.base)
        tensors = {k: (tuple(v.shape), lambda v=v: v.float().numpy()) for k, v in model.state_dict().items()}
    elif (source / "config.json").is_file():
        from transformers import AutoTokenizer

        config = json.loads((source / "config.json").read_text(encoding="utf-8"))
        _check_architecture(config, str(source))
        tokenizer = AutoTokenizer.from_pretrained(str(source))
        tensors = _safetensors_tensors(source)
    else:
        raise ExportError(f"{source} is neither a run directory (with adapter/) nor a model directory")
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    plan = _plan(config, tensors, head_dim, qtype)

    output_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output_file.name}.", suffix=".partial", dir=output_file.parent)
    os.close(fd)
    writer = gguf.GGUFWriter(tmp_name, "llama")
    try:
        _hyperparameters(writer, config, head_dim, source.resolve().name)
        writer.add_file_type(file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _tokenizer_metadata(writer, tokenizer, config["vocab_size"])
        # Declare every tensor first, then stream the data: one tensor in memory at a time.
        for n, shape, t, _ in plan:
            nbytes = prod(gguf.quants.quant_shape_to_byte_shape(shape, t))
            writer.add_tensor_info(n, shape, np.dtype(np.float32), nbytes, raw_dtype=t)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _, _, t, load in plan:
            writer.write_tensor_data(gguf.quants.quantize(load().astype(np.float32, copy=False), t))
        writer.close()
        os.replace(tmp_name, output_file)
    finally:
        writer.close()
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return output_file
