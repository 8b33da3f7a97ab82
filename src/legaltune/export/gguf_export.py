"""Write a model (or a run, merged first) as a GGUF file for llama.cpp, Ollama and friends.

Architectures: llama, qwen2, gemma3 (``gguf_arch``). Types: f16, bf16 and q8_0/q4_0/q4_1/q5_0/q5_1
through the ``gguf`` package's own quantizer; K-quants (q4_k_m, …) through llama.cpp's quantizer
(``gguf_quantize``). An Ollama Modelfile is written beside the file (``modelfile``).

For Llama, besides renaming tensors, one transformation matters: HF Llama applies RoPE with ``rotate_half``,
rotating each head's dimension i together with i + d/2, while llama.cpp's Llama RoPE rotates the
adjacent pairs (2i, 2i+1). HF's checkpoints were themselves permuted from Meta's interleaved layout,
so we permute the rows of W_q and W_k back, per head (row i → 2i, row i + d/2 → 2i + 1). Both q and
k get the same permutation, so every q·k dot product — and the model's output — is unchanged.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from math import pi, prod
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

from legaltune.export.gguf_arch import Arch, arch_for, permute_qk, rope_parameters
from legaltune.export.gguf_quantize import K_QUANTS, find_quantizer
from legaltune.export.gguf_tokenizer import write_tokenizer
from legaltune.export.merge import ExportError, inspect_run, load_merged
from legaltune.export.modelfile import write_modelfile
from legaltune.run.atomic import scratch_file, staged_file
from legaltune.run.layout import RunDir

__all__ = ["TYPES", "K_QUANTS", "export_gguf", "permute_qk", "llama3_rope_factors", "rope_parameters"]

TYPES = {
    "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "q4_0": (Q.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
    "q4_1": (Q.Q4_1, gguf.LlamaFileType.MOSTLY_Q4_1),
    "q5_0": (Q.Q5_0, gguf.LlamaFileType.MOSTLY_Q5_0),
    "q5_1": (Q.Q5_1, gguf.LlamaFileType.MOSTLY_Q5_1),
}
# The 4/5-bit types keep the vocabulary matrix that computes the logits (the output, or a tied
# embedding) in q8_0: llama.cpp's own quantizer gives it more bits too (q6_k, which gguf cannot write).
_LOGITS_TYPE = Q.Q8_0
Loader = Callable[[], np.ndarray]


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


def _tensor_type(name: str, shape: tuple[int, ...], qtype: Q, tied: bool) -> Q:
    if len(shape) == 1:
        return Q.F32  # norms, biases, rope_freqs: tiny, and precision-sensitive
    if qtype in (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1) and (
        name == "output.weight" or (tied and name == "token_embd.weight")
    ):
        qtype = _LOGITS_TYPE
    if qtype not in (Q.F16, Q.BF16) and shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        return Q.F16  # rows that are not whole quantization blocks stay f16, as llama.cpp does
    return qtype


def _check_quantizer(qtype: Q) -> None:
    try:  # fail before a long merge, not after it
        gguf.quants.quantize(np.zeros((1, 32), dtype=np.float32), qtype)
    except (AttributeError, NotImplementedError) as exc:
        raise ExportError(
            f"the installed gguf package cannot write {qtype.name} ({exc}); upgrade gguf, or export f16 "
            "and quantize with llama.cpp's llama-quantize"
        ) from exc


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


def _plan(
    arch: Arch,
    config: dict[str, Any],
    tensors: dict[str, tuple[tuple[int, ...], Loader]],
    head_dim: int,
    qtype: Q,
):
    """(gguf name, shape, type, loader) of every tensor to write, as llama.cpp wants it; a tied output dropped."""
    tied = config.get("tie_word_embeddings", "lm_head.weight" not in tensors)
    if not tied and "lm_head.weight" not in tensors:
        raise ExportError("tie_word_embeddings is false but the weights have no lm_head.weight")
    plan: list[tuple[str, tuple[int, ...], Q, Loader]] = []
    rope = rope_parameters(config)
    if rope["rope_type"] == "llama3":
        factors = llama3_rope_factors(rope, head_dim)
        plan.append(("rope_freqs.weight", factors.shape, Q.F32, lambda: factors))
    for hf_name, (shape, load) in tensors.items():
        name = arch.tensor_name(hf_name, config["num_hidden_layers"])
        if name is None or (tied and name == "output.weight"):
            continue  # a tied output is the embedding matrix; llama.cpp reuses token_embd for it
        plan.append((name, shape, _tensor_type(name, shape, qtype, tied), arch.transform(name, load, config)))
    return plan


@dataclass
class _Source:
    """What an export reads: the config, tensors on demand, tokenizer, and the run's prompt format."""

    config: dict[str, Any]
    tensors: dict[str, tuple[tuple[int, ...], Loader]]
    tokenizer: Any
    where: str
    template: str | None = None  # the chat template training used (None: the tokenizer's)
    system_prompt: str | None = None
    context_length: int | None = None


def _run_format(run_dir: Path) -> tuple[str | None, str | None, int | None]:
    """(chat template, system prompt, max_seq_length) the run trained with, from its config.yaml."""
    if not (run_dir / "config.yaml").is_file():
        return None, None, None
    from legaltune.config.load import load_config
    from legaltune.data.format import load_template

    cfg = load_config(run_dir / "config.yaml")
    return load_template(cfg.data.chat_template), cfg.data.system_prompt, cfg.model.max_seq_length


