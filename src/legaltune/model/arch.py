"""Resolve a model name to its architecture config without loading weights.

The seed's models ship as JSON under ``model/archs`` so that ``legaltune plan`` works offline;
other names are read from a local directory's config.json or, when reachable, the hub.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from legaltune.errors import UserError
from legaltune.model.embedded import SMOLLM2, aliases_text, embedded_model

# SmolLM2's alias (the merge of a run whose base is named by it maps it to the cached directory).
EMBEDDED_ALIAS = SMOLLM2.alias


class ModelNameError(UserError, ValueError):
    """A model name that cannot be resolved, with what was tried and how to fix it."""


@dataclass(frozen=True)
class Arch:
    """The numbers of a decoder-only transformer that plan and memory estimates need."""

    name: str
    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tie_embeddings: bool
    max_positions: int
    qkv_bias: bool
    raw: dict[str, Any]

    @classmethod
    def from_config(cls, name: str, d: dict[str, Any]) -> Arch:
        heads = d["num_attention_heads"]
        model_type = d.get("model_type", "llama")
        return cls(
            name=name,
            model_type=model_type,
            hidden=d["hidden_size"],
            intermediate=d["intermediate_size"],
            layers=d["num_hidden_layers"],
            heads=heads,
            kv_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            vocab=d["vocab_size"],
            tie_embeddings=bool(d.get("tie_word_embeddings", False)),
            max_positions=d.get("max_position_embeddings", 0),
            # Qwen2 always has q/k/v biases; Llama has them only with attention_bias.
            qkv_bias=model_type == "qwen2" or bool(d.get("attention_bias", False)),
            raw=d,
        )

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each per-layer linear, by module name."""
        h, i, q, kv = (
            self.hidden,
            self.intermediate,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
        )
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }


def shipped_archs() -> list[str]:
    """Names of the architecture configs shipped with legaltune."""
    return sorted(
        p.name[:-5] for p in resources.files("legaltune.model.archs").iterdir() if p.name.endswith(".json")
    )


def canonical_key(model_name: str) -> str | None:
    """Map hub ids and spellings to a shipped arch key: unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit → llama-3.1-8b;
    an embedded alias to its model's architecture."""
    embedded = embedded_model(model_name)
    if embedded is not None:
        return embedded.arch
    base = model_name.rstrip("/").split("/")[-1].lower()
    base = re.sub(r"^meta-", "", base)
    base = re.sub(r"(-instruct|-it|-bnb-4bit|-unsloth|-hf|-base)+$", "", base)
    base = base.replace("_", "-")
    return base if base in shipped_archs() else None


def load_arch(model_name: str) -> Arch:
    """Architecture of ``model_name``: shipped config, local directory, GGUF header, or hub config."""
    key = canonical_key(model_name)
    if key is not None:
        text = resources.files("legaltune.model.archs").joinpath(f"{key}.json").read_text(encoding="utf-8")
        return Arch.from_config(key, json.loads(text))
    path = Path(model_name).expanduser()
    if path.is_dir():
        cfg = path / "config.json"
        if not cfg.is_file():
            raise ModelNameError(
                f"{path} is a directory without config.json; point model.model_name at a model directory"
            )
        return Arch.from_config(str(path), json.loads(cfg.read_text(encoding="utf-8")))
    if path.suffix == ".gguf":
        raise ModelNameError(
            f"{path}: plan reads architectures from config.json; for a .gguf file, run `legaltune train` once "
            "(it converts the file to a cached model directory) and plan against that directory"
        )
    try:
        from transformers import AutoConfig

        return Arch.from_config(model_name, AutoConfig.from_pretrained(model_name).to_dict())
    except Exception as exc:  # network errors, gated repos, typos: all need the same advice
        raise ModelNameError(
            f"cannot resolve model '{model_name}': not a shipped architecture ({', '.join(shipped_archs())}), "
            f"not a local directory, and the hub lookup failed ({type(exc).__name__}). "
            f"Use a local model directory, an embedded alias ({aliases_text()}), or a reachable hub id."
        ) from None
