"""Shared settings of the train-step benchmark (benchmarks/train_step.py): LoRA and optimizer
settings, defaults, the child protocol markers and the JSON field definitions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

# Nothing heavy at module level: an Unsloth child must import unsloth before torch/transformers.

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

# Children and the saver re-invoke the CLI script, whichever module starts them.
SCRIPT = Path(__file__).resolve().with_name("train_step.py")
