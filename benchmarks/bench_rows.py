"""The benchmark's rows: how each engine builds its trainable model, and row/shape selection.

Adding a row is one line in ``ROWS``: a name, a setup function (``Ctx`` in, trainable PEFT model
out), and the checkpointing mode legaltune's plan should model for it.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Nothing heavy at module level: an Unsloth child must import unsloth before torch/transformers.
from bench_model import build_random_model
from bench_plan import auto_checkpoint_layers
from bench_settings import ATTN, COMPLETE, FAILED, LORA_ALPHA, LORA_R, QLORA_SUFFIX, SEED, SEVEN_PROJECTIONS

# --------------------------------------------------------------------------------------------
# Rows: how each engine builds its trainable model
# --------------------------------------------------------------------------------------------


@dataclass
class Ctx:
    """What a row's setup function gets: where and how to build the model."""

    variant: str
    qlora: bool
    arch: str
    layers: int | None
    max_seq: int
    device: str
    dtype: str
    model_dir: Path | None
    deadline: float  # time.time() by which the parent stops waiting for this child
    shapes: tuple[tuple[int, int], ...] = ()  # (seq, batch) the child will run

    def random_model(self) -> Any:
        return build_random_model(self.arch, self.layers, self.device, self.dtype)

    def wait_for_model_dir(self) -> Path:
        """The saved local model directory, once the background saver has finished it."""
        if self.model_dir is None:
            raise RuntimeError("this row loads from a local model directory, but none was prepared")
        while True:
            if (self.model_dir / COMPLETE).is_file():
                return self.model_dir
            if (self.model_dir / FAILED).is_file():
                reason = (self.model_dir / FAILED).read_text(encoding="utf-8")
                raise RuntimeError(f"saving the random model to {self.model_dir} failed: {reason}")
            if time.time() > self.deadline:
                raise TimeoutError(f"the random model in {self.model_dir} was not saved in time")
            time.sleep(1.0)

    def load_4bit(self) -> Any:
        """The saved model loaded in NF4 + double quant, bf16 compute (legaltune's load_model settings)."""
        import torch
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        model = AutoModelForCausalLM.from_pretrained(
            self.wait_for_model_dir(),
            dtype=torch.bfloat16,
            attn_implementation=ATTN,
            device_map={"": torch.cuda.current_device()},
            quantization_config=quant,
        )
        model.config.use_cache = False
        return model

    def base_model(self) -> Any:
        return self.load_4bit() if self.qlora else self.random_model()


def _hf_checkpointing(model: Any) -> None:
    kwargs = {"use_reentrant": False}
    # The GPU image's transformers 5.17 has only gradient_checkpointing_enable; 5.23 renames it to
    # activation_checkpointing_enable and warns on the old name. Same behaviour either way.
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _hf_base(ctx: Ctx) -> Any:
    model = ctx.base_model()
    if ctx.qlora:
        from peft import prepare_model_for_kbit_training

        # The standard transformers + PEFT QLoRA recipe (what the reference row measured): it also
        # upcasts the non-quantized weights to fp32 and turns checkpointing on.
        return prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    _hf_checkpointing(model)
    return model


