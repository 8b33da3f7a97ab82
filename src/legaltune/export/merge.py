"""Merge a run's LoRA adapter into a 16/32-bit copy of its base model.

A run directory holds ``adapter/`` (PEFT ``save_pretrained`` output plus the tokenizer) and
``config.yaml``. Merging computes W' = W + scale·B·A for every adapted projection, so the result is
a plain transformers model that loads with ``AutoModelForCausalLM.from_pretrained`` and runs
without PEFT. The output is written into a temporary sibling and renamed into place, so an
interrupted merge never leaves a directory that looks complete.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legaltune.errors import UserError
from legaltune.run.atomic import staged_dir

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DTYPES = ("bf16", "fp16", "fp32")
_DTYPE_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}


class ExportError(UserError, RuntimeError):
    """A merge or export that cannot proceed; the message says what was expected and how to fix it."""


class QuantizedBaseWarning(UserWarning):
    """The adapter was trained against a 4/8-bit base but is merged into 16/32-bit weights."""


@dataclass(frozen=True)
class RunInfo:
    """Where a run's adapter, tokenizer and base model are, and how the base was loaded in training."""

    adapter_dir: Path
    base: str  # a local directory, or a hub id when no such directory exists
    tokenizer_dir: Path | str
    quantized: (
        str | None
    )  # "4-bit" / "8-bit" (bitsandbytes) or "FP8 (float8_e4m3)" as training loaded the base
    config: Path | None = None  # the run's config.yaml (its chat template), when there is a run


def torch_dtype(name: str) -> torch.dtype:
    """'bf16' / 'fp16' / 'fp32' (or their long spellings) → the torch dtype."""
    import torch

    key = _DTYPE_ALIASES.get(name.lower(), name.lower())
    if key not in DTYPES:
        raise ExportError(f"unknown dtype {name!r}: choose one of {', '.join(DTYPES)}")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[key]


def _resolve_base(name: str) -> str:
    """A local directory for the base model, or the hub id as given; fail early on a missing path."""
    from legaltune.model.arch import EMBEDDED_ALIAS
    from legaltune.model.embedded import embedded_model_dir
    from legaltune.model.load import looks_like_hub_id

    if name == EMBEDDED_ALIAS:
        name = str(embedded_model_dir())
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if not looks_like_hub_id(name):
        raise ExportError(
            f"base model not found: {name} (from adapter_config.json's base_model_name_or_path). "
            "The base must be available locally at that path or on the Hugging Face Hub; copy it "
            "there, or edit base_model_name_or_path to point at a directory with config.json and "
            "safetensors."
        )
    return name


def _training_quantization(config_yaml: Path) -> str | None:
    """Read quantization.load_in_4bit / load_in_8bit / load_in_fp8 from the run's resolved config, if there is one."""
    import yaml

    if not config_yaml.is_file():
        return None
    data = yaml.safe_load(config_yaml.read_text(encoding="utf-8")) or {}
    quant = data.get("quantization") or {}
    if quant.get("load_in_4bit"):
        return "4-bit"
    if quant.get("load_in_8bit"):
        return "8-bit"
    if quant.get("load_in_fp8"):
        return "FP8 (float8_e4m3)"
    return None


def inspect_run(run_dir: str | Path) -> RunInfo:
    """Locate the adapter, tokenizer and base of a run directory (or of an adapter/checkpoint directory)."""
    from legaltune.run.layout import ADAPTER_CONFIG, RunError, find_adapter

    try:
        ref = find_adapter(run_dir)
    except RunError as exc:
        raise ExportError(str(exc)) from None
    config_file = ref.adapter_dir / ADAPTER_CONFIG
    try:
        adapter_config = json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ExportError(f"{config_file} is not valid JSON ({exc}); the adapter is damaged") from None
    base_name = adapter_config.get("base_model_name_or_path")
    if not base_name:
        raise ExportError(
            f"{config_file} names no base_model_name_or_path; cannot tell which base to merge into"
        )
    base = _resolve_base(base_name)
    return RunInfo(
        adapter_dir=ref.adapter_dir,
        base=base,
        tokenizer_dir=ref.tokenizer_dir or base,
        quantized=_training_quantization(ref.run.config) if ref.run is not None else None,
        config=ref.run.config if ref.run is not None and ref.run.config.is_file() else None,
    )


