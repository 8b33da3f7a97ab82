#!/usr/bin/env python3
"""Benchmark one LoRA/QLoRA training step: legaltune's modes side by side with transformers + PEFT,
Liger-Kernel and Unsloth, on a Llama-3.1-8B-shaped model with random weights (issue #6).

One command runs every row and writes a table to stdout and JSON to ``--out``::

    PYTHONPATH=src python3 benchmarks/train_step.py --qlora     # H100: all 14 rows, ≤ --budget-s 540
    PYTHONPATH=src python3 benchmarks/train_step.py --quick     # CPU smoke test, tiny model (fp32)

Each row (engine x checkpointing mode x bf16/4-bit) runs in its own subprocess, so GPU memory,
allocator state and any class patching (Unsloth patches transformers when imported, Liger patches
the Llama module) never leak from one row into the next. A child loads the model once, runs every
shape in it, and prints one JSON line per shape; the parent never touches the GPU.

Step = forward + backward + AdamW step + zero_grad, on random token ids with labels = input ids.
Per shape: ``--warmup`` untimed steps, then ``--steps`` timed ones, each timed between two CUDA
synchronisations; tokens/s is the median over the timed steps. Peak memory is
``torch.cuda.max_memory_allocated`` over the warm-up and timed steps of that shape: the counter is
reset after the model, adapters and optimizer exist (so the peak includes the weights, which are
still allocated, and the optimizer states, which the first step creates).

MFU counts model FLOPs, the same for every row so that rows compare: a LoRA step costs 2 x the
forward FLOPs (forward + the input-gradient half of backward; frozen weights get no weight
gradient), whether or not a row recomputes activations (recomputation is extra work the hardware
does, not useful work; with full recomputation the hardware does ~3 x forward). Forward FLOPs per
token = 2 x (non-embedding parameters, the output head included) + 2 x layers x seq x d_attn (QK^T
and AV cost 2 x 2 x layers x seq x d_attn; the causal mask halves it). LoRA adapter FLOPs (0.5 % at
r=16) are left out. Llama-3.1-8B: 31.1 GFLOP/token at seq 2048, 34.3 at 8192.

While a row measures, the next row's process is already started and imports its libraries (CPU
only; it waits for the parent's "go" before anything touches the GPU; not for Unsloth, whose
import creates a CUDA context): that hides the seconds of import per row (``prestarted``).

Unsloth and the 4-bit rows load from a local directory (Unsloth cannot take an in-memory model;
bitsandbytes quantizes on load): a background process writes the random model there once, on the
CPU, while the first bf16 rows run (rows that overlapped it say ``concurrent_model_save``).
Rows run in ``ROWS`` order, bf16 first; rows not started within ``--budget-s`` are reported as
skipped, and the JSON is rewritten after every row, so a run stopped early keeps what it measured.

Adding a row is one line in ``ROWS``: a name, a setup function (``Ctx`` in, trainable PEFT model
out), and the checkpointing mode legaltune's plan should model for it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import gc
import importlib
import importlib.metadata
import importlib.resources
import importlib.util
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Nothing heavy at module level: an Unsloth child must import unsloth before torch/transformers.
if TYPE_CHECKING:
    from torch import nn

    from legaltune.model.arch import Arch

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
if importlib.util.find_spec("legaltune") is None and SRC.is_dir():
    sys.path.insert(0, str(SRC))

SEVEN_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_R = 16
LORA_ALPHA = 16
SEED = 3407
LEARNING_RATE = 2e-4
WEIGHT_DECAY = 0.01
OPTIM = "adamw_torch_fused"  # what the plan is told; on CPU the step uses torch's default AdamW
ATTN = "sdpa"
GIB = 1024**3
PLAN_TARGET_PCT = 15.0  # issue #6: plan estimate within ±15 % of the measured peak, every row

DEFAULT_ARCH = "llama-3.1-8b"
DEFAULT_SHAPES = "2048x4,8192x1"
QUICK_ARCH = "smollm2-135m"
QUICK_SHAPES = "64x2"
DEFAULT_BUDGET_S = 540.0  # the device machine stops a command at 10 minutes; keep a minute spare
MIN_ROW_S = 20.0  # below this a child cannot even import torch + transformers and load a model

MARK = "@@train_step "  # prefix of a child's result lines on stdout; everything else is log
COMPLETE = "BENCH_COMPLETE.json"  # written last by the saver: the local model directory is usable
FAILED = "BENCH_FAILED.txt"  # written by the saver when it gives up, with the reason
QLORA_SUFFIX = "+qlora"

PEAK_DEFINITION = (
    "torch.cuda.max_memory_allocated over the warm-up and timed steps of the shape; the counter is "
    "reset after the model, adapters and optimizer exist, so weights and optimizer states count"
)
MFU_DEFINITION = (
    "tokens/s x flops_per_token / (peak_tflops x 1e12); flops_per_token = 2 x forward (model FLOPs of "
    "a LoRA step without recomputation, used for every row so rows compare); forward = 2 x "
    "non-embedding params (output head included) + 2 x layers x seq x heads x head_dim (causal)"
)


# --------------------------------------------------------------------------------------------
# Model construction (child side)
# --------------------------------------------------------------------------------------------


def arch_config(name: str) -> dict[str, Any]:
    """The shipped architecture JSON (``src/legaltune/model/archs``) of ``name``."""
    from legaltune.model.arch import shipped_archs

    if name not in shipped_archs():
        raise SystemExit(f"--arch {name!r}: choose one of {', '.join(shipped_archs())}")
    text = importlib.resources.files("legaltune.model.archs").joinpath(f"{name}.json").read_text("utf-8")
    return json.loads(text)


def plan_arch(name: str, layers: int | None) -> Arch:
    """legaltune's Arch for the plan, with the layer override applied."""
    from legaltune.model.arch import Arch

    arch = Arch.from_config(name, arch_config(name))
    return dataclasses.replace(arch, layers=layers) if layers else arch