def _peft_lora(model: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_dropout=0.0,
        bias="none",
        target_modules=list(SEVEN_PROJECTIONS),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def setup_hf(ctx: Ctx) -> Any:
    """transformers + PEFT, SDPA, non-reentrant gradient checkpointing."""
    return _peft_lora(_hf_base(ctx))


def _apply_liger(model: Any) -> None:
    """Liger-Kernel's RoPE, RMSNorm, SwiGLU and fused linear cross-entropy on this model instance."""
    import liger_kernel.transformers as liger

    kernels = {
        "rope": True,
        "rms_norm": True,
        "swiglu": True,
        "cross_entropy": False,
        "fused_linear_cross_entropy": True,
    }
    # _apply_liger_kernel_to_instance dispatches on config.model_type and patches the existing
    # modules of this instance (apply_liger_kernel_to_llama(model=...) alone covers only Llama).
    # Liger goes on before PEFT: its SwiGLU forward calls gate/up/down_proj, which PEFT then wraps.
    apply = getattr(liger, "_apply_liger_kernel_to_instance", None)
    if apply is not None:
        apply(model=model, **kernels)
    else:
        liger.apply_liger_kernel_to_llama(model=model, **kernels)


def setup_hf_liger(ctx: Ctx) -> Any:
    """setup_hf + Liger-Kernel applied to this model instance, with the fused linear cross-entropy."""
    model = _hf_base(ctx)
    _apply_liger(model)
    return _peft_lora(model)


def setup_probe(ctx: Ctx, *, checkpointing: bool | str, compile_layers: bool = False) -> Any:
    """Speed-lever probes (x-* rows): Liger kernels (incl. fused linear CE) under legaltune's LoRA and
    checkpointing modes, optionally with every decoder layer compiled. Measurement only: the speed
    layer that productises the winners is the speed issue's work."""
    from legaltune.speed.layers import find_decoder_layers

    base = ctx.base_model()
    _apply_liger(base)
    model = _legaltune_lora(ctx, base, checkpointing)
    if compile_layers:
        for layer in find_decoder_layers(model):
            layer.compile()
    return model


def setup_legaltune(ctx: Ctx, *, checkpointing: bool | str) -> Any:
    """legaltune.model.lora.apply_lora with ``use_gradient_checkpointing=checkpointing``."""
    return _legaltune_lora(ctx, ctx.base_model(), checkpointing)


def setup_speed(
    ctx: Ctx,
    *,
    checkpointing: bool | str,
    compile_layers: bool | str = "auto",
    kernels: bool | str = "auto",
    read_ahead: bool = True,
    checkpoint_layers: int | None = None,
    offload_attention: bool | str = "auto",
    save_norm: bool = False,
    bnb_dequant: bool = False,
    ungrouped: bool = False,
    module_calls: bool = False,
    attention_module: bool = False,
    per_tensor: bool = False,
    trl_head: bool = False,
    fp8: bool = False,
    fp8_eager_quantize: bool = False,
    fp8_keep_transpose: bool = False,
    host_embeddings: bool = False,
    fp8_triton_quantize: bool = True,
) -> Any:
    """legaltune's speed engine as `legaltune train` runs it: apply_lora with a speed config, then
    TRL's fused LM head on the instance (what SFTTrainer adds; the child calls it with
    ``fused_lm_head=True``, as SFTTrainer's compute_loss does). ``fp8``: the base's decoder
    projections in FP8 first (``quantization.load_in_fp8``, as load_model converts them);
    ``fp8_eager_quantize``: the activations' per-token quantization in eager ops, not compiled;
    ``fp8_keep_transpose``: each FP8 weight also kept transposed (``quantization.fp8_keep_transpose``);
    ``host_embeddings``: the input embedding table in pinned host memory (``speed.embeddings_on_host``);
    ``fp8_triton_quantize``: the per-token quantizations by the Triton kernel (``speed/fp8_rows.py``,
    shipped) or, False, by inductor's compiled kernel (``fp8_eager_quantize``: neither)."""
    from legaltune.config.schema import SpeedConfig
    from legaltune.speed.layers import find_decoder_layers

    speed = SpeedConfig(
        mode="fast", kernels=kernels, compile=compile_layers, offload_attention=offload_attention
    )
    base = ctx.base_model()
    if fp8:
        from legaltune.speed import fp8 as fp8_math
        from legaltune.speed.fp8_linear import quantize_model_fp8

        print(f"fp8: {quantize_model_fp8(base)} decoder projections in float8_e4m3", file=sys.stderr)
        fp8_math.COMPILED_QUANTIZE[0] = not fp8_eager_quantize
        fp8_math.TRITON_QUANTIZE[0] = fp8_triton_quantize and not fp8_eager_quantize
        if fp8_keep_transpose:
            from legaltune.speed.fp8_linear import keep_fp8_transposes

            print(f"fp8: {keep_fp8_transposes(base)} transposes kept", file=sys.stderr)
    model = _legaltune_lora(ctx, base, checkpointing, speed=speed, checkpoint_layers=checkpoint_layers)
    if host_embeddings:
        from legaltune.speed.host_embedding import embeddings_to_host

        moved = embeddings_to_host(model)
        how = getattr(model.get_input_embeddings(), "host_gather", "CPU")
        print(
            f"host embeddings: {moved / 2**30:.2f} GiB off the GPU, rows gathered by {how}", file=sys.stderr
        )
    if bnb_dequant:  # NF4 dequantized by bitsandbytes, and again in backward after a recompute (none kept)
        import bitsandbytes.functional as bnbf

        from legaltune.speed import lora_group, lora_math

        lora_math.dequantize_nf4 = lambda w, state, dtype: bnbf.dequantize_4bit(w, state).to(dtype)
        # forwards dequantize without keeping anything (the grouped op imported the name too)
        lora_math.forward_weight = lora_group.forward_weight = lora_math.dense_weight
    if module_calls:  # the halves call the attention and MLP modules' own forward
        from legaltune.speed import split_layer

        split_layer._attention = lambda attn, hidden, **kw: attn(hidden_states=hidden, **kw)[0]
        split_layer._mlp = lambda mlp, x: mlp(x)
    if attention_module:  # the attention module's own forward (q/k/v one by one), gate/up grouped
        from legaltune.speed import split_layer

        split_layer._attention = lambda attn, hidden, **kw: attn(hidden_states=hidden, **kw)[0]
    if ungrouped:  # q/k/v and gate/up projections one by one
        from legaltune.speed import split_layer

        split_layer.grouped_projections = lambda modules, x: [m(x) for m in modules]
    if save_norm:  # the attention half saves its normed input instead of recomputing it
        from legaltune.speed.split_layer import layer_halves

        for layer in find_decoder_layers(model):
            if layer.__dict__.get("_legaltune_halves") is not None:
                layer.__dict__["_legaltune_halves"] = layer_halves(layer, recompute_norm=False)
    if per_tensor:  # offload copies issued per tensor, NF4 launched through Triton's JIT
        from legaltune.speed import nf4

        nf4.DIRECT_LAUNCH[0] = False
        for layer in find_decoder_layers(model):
            if (offloader := layer.__dict__.get("_legaltune_offloader")) is not None:
                pack = type(offloader).pack.__get__(offloader)

                def pack_and_flush(tensor: Any, pack: Any = pack, offloader: Any = offloader) -> Any:
                    packed = pack(tensor)
                    offloader.flush()
                    return packed

                offloader.pack = pack_and_flush
    if not read_ahead:
        for layer in find_decoder_layers(model):
            if (offloader := layer.__dict__.get("_legaltune_offloader")) is not None:
                offloader.read_ahead = False
    from trl.trainer.utils import add_fused_lm_head

    from legaltune.speed.state import speed_report

    add_fused_lm_head(model.get_base_model(), outputs=("log_probs", "entropy", "is_top1"))
    if not trl_head:  # what `legaltune train` does over SFTTrainer's head
        from legaltune.speed.lm_head import fuse_lm_head

        speed_report(model).fused_head = fuse_lm_head(model.get_base_model())
    report = speed_report(model)
    print(report.summary(), *report.notes, sep="\n", file=sys.stderr)
    return model


def setup_auto(ctx: Ctx) -> Any:
    """``speed: auto`` as `legaltune train` runs it: the memory plan picks how many layers to
    checkpoint (offloaded, the first N) for this GPU and the run's largest shape; the others keep
    their activations. Without a GPU every layer is checkpointed (no budget to plan against)."""
    import torch
    from bench_model import plan_arch

    arch = plan_arch(ctx.arch, ctx.layers)
    layers = arch.layers
    if ctx.device == "cuda" and ctx.shapes:
        seq, batch = max(ctx.shapes, key=lambda shape: shape[0] * shape[1])
        budget = torch.cuda.get_device_properties(0).total_memory
        base, qlora = split_variant(ctx.variant)
        compute_bytes = 4 if ctx.dtype == "float32" else 2
        layers = auto_checkpoint_layers(arch, ROWS[base], qlora, seq, batch, compute_bytes, budget)
    print(f"speed auto: {layers}/{arch.layers} layers checkpointed (plan)", file=sys.stderr)
    return setup_speed(ctx, checkpointing="unsloth", checkpoint_layers=layers)


def _legaltune_lora(
    ctx: Ctx, base: Any, checkpointing: bool | str, speed: Any = None, checkpoint_layers: int | None = None
) -> Any:
    from legaltune.config.schema import LoraConfig
    from legaltune.model.lora import apply_lora

    lora = LoraConfig(
        r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_dropout=0.0,
        target_modules=list(SEVEN_PROJECTIONS),
        use_rslora=False,
        use_gradient_checkpointing=checkpointing,
        random_state=SEED,
    )
    return apply_lora(
        base,
        lora,
        gradient_checkpointing=checkpointing is not False,
        max_seq_length=ctx.max_seq,
        speed=speed,
        checkpoint_layers=checkpoint_layers,
    )


def setup_unsloth(ctx: Ctx, *, checkpointing: bool | str, load_in_fp8: bool = False) -> Any:
    """Unsloth's FastLanguageModel from the saved local directory (it cannot take an in-memory model);
    ``load_in_fp8``: Unsloth's FP8 base (TorchAO), passed only when asked (older Unsloth lacks it)."""
    import torch
    from unsloth import FastLanguageModel

    model, _tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(ctx.wait_for_model_dir()),
        max_seq_length=ctx.max_seq,
        dtype=torch.bfloat16,
        load_in_4bit=ctx.qlora,
        **({"load_in_fp8": True} if load_in_fp8 else {}),
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_dropout=0,
        bias="none",
        target_modules=list(SEVEN_PROJECTIONS),
        use_gradient_checkpointing=checkpointing,
        random_state=SEED,
        use_rslora=False,
        max_seq_length=ctx.max_seq,
    )
    FastLanguageModel.for_training(model)
    return model