def _warn_quantized(info: RunInfo) -> None:
    warnings.warn(
        QuantizedBaseWarning(
            f"the adapter was trained against a {info.quantized} quantized base, but is merged into "
            "full-precision base weights. Training optimised B·A for dequant(Q(W)) + B·A; the merged "
            "model computes W + B·A, which differs by the quantization error W − dequant(Q(W)) in "
            "every layer (an FP8-trained adapter merges into the 16-bit base the same way). The difference is usually small, but evaluate the merged model rather than "
            "assuming it reproduces the QLoRA model's outputs exactly."
        ),
        stacklevel=3,
    )


def load_merged(
    run_dir: str | Path, dtype: str = "bf16"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, RunInfo]:
    """Load the base in `dtype` on CPU, apply the run's adapter and merge it; return model, tokenizer, info."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from legaltune.run.adapter import attach_adapter, load_saved_tokenizer
    from legaltune.run.layout import RunError

    info = inspect_run(run_dir)
    target = torch_dtype(dtype)
    if info.quantized:
        _warn_quantized(info)
    try:
        base = AutoModelForCausalLM.from_pretrained(info.base, dtype=target, device_map=None)
    except OSError as exc:
        raise ExportError(
            f"cannot load the base model {info.base!r}: {exc}. The base must be available locally or "
            "on the Hugging Face Hub."
        ) from exc
    try:
        saved = info.tokenizer_dir == info.adapter_dir
        tokenizer = (
            load_saved_tokenizer(info.adapter_dir) if saved else AutoTokenizer.from_pretrained(info.base)
        )
        peft_model = attach_adapter(base, info.adapter_dir)
    except RunError as exc:
        raise ExportError(str(exc)) from None
    merged = peft_model.merge_and_unload()
    merged.eval()
    stop_at_end_of_turn(merged, tokenizer, info)
    return merged, tokenizer, info


def stop_at_end_of_turn(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, info: RunInfo) -> None:
    """Add the run's end-of-turn token to the model's ``generation_config.eos_token_id``.

    Tools that run the merged model (transformers' generate, vLLM, TGI) stop where that list says. A
    pretrained base lists only its ``<eos>`` there (Gemma 3 270M: id 1), but the tuned model closes
    its answers with the chat template's end-of-turn (``<end_of_turn>``, id 106), so without this
    they would generate past every answer into a made-up next turn."""
    from legaltune.data.format import end_of_turn_token, load_template
    from legaltune.generate.answers import stop_token_ids

    template = None
    if info.config is not None:
        from legaltune.config.load import load_config

        template = load_template(load_config(info.config).data.chat_template)
    stops = stop_token_ids(tokenizer, end_of_turn_token(tokenizer, template))
    current = model.generation_config.eos_token_id
    listed = [] if current is None else [current] if isinstance(current, int) else list(current)
    model.generation_config.eos_token_id = listed + [t for t in stops if t not in listed]


def _check_output(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise ExportError(f"{output_dir} exists and is not a directory")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ExportError(
            f"{output_dir} is not empty; choose another directory or pass --overwrite (overwrite=True from Python)"
        )


def merge_run(
    run_dir: str | Path, output_dir: str | Path, dtype: str = "bf16", *, overwrite: bool = False
) -> Path:
    """Merge RUN_DIR's adapter into its base and save a standalone model (safetensors + tokenizer).

    `dtype` is the precision of the saved weights: bf16 (default), fp16 or fp32. Refuses a non-empty
    `output_dir` unless `overwrite`. Returns `output_dir`.
    """
    output_dir = Path(output_dir)
    _check_output(output_dir, overwrite)
    torch_dtype(dtype)  # reject a bad dtype before loading gigabytes
    model, tokenizer, info = load_merged(run_dir, dtype)
    with staged_dir(output_dir, "merged model") as tmp:
        model.save_pretrained(tmp)  # safetensors, config.json, generation_config.json
        tokenizer.save_pretrained(tmp)
        (tmp / "legaltune_merge.json").write_text(
            json.dumps(_provenance(run_dir, info, dtype), indent=2) + "\n", encoding="utf-8"
        )
    return output_dir


def _provenance(run_dir: str | Path, info: RunInfo, dtype: str) -> dict[str, Any]:
    """What was merged, so a merged directory can be traced back to its run."""
    return {
        "run_dir": str(Path(run_dir).resolve()),
        "adapter_dir": str(info.adapter_dir.resolve()),
        "base": info.base,
        "dtype": _DTYPE_ALIASES.get(dtype.lower(), dtype.lower()),
        "trained_on_quantized_base": info.quantized,
    }