def _read_source(source: Path, type: str, merge_dtype: str | None) -> _Source:
    if not source.exists():
        raise ExportError(f"no such run or model directory: {source} does not exist")
    if (source / "adapter_config.json").is_file() or RunDir(source).is_run():
        info = inspect_run(source)
        base_config = Path(info.base) / "config.json"
        if base_config.is_file():  # check before spending minutes on a merge
            arch_for(json.loads(base_config.read_text(encoding="utf-8")), info.base)
        model, tokenizer, _ = load_merged(source, merge_dtype or ("bf16" if type == "bf16" else "fp32"))
        tensors = {k: (tuple(v.shape), lambda v=v: v.float().numpy()) for k, v in model.state_dict().items()}
        return _Source(
            model.config.to_dict(), tensors, tokenizer, info.base, *_run_format(info.adapter_dir.parent)
        )
    if (source / "config.json").is_file():
        from transformers import AutoTokenizer

        config = json.loads((source / "config.json").read_text(encoding="utf-8"))
        arch_for(config, str(source))
        provenance = source / "legaltune_merge.json"  # a merged run remembers where it came from
        run_dir = (
            Path(json.loads(provenance.read_text(encoding="utf-8"))["run_dir"])
            if provenance.is_file()
            else source
        )
        tokenizer = AutoTokenizer.from_pretrained(str(source))
        return _Source(config, _safetensors_tensors(source), tokenizer, str(source), *_run_format(run_dir))
    raise ExportError(f"{source} is neither a run directory (with adapter/) nor a model directory")


def _write(src: _Source, arch: Arch, path: Path, qtype: Q, file_type: Any, name: str) -> None:
    config = src.config
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    plan = _plan(arch, config, src.tensors, head_dim, qtype)
    writer = gguf.GGUFWriter(str(path), arch.name)
    try:
        writer.add_type("model")
        writer.add_name(name)
        arch.hyperparameters(writer, config, head_dim)
        writer.add_file_type(file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        write_tokenizer(writer, src.tokenizer, config["vocab_size"], src.template)
        # Declare every tensor first, then stream the data: one tensor in memory at a time.
        for n, shape, t, _ in plan:
            nbytes = prod(gguf.quants.quant_shape_to_byte_shape(shape, t))
            writer.add_tensor_info(n, shape, np.dtype(np.float32), nbytes, raw_dtype=t)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _, _, t, load in plan:
            writer.write_tensor_data(gguf.quants.quantize(load().astype(np.float32, copy=False), t))
    finally:
        writer.close()


def export_gguf(
    source: str | Path,
    output_file: str | Path,
    type: str = "f16",
    *,
    overwrite: bool = False,
    merge_dtype: str | None = None,
    modelfile: bool = True,
) -> Path:
    """Write `source` — a run directory (merged first, in memory) or a model directory — as GGUF.

    `type`: f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1 (2-D weights; norms stay f32) or a llama.cpp
    K-quant (q4_k_m, …; needs llama.cpp's quantizer). `merge_dtype`: precision of the in-memory
    merge of a run (default fp32, or bf16 for a bf16 export; fp32 needs 4 bytes/param of RAM).
    `modelfile`: also write an Ollama Modelfile beside it (model.gguf → model.Modelfile).
    """
    quantizer = None
    if type in K_QUANTS:
        quantizer = find_quantizer(type)  # before a long merge: say now if llama.cpp is missing
        qtype, file_type = TYPES["f16"]
    elif type in TYPES:
        qtype, file_type = TYPES[type]
        _check_quantizer(qtype)
    else:
        raise ExportError(f"unknown GGUF type {type!r}: choose one of {', '.join((*TYPES, *K_QUANTS))}")
    source, output_file = Path(source), Path(output_file)
    if output_file.exists() and not overwrite:
        raise ExportError(
            f"{output_file} exists; choose another file or pass --overwrite (overwrite=True from Python)"
        )
    src = _read_source(source, type, merge_dtype)
    arch = arch_for(src.config, src.where)
    # run/atomic.py owns atomic writes: the GGUF appears under its name only once complete, and a
    # full disk is an error naming the file and the free space, leaving no partial file behind
    with staged_file(output_file, "GGUF file") as tmp:
        if quantizer:
            with scratch_file(output_file, "f16") as f16:  # llama.cpp quantizes from an f16 GGUF
                _write(src, arch, f16, qtype, file_type, source.resolve().name)
                quantizer(f16, tmp, type)
        else:
            _write(src, arch, tmp, qtype, file_type, source.resolve().name)
    if modelfile:
        _modelfile(src, output_file)
    return output_file


def _modelfile(src: _Source, output_file: Path) -> None:
    from legaltune.data.format import end_of_turn_token

    end_of_turn = end_of_turn_token(src.tokenizer, src.template) or ""
    eos = src.tokenizer.eos_token if isinstance(src.tokenizer.eos_token, str) else ""
    _, warning = write_modelfile(
        output_file,
        src.tokenizer,
        template=src.template,
        stops=[end_of_turn, eos],
        system_prompt=src.system_prompt,
        context_length=src.context_length,
    )
    if warning:
        warnings.warn(warning, stacklevel=3)