def _no_init_weights() -> contextlib.AbstractContextManager[None]:
    """transformers' switch that skips weight init (5.x: transformers.initialization; 4.x: modeling_utils)."""
    for module in ("transformers.initialization", "transformers.modeling_utils"):
        with contextlib.suppress(ImportError, AttributeError):
            return importlib.import_module(module).no_init_weights()
    return contextlib.nullcontext()


def _fill_random_(model: nn.Module) -> None:
    """Finite random weights, fast: skipped init leaves torch.empty garbage (NaN/inf possible).

    On the GPU normal_ is effectively free. On the CPU (the saver) an 8B normal_ takes long, so a
    16M-value random pool is tiled into each matrix: values only need to be finite and small for
    speed and memory, not independent.
    """
    import torch

    params = dict(model.named_parameters())  # tied weights appear once
    pool: torch.Tensor | None = None
    with torch.no_grad():
        for name, param in params.items():
            if param.ndim < 2:
                # RMSNorm weights at one keep activations at unit scale; biases (Qwen2 q/k/v) at zero.
                param.fill_(0.0 if name.endswith("bias") else 1.0)
            elif param.is_cuda:
                param.normal_(0.0, 0.02)
            else:
                if pool is None:
                    gen = torch.Generator().manual_seed(SEED)
                    pool = (torch.randn(1 << 24, generator=gen) * 0.02).to(param.dtype)
                flat = param.view(-1)
                for start in range(0, flat.numel(), pool.numel()):
                    chunk = flat[start : start + pool.numel()]
                    chunk.copy_(pool[: chunk.numel()])


def compute_dtype_name(cuda: bool) -> str:
    """bf16 on the GPU; fp32 on a CPU, where bf16 matmuls without AVX-512/AMX run ~50x slower."""
    return "bfloat16" if cuda else "float32"


def build_random_model(arch_name: str, layers: int | None, device: str, dtype: str = "bfloat16") -> Any:
    """A causal LM of the shipped architecture with random weights, built directly on ``device``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(arch_config(arch_name))
    model_type = cfg.pop("model_type")
    for key in ("torch_dtype", "dtype", "architectures"):
        cfg.pop(key, None)
    config = AutoConfig.for_model(model_type, **cfg)
    if layers:
        config.num_hidden_layers = layers
    config.use_cache = False  # training: a KV cache only costs memory (and breaks recomputation)
    # Built under the device context so 16 GB of weights are never staged on the host; init is
    # skipped because HF's per-module init of 8B parameters is slow and we overwrite them anyway.
    with torch.device(device), _no_init_weights():
        model = AutoModelForCausalLM.from_config(
            config, dtype=getattr(torch, dtype), attn_implementation=ATTN
        )
    model.tie_weights()  # tying happens inside the init that no_init_weights skipped
    _fill_random_(model)
    return model


def save_tokenizer(path: Path) -> None:
    """A tiny word-level tokenizer: Unsloth's from_pretrained loads one from the model directory.

    Its ids stay far below the model's vocabulary, and it names a pad token, so Unsloth has no
    reason to add tokens (which would resize the embeddings and change the model).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>"]
    words = (
        "điều khoản luật bộ dân sự người lao động hợp đồng quyền nghĩa vụ theo quy định của là ? .".split()
    )
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<|finetune_right_pad_id|>",
    )
    fast.save_pretrained(path)


