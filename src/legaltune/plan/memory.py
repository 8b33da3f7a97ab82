"""Peak GPU memory model for a LoRA/QLoRA training step, without loading weights.

The estimate is the peak of *allocated* memory (what torch.cuda.max_memory_allocated reports);
the CUDA context and allocator slack are added separately when checking the fit.

Unlike the seed's ``VRAM ≈ Model_Size × Seq_Length² × Batch_Size × Precision``, nothing here is
quadratic in sequence length with flash/SDPA attention: activations and logits grow linearly in
tokens; only eager attention stores [heads × seq × seq] scores.

Calibration (H100, Llama-3.1-8B, r=16 on 7 projections, 8,192 tokens per micro-batch, HF + PEFT
with checkpointing, measured 31.3 GiB): weights 14.96 + LoRA states 0.63 + saved layer inputs 2.0
+ one recomputed layer 2.5 + logits/loss 11.7 = 31.8 GiB (+1.6 %). The speed issue re-measures
every row of the benchmark against this model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from legaltune.model.arch import Arch
from legaltune.plan.params import ParamCount
from legaltune.plan.sharding import Parallel, state_components
from legaltune.speed.families import family_for_model_type
from legaltune.speed.policy import MIN_OFFLOAD_BYTES, pinned_bytes

GIB = 1024**3
MIB = 1024**2

# Bytes of optimizer state per trainable parameter (LoRA weights are fp32: PEFT up-casts adapters
# of bf16/fp16 models so that small updates are not lost to rounding).
OPTIMIZER_STATE_BYTES = {
    "adamw_torch": 8.0,  # exp_avg + exp_avg_sq in fp32
    "adamw_torch_fused": 8.0,
    "paged_adamw_32bit": 8.0,  # same size, but can be paged out to host under pressure
    "adamw_8bit": 2.0,  # two 8-bit states (+ tiny block scales)
    "adamw_bnb_8bit": 2.0,
    "paged_adamw_8bit": 2.0,
    "adafactor": 0.0,  # factored second moment: O(rows + cols), computed per matrix below
    "sgd": 0.0,  # no momentum by default
}
# NF4: 4 bits + one 8-bit absmax per 64 weights + one fp32 scale per 256 absmax (double quant).
NF4_BYTES = {True: 0.5 + 1 / 64 + 4 / (64 * 256), False: 0.5 + 4 / 64}
# FP8 (quantization.load_in_fp8): one byte per projection weight and one fp32 scale per output channel.
FP8_WEIGHT_BYTES = 1.0
FP8_SCALE_BYTES = 4.0
# HF's loss path keeps bf16 logits, an fp32 upcast, and the fp32 softmax/grad: ~12 bytes per vocab entry.
LOGITS_BYTES_PER_ENTRY = 12.0
# The layer being recomputed in backward also holds its gradient transients: ~35 % on top of its
# saved activations (fit on the calibration point above).
RECOMPUTE_TRANSIENT = 1.35
# The speed engine's recompute (fused LoRA, compiled layers): ~10 % on top. Fit on the H100 steps of
# Llama-3.1-8B at 8,192 and 262,144 tokens (docs/performance.md): 1.35 would overestimate them by
# 3 % at 8k and 16-18 % at 262k (the transient does not grow with the layer's activations).
FAST_RECOMPUTE_TRANSIENT = 1.10
CONTEXT_BYTES = 1.0 * GIB  # CUDA context + cuBLAS/cuDNN workspaces, not in "allocated"
SINGLE = Parallel()


@dataclass
class MemoryEstimate:
    """Bytes per component of the peak, plus host memory that offloaded checkpointing needs."""

    components: dict[str, float]
    tokens_per_micro_batch: int
    host_offload_bytes: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def peak_bytes(self) -> float:
        return sum(self.components.values())

    def fits(self, gpu_bytes: float) -> bool:
        return self.peak_bytes + CONTEXT_BYTES <= gpu_bytes


def _layer_activation_bytes(arch: Arch, tokens: int, act_bytes: int) -> float:
    """Activations autograd saves for one decoder layer (LoRA on frozen weights, flash/SDPA attention).

    Per token: the layer input, q/k/v and attention output, the MLP's gate/up/act/product (4·I),
    inputs of the projections, and the fp32 copies HF's RMSNorm keeps (8·H bytes for two norms).
    """
    kv = arch.kv_heads * arch.head_dim
    per_token = act_bytes * (11 * arch.hidden + 2 * kv + 4 * arch.intermediate) + 8 * arch.hidden
    extra_norms, q_extra, normed_qk = _family_extras(arch)
    # each further norm: its input and output, and its fp32 copy; wider q: q, attention output, o input
    per_token += extra_norms * (2 * act_bytes + 4) * arch.hidden + 3 * act_bytes * q_extra
    per_token += (act_bytes + 4) * normed_qk
    return tokens * per_token


def _family_extras(arch: Arch) -> tuple[int, int, int]:
    """What a layer saves beyond a Llama layer of the same sizes (uncalibrated: no GPU measurement of
    these families yet): norms past two per layer (Gemma's sandwich norms), q's width past the hidden
    size (Gemma 3 270M: 4 heads × 256 = 1024 > 640), and the normed q and k of q/k-norm families."""
    family = family_for_model_type(arch.model_type)
    q = arch.heads * arch.head_dim
    extra_norms = (family.norms_per_layer - 2) if family else 0
    normed_qk = q + arch.kv_heads * arch.head_dim if family is not None and family.qk_norm else 0
    return extra_norms, q - arch.hidden, normed_qk


def _fast_layer_activation_bytes(arch: Arch, tokens: int, act_bytes: int) -> float:
    """Activations one decoder layer keeps on the speed engine's path (legaltune.speed).

    Per token: the two norm inputs and outputs (4·H), q and attention output (2·H), k and v (2·kv),
    and the MLP's gate, up and gated product (3·I), all in the compute dtype: fused LoRA linears save
    only their input (shared by q/k/v and by gate/up) and a tokens × r product; Liger's or inductor's
    norms keep no fp32 copies. Calibrated on the H100 (docs/performance.md): 1.06 GiB per layer at
    8,192 tokens for Llama-3.1-8B, measured 1.08.
    """
    kv = arch.kv_heads * arch.head_dim
    extra_norms, q_extra, normed_qk = _family_extras(arch)
    per_token = 6 * arch.hidden + 2 * kv + 3 * arch.intermediate
    per_token += 2 * extra_norms * arch.hidden + 2 * q_extra + normed_qk
    return tokens * act_bytes * per_token


def layer_host_bytes(
    arch: Arch, batch_size: int, seq_len: int, compute_bytes: int, attention_kept: bool
) -> float:
    """Pinned host memory one offload-checkpointed layer holds until backward: its input, or with
    the attention half kept (speed.offload_attention), everything that half saves — input, q, k, v,
    attention output, log-sum-exp — plus the MLP half's input. Llama-3.1-8B at 8,192 tokens: 289 MiB
    a layer, 9.03 GiB for 32 (measured by the benchmark's offloader: 9.03)."""
    tokens = batch_size * seq_len
    layer_input = pinned_bytes(tokens * arch.hidden * compute_bytes)
    if not attention_kept:
        return layer_input
    q = tokens * arch.heads * arch.head_dim * compute_bytes
    kv = tokens * arch.kv_heads * arch.head_dim * compute_bytes
    lse = batch_size * arch.heads * seq_len * 4
    saved = [q, kv, kv, q] + ([lse] if lse >= MIN_OFFLOAD_BYTES else [])
    extra_norms, _q_extra, normed_qk = _family_extras(arch)
    if extra_norms:  # sandwich norms: the attention output before its norm (o_proj's output)
        saved.append(tokens * arch.hidden * compute_bytes)
    if normed_qk:  # q/k before and after their per-head norms
        saved += [q, kv]
    return 2 * layer_input + sum(pinned_bytes(b) for b in saved)


def fp8_transient_bytes(arch: Arch, tokens: int, *, keep_transpose: bool = False) -> float:
    """What the running FP8 projection adds to the peak (uncalibrated: not yet measured on a GPU).

    Forward: its input quantized to e4m3 (1 byte per element) with one fp32 scale per token. Backward:
    the output gradient, scaled and quantized (1 byte per element, one scale per token), and the
    weight's transposed e4m3 copy that cuBLASLt's column-major operand needs. The widest projection
    (the MLP's, I wide) bounds each; forward's and backward's are never alive at once. With
    ``keep_transpose`` the transposed copies are part of the weights instead."""
    shapes = arch.linear_shapes().values()
    widest_in = max(i for i, _ in shapes)
    widest_out = max(o for _, o in shapes)
    largest = max(i * o for i, o in shapes)
    forward = tokens * (widest_in * FP8_WEIGHT_BYTES + FP8_SCALE_BYTES)
    backward = tokens * (widest_out * FP8_WEIGHT_BYTES + FP8_SCALE_BYTES)
    if not keep_transpose:
        backward += largest * FP8_WEIGHT_BYTES
    return max(forward, backward)


def _fused_head_bytes(arch: Arch, tokens: int) -> float:
    """TRL's chunked LM head (what `legaltune train` uses): one fp32 tile of ≤ 4,096 tokens ×
    ≤ 32,768 vocabulary entries, plus the fp32 gradient of the final hidden states."""
    return min(tokens, 4096) * min(arch.vocab, 32768) * 4.0 + tokens * arch.hidden * 4.0


def estimate_memory(
    arch: Arch,
    params: ParamCount,
    *,
    batch_size: int,
    seq_len: int,
    compute_bytes: int,
    load_in_4bit: bool,
    load_in_8bit: bool,
    double_quant: bool,
    optim: str,
    checkpointing: bool | str,
    attn_implementation: str,
    r: int,
    speed: bool = False,
    fused_head: bool = False,
    checkpoint_layers: int | None = None,
    attention_layers: int = 0,
    parallel: Parallel = SINGLE,
    load_in_fp8: bool = False,
    fp8_keep_transpose: bool = False,
    embeddings_on_host: bool = False,
) -> MemoryEstimate:
    """Estimate peak allocated GPU memory for one training step (worst case: every row at seq_len).

    ``speed``: the speed engine's activations (fused LoRA; legaltune.speed) instead of transformers
    + PEFT's. ``fused_head``: the loss through TRL's chunked LM head instead of full logits.
    ``checkpoint_layers``: only the first N layers are checkpointed (None = all, when checkpointing).
    ``attention_layers``: of the offloaded layers, the first N keep their attention half (its
    activations offloaded too: more host memory, same GPU peak within the model's accuracy).
    ``parallel``: the bytes of one GPU of a DDP or FSDP run (legaltune.plan.sharding).
    ``load_in_fp8``: the decoder projections stored in e4m3 with per-channel scales (docs/fp8.md);
    ``fp8_keep_transpose``: each also kept transposed (one more byte per weight).
    ``embeddings_on_host``: the input embedding table in pinned host memory (speed/host_embedding.py).
    """
    tokens = batch_size * seq_len
    linear = arch.layers * sum(i * o for i, o in arch.linear_shapes().values())
    rest = params.total_base - linear
    notes: list[str] = []
    linear_weights = float(linear * compute_bytes)
    if load_in_4bit:
        linear_weights = linear * NF4_BYTES[double_quant]
        weights = linear_weights + rest * compute_bytes
        wname = f"weights (NF4{' + double quant' if double_quant else ''}; embeddings/norms in {compute_bytes * 8}-bit)"
    elif load_in_8bit:
        rows = arch.layers * sum(o for _, o in arch.linear_shapes().values())
        linear_weights = linear * 1.0 + rows * 4
        weights = linear_weights + rest * compute_bytes
        wname = "weights (int8 + row scales)"
    elif load_in_fp8:
        rows = arch.layers * sum(o for _, o in arch.linear_shapes().values())
        copies = 2 if fp8_keep_transpose else 1
        linear_weights = linear * FP8_WEIGHT_BYTES * copies + rows * FP8_SCALE_BYTES
        weights = linear_weights + rest * compute_bytes
        kept = " + their kept transposes" if fp8_keep_transpose else ""
        wname = f"weights (FP8 e4m3 projections{kept} + channel scales; embeddings/norms/head in {compute_bytes * 8}-bit)"
    else:
        weights = params.total_base * compute_bytes
        wname = f"weights ({compute_bytes * 8}-bit)"

    host_table = 0.0
    if embeddings_on_host and not arch.tie_embeddings:
        host_table = float(arch.vocab * arch.hidden * compute_bytes)
        weights -= host_table
        wname += "; input embeddings in host memory"
    trainable = params.trainable
    opt_bytes = trainable * OPTIMIZER_STATE_BYTES.get(optim, 8.0)
    if optim == "adafactor":
        # one fp32 row vector and one column vector per LoRA matrix
        shapes = arch.linear_shapes()
        opt_bytes = sum(
            4 * arch.layers * (2 * r + shapes[m][0] + shapes[m][1])
            if m in shapes
            else 4 * (2 * r + arch.vocab + arch.hidden)
            for m in params.per_module
        )

    layer = (_fast_layer_activation_bytes if speed else _layer_activation_bytes)(arch, tokens, compute_bytes)
    layer_input = tokens * arch.hidden * compute_bytes
    n_ckpt = 0 if checkpointing is False else arch.layers if checkpoint_layers is None else checkpoint_layers
    n_ckpt = max(0, min(n_ckpt, arch.layers))
    kept = (arch.layers - n_ckpt) * layer
    transient = (FAST_RECOMPUTE_TRANSIENT if speed else RECOMPUTE_TRANSIENT) * layer
    host = host_table
    if n_ckpt == 0:
        acts = kept
        act_name = "activations (all layers kept, no checkpointing)"
    elif checkpointing == "unsloth":
        # layer inputs live in pinned host memory; two are on the GPU at a time (one copying, one used).
        # Kept layers are freed by backward before it reaches the checkpointed ones, so the peak is
        # the larger of the end of forward and the recompute of one layer.
        acts = 2 * layer_input + max(kept, transient)
        split = max(0, min(attention_layers, n_ckpt))
        host += (n_ckpt - split) * layer_host_bytes(arch, batch_size, seq_len, compute_bytes, False)
        host += split * layer_host_bytes(arch, batch_size, seq_len, compute_bytes, True)
        what = (
            "inputs offloaded to CPU" if n_ckpt == arch.layers else f"{n_ckpt}/{arch.layers} layers offloaded"
        )
        act_name = f"activations ({what}; 1 layer recomputed)"
    else:
        acts = n_ckpt * layer_input + max(kept, transient)
        what = "layer inputs kept" if n_ckpt == arch.layers else f"{n_ckpt}/{arch.layers} layers recomputed"
        act_name = f"activations ({what}; 1 layer recomputed)"

    if attn_implementation == "eager":
        # eager materialises bf16 scores + fp32 softmax per head; kept per layer without checkpointing
        scores = batch_size * arch.heads * seq_len * seq_len * (compute_bytes + 4)
        attn = scores * (arch.layers - n_ckpt + (1 if n_ckpt else 0))
        notes.append(
            "eager attention stores [heads × seq × seq] scores: memory grows with seq² — use sdpa or flash"
        )
    else:
        attn = batch_size * arch.heads * seq_len * 4  # log-sum-exp per query row
    logits = _fused_head_bytes(arch, tokens) if fused_head else tokens * arch.vocab * LOGITS_BYTES_PER_ENTRY

    components = state_components(
        arch,
        weights=float(weights),
        weights_name=wname,
        linear_weights=float(linear_weights),
        trainable=trainable,
        optimizer_bytes=float(opt_bytes),
        optimizer_name=optim,
        compute_bytes=compute_bytes,
        quantized=load_in_4bit or load_in_8bit or load_in_fp8,
        parallel=parallel,
    )
    components |= {
        act_name: float(acts),
        "attention workspace": float(attn),
        ("LM head tiles (chunked loss)" if fused_head else "logits + loss"): float(logits),
    }
    if load_in_fp8:
        name = "quantized activations" + ("" if fp8_keep_transpose else ", transposed weight")
        components[f"FP8 GEMM transients ({name})"] = fp8_transient_bytes(
            arch, tokens, keep_transpose=fp8_keep_transpose
        )
    return MemoryEstimate(components, tokens, host, notes)
