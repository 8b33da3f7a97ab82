"""Parameter counts, exactly as PEFT reports them, from the architecture alone.

LoRA adds A (r × d_in) and B (d_out × r) to every targeted module in every layer, so a module
costs r·(d_in + d_out). The seed's 2·4096·r per module holds only for square 4096×4096 matrices;
k/v (4096→1024) and the MLP (4096↔14336) differ. Llama-3.1-8B, r=16, 7 projections: 41,943,040.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from legaltune.errors import UserError
from legaltune.model.arch import Arch
from legaltune.speed.families import family_for_model_type

ALL_LINEAR = "all-linear"


class TargetError(UserError, ValueError):
    """A target module that the architecture does not have."""


@dataclass(frozen=True)
class ParamCount:
    total_base: int
    trainable: int
    lora: int
    trainable_bias: int
    per_module: dict[str, int]

    @property
    def total(self) -> int:
        """All parameters of the adapted model (base + trainable additions), as PEFT's print_trainable_parameters."""
        return self.total_base + self.lora

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / self.total


def base_param_count(arch: Arch) -> int:
    """Parameters of the base model (embeddings counted once when tied)."""
    family = family_for_model_type(arch.model_type)
    norms = family.norms_per_layer if family else 2  # two RMSNorms (Gemma's sandwich: four)
    per_layer = sum(i * o for i, o in arch.linear_shapes().values()) + norms * arch.hidden
    if family is not None and family.qk_norm:  # q_norm and k_norm over one head
        per_layer += 2 * arch.head_dim
    if arch.qkv_bias:
        per_layer += arch.heads * arch.head_dim + 2 * arch.kv_heads * arch.head_dim
    embed = arch.vocab * arch.hidden
    head = 0 if arch.tie_embeddings else arch.vocab * arch.hidden
    return arch.layers * per_layer + embed + head + arch.hidden  # + final norm


def resolve_targets(arch: Arch, target_modules: list[str]) -> list[str]:
    """Expand all-linear (PEFT: every linear but the output head) and check names exist."""
    shapes = arch.linear_shapes()
    if target_modules == [ALL_LINEAR]:
        return list(shapes)
    known = set(shapes) | {"embed_tokens", "lm_head"}
    unknown = [t for t in target_modules if t not in known]
    if unknown:
        raise TargetError(
            f"lora.target_modules: {', '.join(unknown)} not found in {arch.name} "
            f"(it has {', '.join(sorted(known))}); use those names or [all-linear]"
        )
    return list(dict.fromkeys(target_modules))


def count_params(arch: Arch, r: int, target_modules: list[str], bias: str = "none") -> ParamCount:
    """Total and trainable parameters after adding LoRA adapters of rank ``r``."""
    shapes = arch.linear_shapes()
    per_module: dict[str, int] = {}
    for name in resolve_targets(arch, target_modules):
        if name in shapes:
            d_in, d_out = shapes[name]
            per_module[name] = arch.layers * r * (d_in + d_out)
        else:  # embed_tokens (A: r×vocab, B: hidden×r) and lm_head (hidden→vocab) are one module each
            per_module[name] = r * (arch.vocab + arch.hidden)
    lora = sum(per_module.values())
    trainable_bias = 0
    if arch.qkv_bias and bias != "none":
        bias_sizes = {"q_proj": arch.heads * arch.head_dim, "k_proj": arch.kv_heads * arch.head_dim}
        bias_sizes["v_proj"] = bias_sizes["k_proj"]
        # "all" trains every bias of the model; "lora_only" only the biases of adapted modules.
        names = bias_sizes if bias == "all" else [n for n in per_module if n in bias_sizes]
        trainable_bias = arch.layers * sum(bias_sizes[n] for n in names)
    return ParamCount(
        total_base=base_param_count(arch),
        trainable=lora + trainable_bias,
        lora=lora,
        trainable_bias=trainable_bias,
        per_module=per_module,
    )


def lora_scale(r: int, alpha: float, use_rslora: bool) -> float:
    """The factor on BA: alpha/r, or alpha/√r with rsLoRA (not the seed's alpha/r^1.5)."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r