def model_dir_ready(path: Path, arch: str, layers: int) -> bool:
    """Whether ``path`` holds a finished save of this architecture and layer count (reusable)."""
    try:
        info = json.loads((path / COMPLETE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return info.get("arch") == arch and info.get("layers") == layers


def saver_main(args: argparse.Namespace) -> int:
    """Write the random model to a local directory once (for Unsloth and 4-bit rows), on the CPU.

    Runs in the background beside the bf16 rows, with CUDA hidden and few threads, so it takes
    neither GPU memory nor the cores the measured rows launch kernels from.
    """
    import torch

    torch.set_num_threads(4)
    target = Path(args.save_model)
    arch = plan_arch(args.arch, args.layers)
    if model_dir_ready(target, args.arch, arch.layers):
        return 0
    shutil.rmtree(target, ignore_errors=True)  # a partial directory from an interrupted run
    target.mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        from legaltune.plan.params import base_param_count

        need = base_param_count(arch) * 2
        free = shutil.disk_usage(target).free
        if free < need * 1.05 + GIB:
            raise RuntimeError(f"{target}: {free / GIB:.1f} GiB free, the model needs {need / GIB:.1f} GiB")
        model = build_random_model(args.arch, args.layers, "cpu")
        model.save_pretrained(target)
        save_tokenizer(target)
        info = {"arch": args.arch, "layers": arch.layers, "bytes": need, "seconds": time.perf_counter() - t0}
        (target / COMPLETE).write_text(json.dumps(info), encoding="utf-8")
        print(f"saved the random model to {target} in {info['seconds']:.0f} s", file=sys.stderr)
        return 0
    except BaseException as exc:
        (target / FAILED).write_text(f"{type(exc).__name__}: {exc}", encoding="utf-8")
        raise


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


def setup_hf_liger(ctx: Ctx) -> Any:
    """setup_hf + Liger-Kernel applied to this model instance, with the fused linear cross-entropy."""
    import liger_kernel.transformers as liger

    model = _hf_base(ctx)
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
    return _peft_lora(model)


def setup_legaltune(ctx: Ctx, *, checkpointing: bool | str) -> Any:
    """legaltune.model.lora.apply_lora with ``use_gradient_checkpointing=checkpointing``."""
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
        ctx.base_model(), lora, gradient_checkpointing=checkpointing is not False, max_seq_length=ctx.max_seq
    )


def setup_unsloth(ctx: Ctx, *, checkpointing: bool | str) -> Any:
    """Unsloth's FastLanguageModel from the saved local directory (it cannot take an in-memory model)."""
    import torch
    from unsloth import FastLanguageModel

    model, _tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(ctx.wait_for_model_dir()),
        max_seq_length=ctx.max_seq,
        dtype=torch.bfloat16,
        load_in_4bit=ctx.qlora,
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
    "hf+liger": Row(setup_hf_liger, True, "hf + Liger-Kernel (RMSNorm, RoPE, SwiGLU, fused linear CE)", ("liger_kernel.transformers",), plan_gap=FUSED_CE, plan_gap_qlora=f"{FUSED_CE}; {KBIT_UPCAST}"),
    "unsloth-nockpt": Row(functools.partial(setup_unsloth, checkpointing=False), False, "Unsloth FastLanguageModel, no checkpointing", ("unsloth",), from_dir=True, plan_gap=FUSED_CE, prestart=False),
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
    names = [n.strip() for n in (rows or ",".join(ROWS)).split(",") if n.strip()]
    unknown = [n for n in names if split_variant(n)[0] not in ROWS]
    if unknown:
        raise SystemExit(
            f"--rows: unknown {', '.join(unknown)}; choose from {', '.join(ROWS)} (each also as <row>{QLORA_SUFFIX})"
        )
    variants = list(dict.fromkeys(names))
    if qlora or only_qlora:
        variants += [f"{n}{QLORA_SUFFIX}" for n in names if not n.endswith(QLORA_SUFFIX)]
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


# --------------------------------------------------------------------------------------------
# Child: one row, every shape
# --------------------------------------------------------------------------------------------


def _emit(record: dict[str, Any]) -> None:
    print(MARK + json.dumps(record), flush=True)


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def _release(cuda: bool) -> None:
    gc.collect()
    if cuda:
        import torch

        torch.cuda.empty_cache()


def _failure(exc: BaseException, where: str = "") -> tuple[str, str]:
    """(status, reason) of a failed step: Triton and bitsandbytes report running out of memory
    as a RuntimeError, not torch.OutOfMemoryError; those count as OOM too."""
    text = str(exc).strip()
    status = "oom" if "out of memory" in text.lower() else "error"
    return status, f"{where}{type(exc).__name__}: {text[:300]}"


def run_shape(
    model: Any, opt: Any, seq: int, batch: int, warmup: int, steps: int, device: str
) -> dict[str, Any]:
    """Warm-up + timed steps at one shape; a dict with status ok / oom / error."""
    import torch

    cuda = device == "cuda"
    gen = torch.Generator(device=device).manual_seed(SEED)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device=device, generator=gen)
    rec: dict[str, Any] = {"seq": seq, "batch": batch, "tokens_per_step": seq * batch}
    _release(cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    warm: list[float] = []
    timed: list[float] = []
    out = loss = None
    failure: tuple[str, str] | None = None
    try:
        for i in range(warmup + steps):
            _sync(cuda)
            t0 = time.perf_counter()
            out = model(input_ids=ids, labels=ids)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss = out.loss.detach()
            # Drop the output (HF's holds [tokens × vocab] logits) before the next forward, or the
            # next step's peak would include this step's logits.
            out = None
            _sync(cuda)
            (timed if i >= warmup else warm).append(time.perf_counter() - t0)
    except torch.OutOfMemoryError as exc:
        failure = ("oom", str(exc).strip().splitlines()[0][:300])
    except Exception as exc:  # a broken row must not take the others down
        traceback.print_exc()
        failure = _failure(exc)
    # Out of the except block: the traceback (and the autograd graph it pins) is gone now.
    out = None
    if cuda:
        rec["peak_alloc_gib"] = torch.cuda.max_memory_allocated() / GIB
        rec["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
    opt.zero_grad(set_to_none=True)
    del ids
    _release(cuda)
    rec["warmup_s"] = warm
    rec["step_s"] = timed
    if failure is not None:
        rec["status"], rec["reason"] = failure
        return rec
    median = statistics.median(timed)
    rec.update(
        status="ok",
        tokens_per_s=seq * batch / median,
        tokens_per_s_steps=[seq * batch / t for t in timed],
        step_median_s=median,
        loss=float(loss) if loss is not None else None,
    )
    return rec


def child_main(args: argparse.Namespace) -> int:
    variant = args.child
    base, qlora = split_variant(variant)
    row = ROWS[base]
    shapes = parse_shapes(args.shapes)

    def emit_all(**fields: Any) -> int:
        for seq, batch in shapes:
            _emit({"variant": variant, "seq": seq, "batch": batch, "tokens_per_step": seq * batch, **fields})
        return 0

    def import_needs() -> str | None:
        for module in row.needs:
            try:
                importlib.import_module(module)
            except Exception as exc:
                return f"import {module} failed: {type(exc).__name__}: {str(exc).strip()[:200]}"
        return None

    # Import the row's own engine first: Unsloth patches transformers/peft on import and has to
    # come before them (this module imports neither at top level for that reason). A prestarted
    # row imports it only once the GPU is its own (Liger's import may create a CUDA context).
    if not args.wait_go and (reason := import_needs()):
        return emit_all(status="skipped", reason=reason)
    import torch

    cuda = torch.cuda.is_available()  # counts devices; creates no CUDA context
    if (qlora or row.from_dir) and not cuda:
        return emit_all(status="skipped", reason="needs a CUDA GPU")
    if qlora and importlib.util.find_spec("bitsandbytes") is None:
        return emit_all(status="skipped", reason="bitsandbytes not installed")
    if args.wait_go:
        # Prestarted: import what the setup needs (CPU only, seconds) while the previous row
        # measures, then wait until the GPU is ours. From here on, a CUDA context may be created.
        for module in ("transformers", "peft", "legaltune.model.lora"):
            importlib.import_module(module)
        from transformers import AutoConfig, AutoModelForCausalLM  # noqa: F401  (resolves lazy modules)

        word, _, deadline = sys.stdin.readline().partition(" ")
        if word.strip() != "go":
            return 0
        args.deadline = float(deadline)
        if reason := import_needs():
            return emit_all(status="skipped", reason=reason)
    device = "cuda" if cuda else "cpu"
    info: dict[str, Any] = {
        "variant": variant,
        "device": device,
        "dtype": compute_dtype_name(cuda),
        "torch_cuda": torch.version.cuda,
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(device_name=props.name, device_total_gib=props.total_memory / GIB)
    else:
        info.update(device_name=platform.processor() or platform.machine(), device_total_gib=None)
    ctx = Ctx(
        variant=variant,
        qlora=qlora,
        arch=args.arch,
        layers=args.layers,
        max_seq=max(seq for seq, _ in shapes),
        device=device,
        dtype=compute_dtype_name(cuda),
        model_dir=Path(args.model_dir) if args.model_dir else None,
        deadline=args.deadline,
    )
    torch.manual_seed(SEED)
    t0 = time.perf_counter()
    failure: tuple[str, str] | None = None
    try:
        model = row.setup(ctx)
        model.train()  # from_pretrained returns eval mode, where HF checkpointing is off
    except torch.OutOfMemoryError as exc:
        failure = ("oom", str(exc).strip().splitlines()[0][:300])
    except Exception as exc:
        traceback.print_exc()
        failure = _failure(exc, "setup: ")
    if failure is not None:
        _release(cuda)
        return emit_all(**info, status=failure[0], reason=failure[1])
    _sync(cuda)
    info["load_s"] = time.perf_counter() - t0
    info["model_alloc_gib"] = torch.cuda.memory_allocated() / GIB if cuda else None
    trainable = [p for p in model.parameters() if p.requires_grad]
    info["trainable_params"] = sum(p.numel() for p in trainable)
    # Fused AdamW (one kernel for all LoRA tensors) on CUDA, as optim adamw_torch_fused; CPU: default.
    opt = torch.optim.AdamW(
        trainable, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, fused=True if cuda else None
    )
    for seq, batch in shapes:
        print(f"{seq}x{batch}: {args.warmup} warm-up + {args.steps} timed steps", file=sys.stderr)
        _emit({**info, **run_shape(model, opt, seq, batch, args.warmup, args.steps, device)})
    return 0


# --------------------------------------------------------------------------------------------
# Parent: run the rows, compare with the plan, report
# --------------------------------------------------------------------------------------------


def flops_per_token(arch: Arch, seq: int) -> float:
    """Model FLOPs of one LoRA training step per token: 2 × forward (see the module docstring)."""
    from legaltune.plan.params import base_param_count

    embed = arch.vocab * arch.hidden
    # The input embedding is a lookup; the output head is a matmul even when tied to it.
    non_embedding = base_param_count(arch) - embed + (embed if arch.tie_embeddings else 0)
    attention = 2 * arch.layers * seq * arch.heads * arch.head_dim  # causal half of 2·2·L·s·d
    return 2.0 * (2 * non_embedding + attention)


def plan_fields(
    arch: Arch, variant: str, seq: int, batch: int, measured_gib: float | None, compute_bytes: int
) -> dict[str, Any]:
    """legaltune's plan estimate of the peak for this row and shape, and its error against the measurement."""
    from legaltune.plan.memory import estimate_memory
    from legaltune.plan.params import count_params

    base, qlora = split_variant(variant)
    row = ROWS[base]
    est = estimate_memory(
        arch,
        count_params(arch, LORA_R, list(SEVEN_PROJECTIONS)),
        batch_size=batch,
        seq_len=seq,
        compute_bytes=compute_bytes,
        load_in_4bit=qlora,
        load_in_8bit=False,
        double_quant=True,
        optim=OPTIM,
        checkpointing=row.checkpointing,
        attn_implementation=ATTN,
        r=LORA_R,
    )
    gap = row.plan_gap_qlora if qlora and row.plan_gap_qlora is not None else row.plan_gap
    plan_gib = est.peak_bytes / GIB
    # Positive error = the plan overestimates the measured peak.
    error = (plan_gib - measured_gib) / measured_gib * 100 if measured_gib else None
    return {
        "plan_peak_gib": plan_gib,
        "plan_components_gib": {k: v / GIB for k, v in est.components.items()},
        "plan_host_offload_gib": est.host_offload_bytes / GIB,
        "plan_checkpointing": row.checkpointing,
        "plan_error_pct": error,
        "plan_within_target": abs(error) <= PLAN_TARGET_PCT if error is not None else None,
        "plan_applies": not gap,
        "plan_note": gap or None,
    }


def _versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata (no imports: Unsloth's import patches things)."""
    names = {
        "torch": "torch",
        "transformers": "transformers",
        "peft": "peft",
        "accelerate": "accelerate",
        "liger_kernel": "liger-kernel",
        "unsloth": "unsloth",
        "unsloth_zoo": "unsloth_zoo",
        "bitsandbytes": "bitsandbytes",
        "triton": "triton",
        "legaltune": "legaltune",
    }
    found: dict[str, str | None] = {"python": platform.python_version()}
    for key, dist in names.items():
        try:
            found[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[key] = None
    return found


@dataclass
class Saver:
    """The background process writing the local model directory, and when it ran."""

    proc: subprocess.Popen[bytes]
    started: float
    ended: float | None = None

    def watch(self) -> None:
        """Note when the saver ends (a daemon thread), to flag the rows that ran beside it."""
        self.proc.wait()
        self.ended = time.monotonic()

    def running_during(self, start: float, end: float) -> bool:
        return self.started < end and (self.ended is None or self.ended > start)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # legaltune importable from the checkout whatever the caller's PYTHONPATH (and the cwd is a scratch dir).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    # No hub here (the GPU machine has no network): fail fast instead of waiting for timeouts;
    # Unsloth otherwise pings the hub for statistics on load.
    for key in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "UNSLOTH_DISABLE_STATISTICS",
    ):
        env.setdefault(key, "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _pump(
    stream: Any, prefix: str, records: list[dict[str, Any]] | None, tail: collections.deque[str]
) -> None:
    """Forward a child's output line by line (live progress), collecting result lines."""
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\n")
        if records is not None and line.startswith(MARK):
            records.append(json.loads(line[len(MARK) :]))
            continue
        tail.append(line)
        print(f"{prefix}{line}", file=sys.stderr, flush=True)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a child and whatever it started (it runs in its own process group)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Child:
    """One row's process. Started early (``prestart``), it imports its libraries while the previous
    row measures and waits for ``go()`` before it touches the GPU; otherwise it runs at once."""

    def __init__(
        self, variant: str, args: argparse.Namespace, cwd: str, *, prestart: bool, deadline: float = 0.0
    ) -> None:
        self.variant, self.waiting = variant, prestart
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--arch", args.arch]
        cmd += ["--shapes", args.shapes, "--warmup", str(args.warmup), "--steps", str(args.steps)]
        if args.layers:
            cmd += ["--layers", str(args.layers)]
        if args.model_dir:
            cmd += ["--model-dir", str(args.model_dir)]
        # A prestarted child learns its deadline (time.time() by which it must be done) with "go".
        cmd += ["--wait-go"] if prestart else ["--deadline", str(deadline)]
        env = _child_env()
        if args.jobs > 1:
            # Parallel smoke rows would each start one thread per core and spin against each other.
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE if prestart else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,  # its own process group: a timeout stops it and all it started
        )
        self.records: list[dict[str, Any]] = []
        self.tail: collections.deque[str] = collections.deque(maxlen=8)
        prefix = f"[{variant}] "
        self.pumps = [
            threading.Thread(
                target=_pump, args=(self.proc.stdout, prefix, self.records, self.tail), daemon=True
            ),
            threading.Thread(target=_pump, args=(self.proc.stderr, prefix, None, self.tail), daemon=True),
        ]
        for pump in self.pumps:
            pump.start()

    def _tell(self, line: str) -> None:
        if not self.waiting:
            return
        self.waiting = False
        assert self.proc.stdin is not None
        # The child may already have exited (a row it had to skip): nothing to tell then.
        with contextlib.suppress(BrokenPipeError, OSError):
            self.proc.stdin.write(line.encode())
            self.proc.stdin.close()

    def go(self, deadline: float) -> None:
        self._tell(f"go {deadline}\n")

    def cancel(self) -> None:
        self._tell("stop\n")
        _kill_group(self.proc)
        for pump in self.pumps:
            pump.join(timeout=10)

    def wait(self, timeout: float) -> tuple[list[dict[str, Any]], str]:
        """Its result records and, if it failed, why."""
        problem = ""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(self.proc)
            problem = f"timeout: stopped after {timeout:.0f} s (--budget-s)"
        for pump in self.pumps:
            pump.join(timeout=10)
        if not problem and self.proc.returncode != 0:
            last = next((line for line in reversed(self.tail) if line.strip()), "")
            problem = f"error: child exited with status {self.proc.returncode}: {last[:300]}"
        return self.records, problem


def start_saver(args: argparse.Namespace) -> Saver:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--save-model",
        str(args.model_dir),
        "--arch",
        args.arch,
    ]
    if args.layers:
        cmd += ["--layers", str(args.layers)]
    env = _child_env()
    env["CUDA_VISIBLE_DEVICES"] = ""  # the saver works on the CPU only: no context, no GPU memory
    print(f"saving the random model to {args.model_dir} in the background (once; reused later)", flush=True)
    proc = subprocess.Popen(cmd, env=env, stdout=sys.stderr, start_new_session=True)
    saver = Saver(proc, time.monotonic())
    threading.Thread(target=saver.watch, daemon=True).start()
    return saver


def _fmt(value: float | None, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Speed of each row against unsloth (or hf when unsloth has no number) of the same precision and shape."""
    ok = {(r["variant"], r["seq"], r["batch"]): r["tokens_per_s"] for r in rows if r.get("status") == "ok"}
    for r in rows:
        _, qlora = split_variant(r["variant"])
        suffix = QLORA_SUFFIX if qlora else ""
        for base in ("unsloth", "hf"):
            ref = ok.get((base + suffix, r["seq"], r["batch"]))
            if ref:
                r["ratio_vs"] = base + suffix
                r["ratio"] = r["tokens_per_s"] / ref if r.get("status") == "ok" else None
                break
        else:
            r["ratio_vs"], r["ratio"] = None, None


def print_table(rows: list[dict[str, Any]], walls: dict[str, float]) -> None:
    head = (
        f"{'row':<28} {'shape':>7} {'tok/s':>9} {'peak GiB':>9} {'MFU %':>6} {'plan GiB':>9} "
        f"{'err %':>7} {'ratio':>15} {'row s':>6}"
    )
    print()
    print(head)
    print("-" * len(head))
    flagged = False
    for r in rows:
        shape = f"{r['seq']}x{r['batch']}"
        wall = _fmt(walls.get(r["variant"]), ".0f")
        mark = "" if r.get("plan_applies", True) else "*"
        flagged = flagged or bool(mark)
        plan = _fmt(r.get("plan_peak_gib"), ".1f") + mark
        if r.get("status") != "ok":
            peak = _fmt(r.get("peak_alloc_gib"), ".1f")
            note = f"{r.get('status', '?').upper()}: {r.get('reason', '')}"[:60]
            print(f"{r['variant']:<28} {shape:>7} {'-':>9} {peak:>9} {'-':>6} {plan:>9} {'':>7} {note}")
            continue
        mfu = _fmt(r["mfu"] * 100 if r.get("mfu") is not None else None, ".1f")
        err = _fmt(r.get("plan_error_pct"), "+.1f")
        ratio = f"{r['ratio']:.2f}x {r['ratio_vs']}" if r.get("ratio") is not None else "-"
        print(
            f"{r['variant']:<28} {shape:>7} {r['tokens_per_s']:>9,.0f} {_fmt(r.get('peak_alloc_gib'), '.2f'):>9} "
            f"{mfu:>6} {plan:>9} {err:>7} {ratio:>15} {wall:>6}"
        )
    print()
    print("peak = max allocated over warm-up + timed steps (after load); err = (plan - measured) / measured;")
    print(
        f"MFU = model FLOPs (2 x forward for every row) / peak; plan target: within ±{PLAN_TARGET_PCT:.0f} %."
    )
    if flagged:
        print("* the plan's memory model does not describe this row yet (see plan_note in the JSON).")


def gpu_present() -> bool:
    """An NVIDIA driver and a visible device (what torch.cuda.is_available() will say, without torch)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def default_out() -> Path:
    out = os.environ.get("OUT")
    return Path(out) / "train_step.json" if out else REPO / "benchmarks" / "results" / "train_step.json"


def parent_main(args: argparse.Namespace) -> int:
    t_start = time.monotonic()
    arch = plan_arch(args.arch, args.layers)
    shapes = parse_shapes(args.shapes)
    variants = expand_variants(args.rows, args.qlora, args.only_qlora)
    out_path = Path(args.out) if args.out else default_out()
    out_path.parent.mkdir(parents=True, exist_ok=True)

    # The parent does not import torch (seconds per run, the smoke test's budget); it only guesses
    # whether the children will have a GPU. Records carry the device and dtype the child really used.
    cuda = gpu_present()
    meta: dict[str, Any] = {
        "benchmark": "train_step",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(sys.orig_argv),
        "cwd": os.getcwd(),
        "host": platform.node(),
        "gpu": None,
        "gpu_memory_gib": None,
        "cuda": None,
        "versions": _versions(),
        "env": {k: os.environ.get(k) for k in ("PYTORCH_CUDA_ALLOC_CONF", "CUDA_VISIBLE_DEVICES")},
        "settings": {
            "arch": args.arch,
            "layers": arch.layers,
            "shapes": [f"{s}x{b}" for s, b in shapes],
            "warmup_steps": args.warmup,
            "timed_steps": args.steps,
            "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "dropout": 0.0, "targets": list(SEVEN_PROJECTIONS)},
            "optimizer": "torch.optim.AdamW(lr 2e-4, wd 0.01), fused=True on CUDA",
            "attn_implementation": ATTN,
            "dtype": compute_dtype_name(cuda),  # corrected from the children's records at the end
            "peak_tflops": args.peak_tflops,
            "flops_per_token": {f"{s}": flops_per_token(arch, s) for s in sorted({s for s, _ in shapes})},
            "peak_memory": PEAK_DEFINITION,
            "mfu": MFU_DEFINITION,
            "plan_error": "(plan - measured) / measured x 100; target within ±15 %",
            "budget_s": args.budget_s,
            "jobs": args.jobs,
        },
        "rows_requested": variants,
    }
    print(f"train_step: {args.arch} ({arch.layers} layers), shapes {args.shapes}, {len(variants)} rows")
    print(f"rows: {', '.join(variants)}")
    print(f"JSON: {out_path}", flush=True)

    saver: Saver | None = None
    dir_variants = [v for v in variants if needs_model_dir(v)]
    possible = any(
        (split_variant(v)[1] and importlib.util.find_spec("bitsandbytes") is not None)
        or (ROWS[split_variant(v)[0]].from_dir and importlib.util.find_spec("unsloth") is not None)
        for v in dir_variants
    )
    if cuda and possible:
        if args.model_dir is None:
            tag = f"{args.arch}-L{arch.layers}"
            args.model_dir = Path(tempfile.gettempdir()) / "legaltune-bench" / tag
        if not model_dir_ready(Path(args.model_dir), args.arch, arch.layers):
            # Removed now, not by the saver: a child must never find a stale COMPLETE marker.
            shutil.rmtree(args.model_dir, ignore_errors=True)
            saver = start_saver(args)
    meta["model_dir"] = str(args.model_dir) if args.model_dir else None

    scratch = tempfile.mkdtemp(prefix="legaltune-bench-run-")  # children's cwd: Unsloth writes caches there
    results: dict[str, list[dict[str, Any]]] = {}
    walls: dict[str, float] = {}
    lock = threading.Lock()

    def finish(
        variant: str, records: list[dict[str, Any]], problem: str, wall: float, span: tuple[float, float]
    ) -> None:
        by_shape = {(r["seq"], r["batch"]): r for r in records}
        rows = []
        for seq, batch in shapes:
            rec = by_shape.get((seq, batch))
            if rec is None:  # the child died or was stopped before this shape
                status, _, reason = problem.partition(": ")
                rec = {"variant": variant, "seq": seq, "batch": batch, "tokens_per_step": seq * batch}
                rec.update(status=status or "error", reason=reason or "no result from the child")
            base, qlora = split_variant(variant)
            rec.update(
                row=base, qlora=qlora, what=ROWS[base].what, row_wall_s=wall, oom=rec["status"] == "oom"
            )
            dtype = rec.get("dtype") or compute_dtype_name(cuda)
            compute_bytes = 4 if dtype == "float32" else 2
            rec.update(plan_fields(arch, variant, seq, batch, rec.get("peak_alloc_gib"), compute_bytes))
            rec["flops_per_token"] = flops_per_token(arch, seq)
            tok = rec.get("tokens_per_s")
            on_gpu = rec.get("device") == "cuda"
            rec["mfu"] = tok * rec["flops_per_token"] / (args.peak_tflops * 1e12) if tok and on_gpu else None
            rec["concurrent_model_save"] = bool(saver and saver.running_during(*span))
            rows.append(rec)
        with lock:
            results[variant], walls[variant] = rows, wall
            ordered = [r for v in variants if v in results for r in results[v]]
            note_device(meta, ordered)
            add_ratios(ordered)
            write_json(out_path, meta, ordered, time.monotonic() - t_start)
            done = len(results)
        summary = " | ".join(
            f"{r['seq']}x{r['batch']}: "
            + (
                f"{r['tokens_per_s']:,.0f} tok/s, {_fmt(r.get('peak_alloc_gib'), '.1f')} GiB"
                if r.get("status") == "ok"
                else r.get("status", "?")
            )
            for r in rows
        )
        print(f"[{done}/{len(variants)}] {variant}: {wall:.1f} s  ({summary})", flush=True)

    def run_one(variant: str, child: Child | None = None, next_variant: str | None = None) -> Child | None:
        """Run ``variant`` (in ``child`` if it was prestarted); prestart ``next_variant`` meanwhile."""
        remaining = args.budget_s - (time.monotonic() - t_start)
        start = time.monotonic()
        if remaining < MIN_ROW_S:
            if child is not None:
                child.cancel()
            problem = (
                f"skipped: time budget spent (--budget-s {args.budget_s:.0f}); run it with --rows {variant}"
            )
            finish(variant, [], problem, 0.0, (start, start))
            return None
        prestarted = child is not None  # its imports ran during the previous row: not in row_wall_s
        if child is None:
            child = Child(variant, args, scratch, prestart=False, deadline=time.time() + remaining)
        child.go(time.time() + remaining)
        following = None
        if next_variant is not None and ROWS[split_variant(next_variant)[0]].prestart:
            following = Child(next_variant, args, scratch, prestart=True)
        records, problem = child.wait(remaining)
        end = time.monotonic()
        for rec in records:
            rec["prestarted"] = prestarted
        finish(variant, records, problem, end - start, (start, end))
        return following

    following: Child | None = None
    try:
        if args.jobs > 1:
            with ThreadPoolExecutor(max_workers=args.jobs) as pool:
                list(pool.map(run_one, variants))
        else:
            for i, variant in enumerate(variants):
                after = variants[i + 1] if i + 1 < len(variants) else None
                following = run_one(variant, following, after)
    finally:
        if following is not None:
            following.cancel()
        if saver is not None and saver.proc.poll() is None:
            _kill_group(saver.proc)  # no row needs it any more; an unfinished directory is redone next time
        shutil.rmtree(scratch, ignore_errors=True)
        if args.clean_model_dir and args.model_dir:
            shutil.rmtree(args.model_dir, ignore_errors=True)

    ordered = [r for v in variants for r in results.get(v, [])]
    note_device(meta, ordered)
    add_ratios(ordered)
    total = time.monotonic() - t_start
    write_json(out_path, meta, ordered, total)
    print_table(ordered, walls)
    print(f"total {total:.0f} s; JSON written to {out_path}")
    return 0


def note_device(meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """GPU name, CUDA version and dtype as the first child that ran reported them."""
    ran = next((r for r in rows if r.get("device")), None)
    if ran is not None:
        meta["cuda"], meta["settings"]["dtype"] = ran.get("torch_cuda"), ran.get("dtype")
        if ran["device"] == "cuda":
            meta["gpu"], meta["gpu_memory_gib"] = ran.get("device_name"), ran.get("device_total_gib")


def write_json(path: Path, meta: dict[str, Any], rows: list[dict[str, Any]], total_s: float) -> None:
    """Written after every row, so a run stopped at its time limit still leaves what it measured."""
    data = {**meta, "total_wall_s": total_s, "rows": rows}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="LoRA/QLoRA train-step benchmark: legaltune vs transformers+PEFT, Liger, Unsloth.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--rows", help=f"comma-separated rows (default: all): {', '.join(ROWS)}; <row>+qlora too"
    )
    parser.add_argument("--qlora", action="store_true", help="also run the 4-bit (NF4) variant of each row")
    parser.add_argument("--only-qlora", action="store_true", help="run only the 4-bit variants of the rows")
    parser.add_argument(
        "--arch", help=f"shipped architecture (default {DEFAULT_ARCH}; --quick: {QUICK_ARCH})"
    )
    parser.add_argument("--layers", type=int, help="override the number of decoder layers (smoke tests)")
    parser.add_argument(
        "--shapes", help=f"SEQxBATCH list (default {DEFAULT_SHAPES}; --quick: {QUICK_SHAPES})"
    )
    parser.add_argument("--warmup", type=int, help="untimed steps per shape (default 2; --quick: 1)")
    parser.add_argument("--steps", type=int, help="timed steps per shape (default 5; --quick: 2)")
    parser.add_argument(
        "--peak-tflops", type=float, default=798.0, help="peak bf16 TFLOP/s for MFU (H100 here)"
    )
    parser.add_argument("--out", help="JSON output (default: $OUT/train_step.json, else benchmarks/results/)")
    parser.add_argument("--quick", action="store_true", help="CPU smoke test: tiny arch, 1 + 2 steps, 64x2")
    parser.add_argument(
        "--budget-s", type=float, default=DEFAULT_BUDGET_S, help="rows not started by then are skipped"
    )
    parser.add_argument("--jobs", type=int, default=1, help="rows at a time (--quick only: parallel timings mean nothing)")  # fmt: skip
    parser.add_argument(
        "--model-dir", type=Path, help="where the random model is saved for Unsloth/4-bit rows"
    )
    parser.add_argument("--clean-model-dir", action="store_true", help="delete the saved model at the end")
    parser.add_argument("--list-rows", action="store_true", help="print the rows and exit")
    # Internal: one row in a child process / the background saver.
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--save-model", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=float("inf"), help=argparse.SUPPRESS)
    parser.add_argument("--wait-go", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.jobs < 1 or (args.jobs > 1 and not args.quick):
        parser.error("--jobs > 1 only with --quick: rows sharing a GPU or CPU would time each other")
    args.arch = args.arch or (QUICK_ARCH if args.quick else DEFAULT_ARCH)
    args.shapes = args.shapes or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.steps = args.steps if args.steps is not None else (2 if args.quick else 5)
    if args.steps < 1 or args.warmup < 0 or (args.layers is not None and args.layers < 1):
        parser.error("--steps must be ≥ 1, --warmup ≥ 0, --layers ≥ 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_rows:
        for name, row in ROWS.items():
            print(f"{name:<22} {row.what}")
        return 0
    if args.save_model:
        return saver_main(args)
    if args.child:
        return child_main(args)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
