"""Which model families each fast path of the speed engine supports — written once.

Every fast path that restates or replaces part of a transformers model's forward (the Liger
kernels, the split decoder-layer halves, the grouped LoRA projections inside them, the recompute
skip of ``down_proj``, the fused LM head) covers only the families whose code it was checked
against. They all read this table; the memory plan (``legaltune plan``), the speed report's notices
and the config help texts read it too. A family is matched by transformers' class names
(``<prefix>DecoderLayer``, ``<prefix>RMSNorm``, …) or by ``config.model_type``.

No torch import here: `legaltune plan` reads it without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass

# The fast paths that depend on the family (fused LoRA linears and compiled layers do not).
KERNELS = "kernels"  # Liger RMSNorm and gated-MLP kernels
SPLIT = "split"  # attention/MLP halves of a layer (offload_attention), q/k/v and gate/up grouped
RECOMPUTE_SKIP = "recompute_skip"  # down_proj skips its frozen GEMM while its layer is recomputed
FUSED_HEAD = "fused_head"  # the LM head with the hidden-state gradient computed in forward
FAST_PATHS = (KERNELS, SPLIT, RECOMPUTE_SKIP, FUSED_HEAD)
# What each path is called in notices.
PATH_LABELS = {
    KERNELS: "Liger RMSNorm/gated-MLP kernels",
    SPLIT: "attention-kept split layers (speed.offload_attention)",
    RECOMPUTE_SKIP: "down_proj recompute skip",
    FUSED_HEAD: "LM head gradient in forward",
}


@dataclass(frozen=True)
class Family:
    """One model family as the fast paths see it.

    ``norm_offset``/``norm_casting``: the RMSNorm scales by ``(offset + weight)`` and casts as
    Liger's casting mode of that name (Llama: normalise in fp32, cast, then scale; Gemma: all in
    fp32, scale by ``1 + weight``, then cast). ``activation``: the MLP's gate (``silu``: SwiGLU,
    ``gelu_tanh``: GeGLU). ``sandwich_norms``: the layer normalises the attention and MLP outputs
    before each residual add (``post_attention_layernorm`` after the attention,
    ``pre_feedforward_layernorm`` / ``post_feedforward_layernorm`` around the MLP), as Gemma's do.
    ``qk_norm``: q and k are RMS-normalised per head before RoPE (``q_norm`` / ``k_norm``).
    ``paths``: the fast paths checked against this family's code (CPU tests compare them with the
    model's own forward). ``why_not``: for each path it lacks, the reason, for the speed report.
    """

    model_types: tuple[str, ...]
    prefix: str
    label: str
    norm_offset: float = 0.0
    norm_casting: str = "llama"
    activation: str = "silu"
    sandwich_norms: bool = False
    qk_norm: bool = False
    paths: frozenset[str] = frozenset(FAST_PATHS)
    why_not: tuple[tuple[str, str], ...] = ()

    def class_name(self, part: str) -> str:
        """transformers' class of one part: ``DecoderLayer``, ``Attention``, ``MLP``, ``RMSNorm``."""
        return f"{self.prefix}{part}"

    def supports(self, path: str) -> bool:
        return path in self.paths

    @property
    def norms_per_layer(self) -> int:
        """RMSNorms over the hidden size in one decoder layer."""
        return 4 if self.sandwich_norms else 2


FAMILIES: tuple[Family, ...] = (
    Family(("llama",), "Llama", "Llama"),
    Family(("qwen2",), "Qwen2", "Qwen2"),
    Family(("qwen3",), "Qwen3", "Qwen3", qk_norm=True),
    Family(("mistral",), "Mistral", "Mistral"),
    Family(
        # gemma3_text: Gemma3ForCausalLM; gemma3: the text part of Gemma3ForConditionalGeneration
        ("gemma3_text", "gemma3"),
        "Gemma3",
        "Gemma 3",
        norm_offset=1.0,
        norm_casting="gemma",
        activation="gelu_tanh",
        sandwich_norms=True,
        qk_norm=True,
        paths=frozenset({KERNELS, SPLIT, FUSED_HEAD}),
        why_not=(
            (
                RECOMPUTE_SKIP,
                "its layers normalise the MLP output before the residual add, so backward needs down_proj's output",
            ),
        ),
    ),
)

_PARTS = ("DecoderLayer", "Attention", "MLP", "RMSNorm")


def family_for_model_type(model_type: str | None) -> Family | None:
    """The family of a ``config.model_type`` (``llama``, ``gemma3_text``, …), or None."""
    return next((f for f in FAMILIES if model_type in f.model_types), None)


def family_for_class(class_name: str) -> Family | None:
    """The family a transformers module class belongs to (``Gemma3RMSNorm`` → Gemma 3), or None."""
    for family in FAMILIES:
        if any(class_name == family.class_name(part) for part in _PARTS):
            return family
    return None


def class_names(part: str, path: str) -> frozenset[str]:
    """The classes of one part (``DecoderLayer``, ``RMSNorm``, …) in the families ``path`` supports."""
    return frozenset(f.class_name(part) for f in FAMILIES if f.supports(path))


def model_types(path: str) -> frozenset[str]:
    """The ``config.model_type`` values of the families ``path`` supports."""
    return frozenset(t for f in FAMILIES if f.supports(path) for t in f.model_types)


def labels(path: str) -> str:
    """``Llama/Qwen2/Qwen3/Mistral/Gemma 3``: the families ``path`` supports, for help texts."""
    return "/".join(f.label for f in FAMILIES if f.supports(path))


def family_notices(model_type: str | None) -> list[str]:
    """One line per fast path this model's family does not get, and why (the speed report prints
    them, so that nothing is skipped silently); none for a family every path covers."""
    family = family_for_model_type(model_type)
    if family is None:
        missing = ", ".join(PATH_LABELS[p] for p in FAST_PATHS)
        return [
            f"model type {model_type!r} is not in the speed engine's family registry ({labels(KERNELS)}): "
            f"{missing} not applied; fused LoRA and compiled layers still are"
        ]
    reasons = dict(family.why_not)
    return [
        f"{PATH_LABELS[p]}: not applied to {family.label} ({reasons.get(p, 'not checked against its code')})"
        for p in FAST_PATHS
        if not family.supports(p)
    ]


def markdown_table() -> str:
    """The registry as the Markdown table docs/speed.md shows (a test keeps the two equal)."""
    head = "| family | model_type | " + " | ".join(PATH_LABELS[p] for p in FAST_PATHS) + " |"
    rows = [head, "|" + "---|" * (2 + len(FAST_PATHS))]
    for f in FAMILIES:
        marks = " | ".join("✓" if f.supports(p) else "—" for p in FAST_PATHS)
        rows.append(f"| {f.label} | {', '.join(f'`{t}`' for t in f.model_types)} | {marks} |")
    return "\n".join(rows)


__all__ = [
    "FAMILIES",
    "FAST_PATHS",
    "FUSED_HEAD",
    "KERNELS",
    "PATH_LABELS",
    "RECOMPUTE_SKIP",
    "SPLIT",
    "Family",
    "class_names",
    "family_for_class",
    "family_for_model_type",
    "family_notices",
    "labels",
    "markdown_table",
    "model_types",
]
