"""The SFT adapter a method after SFT starts from (``training.init_adapter``).

A run directory (its ``adapter/``) or an adapter directory; checked before any weight loads: it
exists, it is a LoRA adapter, and it was trained on ``model.model_name``. Its LoRA settings replace
``lora.*`` (the plan counts its parameters, config.yaml records what was trained), and it is loaded
*trainable* on the base model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legaltune.config.schema import Config
from legaltune.errors import UserError

KEY = "training.init_adapter"


class InitAdapterError(UserError, ValueError):
    """training.init_adapter names something that cannot be continued."""

    def __init__(self, message: str, fix: str):
        super().__init__(f"{KEY}: {message}\n  fix: {fix}")


@dataclass(frozen=True)
class InitAdapter:
    path: Path  # the adapter directory (adapter_config.json inside)
    run_dir: Path | None  # the SFT run it belongs to, when it is one's adapter/
    lora: dict[str, Any]  # adapter_config.json


def _run_model_name(run_dir: Path) -> str | None:
    import yaml

    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    return (saved.get("model") or {}).get("model_name")


def resolve_init_adapter(cfg: Config) -> InitAdapter:
    """The adapter of ``training.init_adapter``, checked (see module doc)."""
    given = Path(cfg.training.init_adapter or "").expanduser()
    if not given.exists():
        raise InitAdapterError(
            f"{given} does not exist", "name an SFT run directory (runs/<name>) or its adapter/ directory"
        )
    path, run_dir = given, None
    if (given / "adapter" / "adapter_config.json").is_file():
        path, run_dir = given / "adapter", given
    elif (given / "adapter_config.json").is_file():
        run_dir = given.parent if (given.parent / "config.yaml").is_file() else None
    else:
        hint = (
            "the run has no adapter/ yet (still training, or interrupted: finish it with legaltune train --resume)"
            if (given / "config.yaml").is_file()
            else "it holds no adapter_config.json"
        )
        raise InitAdapterError(
            f"{given} is not an adapter: {hint}", "name a finished SFT run or an adapter directory"
        )
    lora = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    if lora.get("peft_type", "LORA") != "LORA":
        raise InitAdapterError(
            f"{path} is a {lora.get('peft_type')} adapter", "legaltune continues LoRA adapters only"
        )
    trained_on = _run_model_name(run_dir) if run_dir is not None else None
    if trained_on is not None and trained_on != cfg.model.model_name:
        raise InitAdapterError(
            f"{run_dir} was trained on {trained_on!r}, but model.model_name is {cfg.model.model_name!r}",
            f"set model.model_name: {trained_on}",
        )
    return InitAdapter(path, run_dir, lora)


def adopt_lora_settings(cfg: Config, adapter: InitAdapter) -> list[str]:
    """Make ``cfg.lora`` the adapter's own settings; returns one notice per key that changed."""
    a = adapter.lora
    targets = a.get("target_modules") or []
    settings = {
        "r": a.get("r", cfg.lora.r),
        "lora_alpha": a.get("lora_alpha", cfg.lora.lora_alpha),
        "lora_dropout": a.get("lora_dropout", cfg.lora.lora_dropout),
        "bias": a.get("bias", cfg.lora.bias),
        "use_rslora": bool(a.get("use_rslora", cfg.lora.use_rslora)),
        "target_modules": [targets] if isinstance(targets, str) else sorted(targets),
    }
    notices = []
    for key, value in settings.items():
        mine = getattr(cfg.lora, key)
        same = sorted(mine) == value if key == "target_modules" else mine == value
        if not same:
            notices.append(f"lora.{key}: {mine!r} → {value!r} (the init adapter's)")
    cfg.lora = dataclasses.replace(cfg.lora, **settings)
    return notices


def load_trainable(model: Any, adapter: InitAdapter) -> Any:
    """``model`` (the base) with the adapter loaded on it, its LoRA weights trainable."""
    from peft import PeftModel

    from legaltune.model.lora import quiet_peft_wrap

    try:
        with quiet_peft_wrap():
            peft_model = PeftModel.from_pretrained(model, str(adapter.path), is_trainable=True)
    except (RuntimeError, ValueError, KeyError) as exc:  # shapes or module names of another base
        raise InitAdapterError(
            f"{adapter.path} does not fit {type(model).__name__} ({str(exc).splitlines()[0][:300]})",
            "use the model the SFT run was trained on (its config.yaml: model.model_name)",
        ) from None
    return peft_model


def plan_with_init_adapter(cfg: Config) -> list[str]:
    """For `legaltune plan`: the init adapter's LoRA settings when it exists already (else lora.*)."""
    try:
        adapter = resolve_init_adapter(cfg)
    except InitAdapterError as exc:
        return [f"{str(exc).splitlines()[0]}; LoRA counted from lora.*"]
    return adopt_lora_settings(cfg, adapter)
