"""Load a base model and its tokenizer for LoRA/QLoRA training (seed §0.1, §1, §7).

Model names resolve offline where they can: the embedded alias, a local directory, or a .gguf file
converted once into the legaltune cache. Anything else is treated as a hub id and handed to
transformers, with a failure message that says what to do when the hub is not reachable.
Quantization is checked before anything is downloaded or loaded, so a CPU-only machine asked for
QLoRA fails in milliseconds rather than after fetching 16 GB.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from legaltune.errors import InputError
from legaltune.model.arch import ModelNameError
from legaltune.model.embedded import (
    aliases_text,
    cache_root,
    convert_gguf,
    embedded_model,
    ensure_embedded_model,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from legaltune.config.schema import ModelConfig, QuantizationConfig

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_DTYPE_SPELLINGS = {
    "bf16": "bfloat16",
    "fp16": "float16",
    "half": "float16",
    "fp32": "float32",
    "float": "float32",
}
ATTN_CHOICES = ("flash_attention_2", "sdpa", "eager", "flex_attention")
# Tokenizers without a configured limit report ~1e30; anything above this is "unset".
_UNSET_MAX_LENGTH = 10**9


def _gguf_cache_dir(gguf: Path) -> Path:
    """Cache directory of a converted .gguf: keyed by path and mtime, so an edited file converts again."""
    st = gguf.stat()
    digest = hashlib.sha256(f"{gguf.resolve()}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_root() / "models" / f"{gguf.stem}-{digest}"


def resolve_model_path(model_name: str, trust_remote_code: bool = False) -> str:
    """Turn ``model_name`` into something ``from_pretrained`` can load: a local directory or a hub id.

    ``trust_remote_code`` is accepted for symmetry with the loaders; resolution itself never runs
    repository code.
    """
    del trust_remote_code
    embedded = embedded_model(model_name)
    if embedded is not None:
        return str(ensure_embedded_model(embedded))
    path = Path(model_name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNameError(
                f"{path} is a directory without config.json; point model_name at a transformers model "
                f"directory (save_pretrained output), a .gguf file, or an embedded alias ({aliases_text()})"
            )
        return str(path)
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelNameError(f"{path}: no such .gguf file")
        target = _gguf_cache_dir(path)
        # convert_gguf renames a finished temporary directory into place, so config.json there means complete.
        if not (target / "config.json").is_file():
            print(f"converting {path} to a transformers model in {target} (once) …", file=sys.stderr)
            convert_gguf(path, target)
        return str(target)
    if not looks_like_hub_id(model_name):
        raise ModelNameError(f"{model_name}: no such model directory")
    from legaltune.model.hub import cached_snapshot, hub_reachable

    if not hub_reachable():
        snapshot = cached_snapshot(model_name)
        if snapshot is None:
            raise hub_error(
                model_name,
                ConnectionError("the Hub is unreachable from this machine and the id is not cached"),
            )
        return snapshot
    return model_name


def looks_like_hub_id(name: str) -> bool:
    """A hub id is "name" or "org/name"; anything shaped like a filesystem path (absolute, ./, ../, ~, or
    deeper than org/name) is not, so a missing directory is reported as such rather than looked up."""
    return not (name.startswith(("/", "./", "../", "~")) or name.count("/") > 1)


def resolve_dtype(dtype: str | None, device: str) -> torch.dtype:
    """The compute dtype: auto = bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU."""
    name = "auto" if dtype is None else str(dtype).strip().lower().removeprefix("torch.")
    name = _DTYPE_SPELLINGS.get(name, name)
    on_cuda = device.startswith("cuda")
    if name in ("auto", "none"):
        if on_cuda:
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in _DTYPES:
        raise InputError(f"dtype {dtype!r}: choose auto, bfloat16, float16 or float32")
    if name == "float16" and not on_cuda:
        raise InputError(
            "dtype float16 on CPU: fp16 training on CPU is not supported (no fp16 loss scaling or kernels there); "
            "use dtype auto/float32 on CPU (or bfloat16), or train on a GPU"
        )
    return _DTYPES[name]


def resolve_attn(attn: str) -> str:
    """The attention implementation to request from transformers, falling back to SDPA for flash-attn."""
    if attn not in ATTN_CHOICES:
        raise InputError(f"attn_implementation {attn!r}: choose one of {', '.join(ATTN_CHOICES)}")
    if attn != "flash_attention_2":
        return attn
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if has_flash and torch.cuda.is_available():
        return attn
    # SDPA dispatches to a FlashAttention kernel itself on Hopper/Ampere, so the fallback loses little.
    reason = "no CUDA device" if has_flash else "flash-attn not installed"
    print(f"{reason}; using SDPA (FlashAttention-backed on Hopper)", file=sys.stderr)
    return "sdpa"


def _check_quantization(quant_cfg: QuantizationConfig) -> None:
    """Refuse impossible quantization requests before anything is fetched or loaded."""
    if quant_cfg.load_in_4bit and quant_cfg.load_in_8bit:
        raise InputError("load_in_4bit and load_in_8bit are both set; choose one")
    if quant_cfg.load_in_fp8 and (quant_cfg.load_in_4bit or quant_cfg.load_in_8bit):
        raise InputError(
            "load_in_fp8 and a bitsandbytes quantization (load_in_4bit/load_in_8bit) are both set; choose one"
        )
    if not (quant_cfg.load_in_4bit or quant_cfg.load_in_8bit):
        return
    bits = "4-bit" if quant_cfg.load_in_4bit else "8-bit"
    if not torch.cuda.is_available():
        raise InputError(
            f"{bits} quantization (bitsandbytes QLoRA) needs a CUDA GPU and none is available; "
            "set load_in_4bit/load_in_8bit to false to train in bf16/fp32, or run on a CUDA machine"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise InputError(
            f"{bits} quantization needs bitsandbytes, which is not installed: pip install bitsandbytes "
            "(or pip install 'legaltune[gpu]')"
        )


def check_fp8(device: str, dtype: torch.dtype) -> None:
    """``quantization.load_in_fp8`` on this machine: FP8 tensor cores and bf16 compute on a GPU; a CPU
    runs the dequantizing reference path (said once, so nobody expects FP8 speed there)."""
    if device != "cuda":
        print(
            "quantization.load_in_fp8 on CPU: FP8 weights are dequantized for every matmul (memory saving "
            "only, no speed-up; FP8 GEMMs need a GPU with compute capability 8.9+)",
            file=sys.stderr,
        )
        return
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    if (major, minor) < (8, 9):
        name = torch.cuda.get_device_name(index)
        raise InputError(
            f"quantization.load_in_fp8 needs FP8 tensor cores (compute capability 8.9+: H100/H200, L4/L40, "
            f"RTX 40xx, B200); this GPU is {name} (compute capability {major}.{minor}). Set "
            "quantization.load_in_fp8: false (bf16), or quantization.load_in_4bit: true to save memory"
        )
    if dtype != torch.bfloat16:
        raise InputError(
            f"quantization.load_in_fp8 computes in bfloat16 (its FP8 GEMMs write bf16 outputs), but model.dtype "
            f"resolves to {str(dtype).removeprefix('torch.')}: set model.dtype: bfloat16 (or auto)"
        )


def _quantize_fp8(model: PreTrainedModel, *, keep_transpose: bool = False) -> None:
    from legaltune.speed.fp8_linear import fp8_linear_count, keep_fp8_transposes, quantize_model_fp8
    from legaltune.speed.layers import find_decoder_layers

    before = sum(p.numel() * p.element_size() for p in model.parameters())
    try:
        count = quantize_model_fp8(model)
    except ValueError:  # no decoder layers where transformers' causal LMs keep them
        raise InputError(
            f"quantization.load_in_fp8: cannot find the decoder layers of {type(model).__name__} (FP8 is applied "
            "to their projections); set quantization.load_in_fp8: false for this model"
        ) from None
    if not count:
        raise InputError(
            f"quantization.load_in_fp8: {type(model).__name__}'s decoder layers "
            f"({len(find_decoder_layers(model))}) hold no plain nn.Linear projections to store in FP8; "
            "set quantization.load_in_fp8: false for this model"
        )
    after = sum(p.numel() * p.element_size() for p in model.parameters())
    kept = ""
    if keep_transpose:
        keep_fp8_transposes(model)
        extra = sum(b.numel() for name, b in model.named_buffers() if name.endswith("weight_t"))
        kept = f", + {extra / 2**30:.2f} GiB of kept transposes (quantization.fp8_keep_transpose)"
    print(
        f"quantization.load_in_fp8: {fp8_linear_count(model)} decoder projections in float8_e4m3 "
        f"(weights {before / 2**30:.2f} → {after / 2**30:.2f} GiB{kept})",
        file=sys.stderr,
    )


def _device_map(device_map: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if isinstance(device_map, str) and device_map.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device_map {device_map!r} but no CUDA device is available; use auto or cpu")
    if not torch.cuda.is_available() and device_map in ("auto", "cpu"):
        # accelerate's dispatch adds hooks for nothing on a CPU-only machine; a plain load is simpler.
        return None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device_map == "auto" and world > 1:
        # Under DDP every process holds a full replica on its own GPU; "auto" would shard each
        # replica across all GPUs of the node.
        return {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return device_map


def _compute_device(device_map: str | dict[str, Any] | None) -> str:
    if not torch.cuda.is_available() or device_map == "cpu":
        return "cpu"
    return "cuda"


def _cached_hub_ids(limit: int = 8) -> list[str]:
    """Hub ids already in the local Hugging Face cache (they load offline by that id)."""
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        names = sorted(
            p.name[len("models--") :].replace("--", "/") for p in Path(HF_HUB_CACHE).glob("models--*")
        )
    except OSError:
        return []
    return names[:limit]


def hub_error(name: str, exc: Exception) -> ModelNameError:
    """A model name that is neither local nor loadable from the hub: what was tried and what would work."""
    cached = _cached_hub_ids()
    detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return ModelNameError(
        f"cannot load model '{name}': it is not an embedded alias, a local directory or a .gguf file, and the "
        f"Hugging Face Hub did not provide it ({type(exc).__name__}: {detail}). Names that work offline: "
        f"{aliases_text()} (the embedded models), a model directory with config.json and safetensors "
        "(e.g. model_name: /models/Meta-Llama-3.1-8B-Instruct), a .gguf file"
        + (f", or a hub id already in the local cache: {', '.join(cached)}" if cached else "")
        + ". Online: check the hub id, your network, and HF_TOKEN for gated repos"
    )


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, max_seq_length: int) -> None:
    """Give the tokenizer a pad token and a model_max_length of ``max_seq_length`` if it has none/larger,
    and a built-in chat template if it has none and its vocabulary has that template's turn markers
    (a pretrained Gemma: the ``gemma`` template). It is then saved with the run's adapter, so chat,
    serve, eval and export read the same format."""
    from legaltune.data.format import fallback_template_name, load_template

    name = fallback_template_name(tokenizer)
    if name is not None:
        tokenizer.chat_template = load_template(name)
        print(
            f"the tokenizer has no chat template; using legaltune's built-in '{name}' template "
            "(its vocabulary has that format's turn markers; data.chat_template overrides it)",
            file=sys.stderr,
        )
    if tokenizer.pad_token is None:
        # Safe because labels are built explicitly with the attention mask: pad positions get label
        # -100 and are never trained, so the model never learns to emit eos in place of padding.
        tokenizer.pad_token = tokenizer.eos_token
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is None or limit > _UNSET_MAX_LENGTH or limit > max_seq_length:
        # Truncation defaults follow model_max_length; an unset (~1e30) or larger limit would let
        # tokenization produce sequences the run was not configured for.
        tokenizer.model_max_length = max_seq_length


_prepare_tokenizer = prepare_tokenizer  # the name model/tokenizer.py imports


def load_model(
    model_cfg: ModelConfig,
    quant_cfg: QuantizationConfig,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``model_cfg.model_name`` in the resolved dtype (optionally 4/8-bit, or with FP8 decoder
    projections) and its tokenizer. ``tokenizer``: one :func:`legaltune.model.tokenizer.load_tokenizer`
    already gave for this model, used instead of a second load (Gemma 3's takes ~5 s on a CPU)."""
    _check_quantization(quant_cfg)
    device_map = _device_map(model_cfg.device_map)
    dtype = resolve_dtype(model_cfg.dtype, _compute_device(model_cfg.device_map))
    if quant_cfg.load_in_fp8:
        check_fp8(_compute_device(model_cfg.device_map), dtype)
    attn = resolve_attn(model_cfg.attn_implementation)
    path = resolve_model_path(model_cfg.model_name, model_cfg.trust_remote_code)
    is_hub = not Path(path).is_dir()

    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "attn_implementation": attn,
        "device_map": device_map,
        "trust_remote_code": model_cfg.trust_remote_code,
    }
    if quant_cfg.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant_cfg.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=quant_cfg.bnb_4bit_use_double_quant,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_storage=quant_cfg.bnb_4bit_quant_storage,
        )
    elif quant_cfg.load_in_8bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)

    try:
        # Tokenizer first: it is small, so a wrong hub id fails before any weights are fetched.
        given = tokenizer is not None
        if not given:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        if is_hub:
            raise hub_error(model_cfg.model_name, exc) from exc
        raise

    if quant_cfg.load_in_fp8:
        _quantize_fp8(model, keep_transpose=quant_cfg.fp8_keep_transpose)
    if not given:
        prepare_tokenizer(tokenizer, model_cfg.max_seq_length)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    offloaded = sorted(
        {str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()} & {"cpu", "disk"}
    )
    if offloaded and torch.cuda.is_available():
        print(
            f"warning: device_map placed part of the model on {'/'.join(offloaded)} (it does not fit the GPU); "
            "training will be very slow — use 4-bit quantization or a smaller model",
            file=sys.stderr,
        )
    model.max_seq_length = model_cfg.max_seq_length
    return model, tokenizer
