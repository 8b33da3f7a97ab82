"""The random model the benchmark trains (child side) and the background saver that writes it
to a local directory for Unsloth and the 4-bit rows."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.resources
import json
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Nothing heavy at module level: an Unsloth child must import unsloth before torch/transformers.
if TYPE_CHECKING:
    from torch import nn

    from legaltune.model.arch import Arch

from bench_settings import ATTN, COMPLETE, FAILED, GIB, SEED

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