FUSED_CE = "fused linear cross-entropy never materialises the logits, which the plan model counts"
KBIT_UPCAST = (
    "prepare_model_for_kbit_training upcasts embeddings, norms and lm_head to fp32 (fp32 hidden "
    "states and logits), which the plan model does not model"
)


@dataclass(frozen=True)
class Row:
    """One engine/mode; ``--qlora`` adds its 4-bit variant, named ``<row>+qlora``."""

    setup: Callable[[Ctx], Any]
    checkpointing: bool | str  # the mode legaltune's plan models: False, True (recompute), "unsloth"
    what: str
    needs: tuple[str, ...] = ()  # modules the row imports first; a failed import skips the row
    from_dir: bool = False  # loads the saved local model directory even in bf16 (Unsloth)
    plan_gap: str = ""  # why the plan's memory model does not describe this row ("" = it does)
    plan_gap_qlora: str | None = None  # the same for the 4-bit variant (None = as plan_gap)
    fused_head: bool = False  # the step calls model(..., fused_lm_head=True) (TRL's head, as in training)
    speed: bool = False  # legaltune's speed engine: the plan models its activations (speed=True)
    fp8: bool = False  # FP8 base projections (plan: load_in_fp8); no 4-bit variant
    fp8_transpose: bool = False  # each FP8 weight also kept transposed (plan: fp8_keep_transpose)
    host_embeddings: bool = False  # the input embedding table in host memory (plan: embeddings_on_host)
    # Import while the previous row measures. Not Unsloth: its import must come before
    # transformers and already creates a CUDA context, which must wait for the GPU to be free.
    prestart: bool = True


# Run order = this order (bf16 rows, then their 4-bit variants), so that if --budget-s runs out,
# what is cut is the tail: the rows that compare least (Liger and Unsloth without checkpointing).
# fmt: off
ROWS: dict[str, Row] = {
    "hf": Row(setup_hf, True, "transformers + PEFT, SDPA, non-reentrant checkpointing", plan_gap_qlora=KBIT_UPCAST),
    "unsloth": Row(functools.partial(setup_unsloth, checkpointing="unsloth"), "unsloth", "Unsloth FastLanguageModel, offloaded checkpointing", ("unsloth",), from_dir=True, plan_gap=FUSED_CE, prestart=False),
    "legaltune-offload": Row(functools.partial(setup_legaltune, checkpointing="unsloth"), "unsloth", "legaltune apply_lora, checkpointing with layer inputs offloaded to CPU"),
    "legaltune-recompute": Row(functools.partial(setup_legaltune, checkpointing=True), True, "legaltune apply_lora, recompute checkpointing"),
    "legaltune-nockpt": Row(functools.partial(setup_legaltune, checkpointing=False), False, "legaltune apply_lora, no checkpointing"),
    "legaltune-fast": Row(functools.partial(setup_speed, checkpointing=False), False, "legaltune speed engine, no checkpointing (auto's choice where it fits)", ("trl",), fused_head=True, speed=True),
    "legaltune-lean": Row(functools.partial(setup_speed, checkpointing="unsloth"), "unsloth", "legaltune speed engine, every layer offload-checkpointed", ("trl",), fused_head=True, speed=True),
    "legaltune-auto": Row(setup_auto, "unsloth", "legaltune speed engine, speed: auto (the plan picks the checkpointed layers for this GPU and the largest shape)", ("trl",), fused_head=True, speed=True),
    "hf+liger": Row(setup_hf_liger, True, "hf + Liger-Kernel (RMSNorm, RoPE, SwiGLU, fused linear CE)", ("liger_kernel.transformers",), plan_gap=FUSED_CE, plan_gap_qlora=f"{FUSED_CE}; {KBIT_UPCAST}"),
    "legaltune-fast+fp8": Row(functools.partial(setup_speed, checkpointing=False, fp8=True), False, "legaltune-fast over FP8 base projections (quantization.load_in_fp8: torch._scaled_mm, per-token activation scales)", ("trl",), fused_head=True, speed=True, fp8=True),
    "legaltune-fast+fp8t": Row(functools.partial(setup_speed, checkpointing=False, fp8=True, fp8_keep_transpose=True), False, "legaltune-fast+fp8 with each FP8 weight also kept transposed (quantization.fp8_keep_transpose: no transpose copy in backward)", ("trl",), fused_head=True, speed=True, fp8=True, fp8_transpose=True),
    "legaltune-lean+fp8": Row(functools.partial(setup_speed, checkpointing="unsloth", fp8=True), "unsloth", "legaltune-lean over FP8 base projections (quantization.load_in_fp8)", ("trl",), fused_head=True, speed=True, fp8=True),
    "legaltune-lean+fp8+host": Row(functools.partial(setup_speed, checkpointing="unsloth", fp8=True, host_embeddings=True), "unsloth", "legaltune-lean+fp8 with the input embedding table in pinned host memory (speed.embeddings_on_host)", ("trl",), fused_head=True, speed=True, fp8=True, host_embeddings=True),
    "unsloth+fp8": Row(functools.partial(setup_unsloth, checkpointing="unsloth", load_in_fp8=True), "unsloth", "Unsloth FastLanguageModel with load_in_fp8=True (TorchAO FP8 base), offloaded checkpointing", ("unsloth", "torchao"), from_dir=True, plan_gap=FUSED_CE, prestart=False, fp8=True),
    "unsloth-nockpt": Row(functools.partial(setup_unsloth, checkpointing=False), False, "Unsloth FastLanguageModel, no checkpointing", ("unsloth",), from_dir=True, plan_gap=FUSED_CE, prestart=False),
    # probes for the speed layer (run with --rows x-...): not in the default set
    "x-liger-offload": Row(functools.partial(setup_probe, checkpointing="unsloth"), "unsloth", "probe: Liger kernels + legaltune offloaded checkpointing", ("liger_kernel.transformers",), plan_gap=FUSED_CE),
    "x-liger-nockpt": Row(functools.partial(setup_probe, checkpointing=False), False, "probe: Liger kernels, no checkpointing", ("liger_kernel.transformers",), plan_gap=FUSED_CE),
    "x-fast-eager": Row(functools.partial(setup_speed, checkpointing=False, compile_layers=False), False, "probe: speed engine without torch.compile, no checkpointing", ("trl",), fused_head=True, speed=True),
    "x-fast-liger": Row(functools.partial(setup_speed, checkpointing=False, kernels=True), False, "probe: speed engine with Liger kernels inside compiled layers, no checkpointing", ("trl",), fused_head=True, speed=True),
    "x-lean-eager": Row(functools.partial(setup_speed, checkpointing="unsloth", compile_layers=False), "unsloth", "probe: speed engine without torch.compile, offload", ("trl",), fused_head=True, speed=True),
    "x-lean-recompute-attn": Row(functools.partial(setup_speed, checkpointing="unsloth", offload_attention=False), "unsloth", "probe: legaltune-lean recomputing the whole layer (speed.offload_attention: false)", ("trl",), fused_head=True, speed=True),
    "x-lean-split16": Row(functools.partial(setup_speed, checkpointing="unsloth", offload_attention=16), "unsloth", "probe: legaltune-lean keeping the attention half of the first 16 layers only", ("trl",), fused_head=True, speed=True),
    "x-lean-split8": Row(functools.partial(setup_speed, checkpointing="unsloth", offload_attention=8), "unsloth", "probe: legaltune-lean keeping the attention half of the first 8 layers only", ("trl",), fused_head=True, speed=True),
    "x-lean-save-norm": Row(functools.partial(setup_speed, checkpointing="unsloth", save_norm=True), "unsloth", "probe: legaltune-lean with the attention half saving its normed input instead of recomputing it", ("trl",), fused_head=True, speed=True),
    "x-lean-bnb-dequant": Row(functools.partial(setup_speed, checkpointing="unsloth", bnb_dequant=True), "unsloth", "probe: legaltune-lean dequantizing NF4 with bitsandbytes and again in backward after a recompute", ("trl",), fused_head=True, speed=True),
    "x-lean-ungrouped": Row(functools.partial(setup_speed, checkpointing="unsloth", ungrouped=True), "unsloth", "probe: legaltune-lean running q/k/v and gate/up one by one instead of as grouped ops", ("trl",), fused_head=True, speed=True),
    "x-lean-s4": Row(functools.partial(setup_speed, checkpointing="unsloth", save_norm=True, bnb_dequant=True, ungrouped=True), "unsloth", "probe: x-lean-save-norm, x-lean-bnb-dequant and x-lean-ungrouped at once (normed input saved, bitsandbytes dequantization, projections one by one)", ("trl",), fused_head=True, speed=True),
    "x-lean-s4-modules": Row(functools.partial(setup_speed, checkpointing="unsloth", save_norm=True, bnb_dequant=True, ungrouped=True, module_calls=True), "unsloth", "probe: x-lean-s4 with the halves calling the attention/MLP modules", ("trl",), fused_head=True, speed=True),
    "x-lean-attn-module": Row(functools.partial(setup_speed, checkpointing="unsloth", attention_module=True), "unsloth", "probe: legaltune-lean with the attention module's own forward (q/k/v not grouped; gate/up grouped)", ("trl",), fused_head=True, speed=True),
    "x-lean-per-tensor": Row(functools.partial(setup_speed, checkpointing="unsloth", per_tensor=True), "unsloth", "probe: legaltune-lean issuing each offload copy on its own and launching NF4 through Triton's JIT", ("trl",), fused_head=True, speed=True),
    "x-lean-trl-head": Row(functools.partial(setup_speed, checkpointing="unsloth", trl_head=True), "unsloth", "probe: legaltune-lean with TRL's fused LM head as SFTTrainer installs it (logits projected again in backward)", ("trl",), fused_head=True, speed=True),
    "x-lean-ondemand": Row(functools.partial(setup_speed, checkpointing="unsloth", read_ahead=False), "unsloth", "probe: legaltune-lean with each offloaded input copied back only when backward needs it", ("trl",), fused_head=True, speed=True),
    "x-lean-compiled": Row(functools.partial(setup_speed, checkpointing="unsloth", compile_layers=True), "unsloth", "probe: legaltune-lean with compile forced on (differs from legaltune-lean over 4-bit)", ("trl",), fused_head=True, speed=True),
    "x-fast-compiled": Row(functools.partial(setup_speed, checkpointing=False, compile_layers=True), False, "probe: legaltune-fast with compile forced on (differs from legaltune-fast over 4-bit)", ("trl",), fused_head=True, speed=True),
    "x-fast-fp8-eager-quant": Row(functools.partial(setup_speed, checkpointing=False, fp8=True, fp8_eager_quantize=True), False, "probe: legaltune-fast+fp8 quantizing activations in eager ops instead of one compiled kernel", ("trl",), fused_head=True, speed=True, fp8=True),
    "x-fast-fp8-compiled-quant": Row(functools.partial(setup_speed, checkpointing=False, fp8=True, fp8_triton_quantize=False), False, "probe: legaltune-fast+fp8 quantizing activations by inductor's compiled kernel instead of the Triton one", ("trl",), fused_head=True, speed=True, fp8=True),
    "x-liger-compile-nockpt": Row(functools.partial(setup_probe, checkpointing=False, compile_layers=True), False, "probe: Liger kernels + compiled decoder layers, no checkpointing", ("liger_kernel.transformers",), plan_gap=FUSED_CE),
}
# fmt: on


def split_variant(variant: str) -> tuple[str, bool]:
    """'hf+liger+qlora' → ('hf+liger', True)."""
    if variant.endswith(QLORA_SUFFIX):
        return variant[: -len(QLORA_SUFFIX)], True
    return variant, False


def expand_variants(rows: str | None, qlora: bool, only_qlora: bool = False) -> list[str]:
    """Rows to run, in order: the selected rows in bf16, then (``--qlora``) their 4-bit variants.

    ``--rows`` also takes explicit ``<row>+qlora`` names, to run a 4-bit variant alone;
    ``only_qlora`` keeps just the 4-bit variants (the second half of a run split in two).
    """
    default = ",".join(n for n in ROWS if not n.startswith("x-"))  # probes run only when named
    names = [n.strip() for n in (rows or default).split(",") if n.strip()]
    unknown = [n for n in names if split_variant(n)[0] not in ROWS]
    if unknown:
        raise SystemExit(
            f"--rows: unknown {', '.join(unknown)}; choose from {', '.join(ROWS)} (each also as <row>{QLORA_SUFFIX})"
        )
    fp8_qlora = [n for n in names if split_variant(n)[1] and ROWS[split_variant(n)[0]].fp8]
    if fp8_qlora:
        raise SystemExit(
            f"--rows: {', '.join(fp8_qlora)}: an FP8 row has no 4-bit variant (one base, stored one way)"
        )
    variants = list(dict.fromkeys(names))
    if qlora or only_qlora:
        variants += [f"{n}{QLORA_SUFFIX}" for n in names if not n.endswith(QLORA_SUFFIX) and not ROWS[n].fp8]
    if only_qlora:
        variants = [v for v in variants if split_variant(v)[1]]
    return list(dict.fromkeys(variants))


def needs_model_dir(variant: str) -> bool:
    base, qlora = split_variant(variant)
    return qlora or ROWS[base].from_dir


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """'2048x4,8192x1' → [(seq 2048, batch 4), (seq 8192, batch 1)]."""
    shapes = []
    for part in text.split(","):
        seq, sep, batch = part.strip().lower().partition("x")
        if not sep or not seq.isdigit() or not batch.isdigit() or int(seq) < 2 or int(batch) < 1:
            raise SystemExit(f"--shapes: {part!r} is not SEQxBATCH (e.g. 2048x4)")
        shapes.append((int(seq), int(batch)))
    return shapes
