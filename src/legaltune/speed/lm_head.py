"""TRL's fused LM head with the hidden-state gradient computed in forward (per model instance).

SFTTrainer scores each labelled position through TRL's chunked log-prob head: forward projects the
hidden states onto the vocabulary tile by tile (never the full ``tokens × vocab`` logits at once)
and keeps log-sum-exp statistics; backward projects every tile again to turn it into the logits
gradient, then multiplies back. That is three ``tokens × hidden × vocab`` GEMMs per step — at 8k
tokens on Llama-3.1-8B, ~40 ms of an H100 step, 6 % of a QLoRA step.

The vocabulary projection is frozen in LoRA training, and SFT's losses (mean NLL, DFT) reach the
log-probs only through a per-token weight. So here forward projects a block of tokens onto the
whole vocabulary once, one Triton pass per row computes the log-prob, entropy and top-1 flag and
rewrites the row into ``softmax - onehot``, and one more GEMM gives each token's unscaled gradient
``d logprob / d hidden`` (fp32, kept for backward). Backward only scales it by the incoming
per-token gradient: two GEMMs instead of three. If backward ever receives an entropy gradient, it
recomputes the logits and applies the exact formula (slow, correct).

Installed by :func:`fuse_lm_head` over the forward that ``trl.trainer.utils.add_fused_lm_head``
put on the instance, for the case it covers (CUDA with Triton, no logit scaling or softcapping,
frozen head without bias); every other call goes to TRL's forward unchanged.

On the CPU the same install scores only the labelled positions through TRL's own chunked head.
TRL scores every position where Triton is missing (so that compiled tiles keep one shape), but an
eager CPU step has nothing to recompile, and SFT on prompts with context labels a fraction of them:
in the demo (Gemma 3, a 262,144-entry vocabulary) the head took 53.6 s of 65 s over three steps.
"""

from __future__ import annotations

import functools
import types
from typing import Any

import torch
from torch import nn

from legaltune.speed.compile import compile_supported
from legaltune.speed.families import FUSED_HEAD, model_types
from legaltune.speed.layers import base_model
from legaltune.speed.lora_math import mm_fp32
from legaltune.speed.state import speed_report

# Tokens projected onto the whole vocabulary at once: 1024 x 128,256 bf16 = 262 MB, the size of
# TRL's own tile (4096 x 32,768). Larger vocabularies take fewer tokens a block, so that the tile
# stays that size (Gemma 3's 262,144 entries: 501 tokens).
TOKEN_BLOCK = 1024
TILE_ENTRIES = TOKEN_BLOCK * 128_256


def token_block(vocab: int) -> int:
    """Tokens per block for a vocabulary of ``vocab`` entries."""
    return max(64, min(TOKEN_BLOCK, TILE_ENTRIES // vocab))


_ROW_BLOCK = 4096
_PREV_FORWARD = "_legaltune_trl_forward"


@functools.cache
def _row_kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def logprob_rows(
        logits_ptr, stride, targets_ptr, logprob_ptr, entropy_ptr, top1_ptr, vocab, BLOCK: tl.constexpr
    ):
        row = tl.program_id(0)
        base = logits_ptr + row.to(tl.int64) * stride
        target = tl.load(targets_ptr + row).to(tl.int32)
        running_max = tl.full((), float("-inf"), tl.float32)
        sum_exp = tl.full((), 0.0, tl.float32)
        sum_exp_z = tl.full((), 0.0, tl.float32)
        max_before = tl.full((), float("-inf"), tl.float32)
        for start in range(0, vocab, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            valid = offs < vocab
            z = tl.load(base + offs, mask=valid, other=float("-inf")).to(tl.float32)
            new_max = tl.maximum(running_max, tl.max(z, 0))
            rescale = tl.exp(running_max - new_max)
            e = tl.exp(z - new_max)
            sum_exp = sum_exp * rescale + tl.sum(e, 0)
            sum_exp_z = sum_exp_z * rescale + tl.sum(tl.where(valid, e * z, 0.0), 0)
            running_max = new_max
            max_before = tl.maximum(max_before, tl.max(tl.where(offs < target, z, float("-inf")), 0))
        target_z = tl.load(base + target).to(tl.float32)
        log_z = running_max + tl.log(sum_exp)
        tl.store(logprob_ptr + row, target_z - log_z)
        tl.store(entropy_ptr + row, log_z - sum_exp_z / sum_exp)
        # the first index holding the maximum is the prediction (argmax's tie rule, as TRL's)
        tl.store(top1_ptr + row, ((target_z >= running_max) & (target_z > max_before)).to(tl.int8))
        for start in range(0, vocab, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            valid = offs < vocab
            z = tl.load(base + offs, mask=valid, other=0.0).to(tl.float32)
            grad = tl.exp(z - log_z) - tl.where(offs == target, 1.0, 0.0)
            tl.store(base + offs, grad.to(logits_ptr.dtype.element_ty), mask=valid)

    return logprob_rows


def _rows(tile: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of ``tile`` (logits, rewritten in place into ``softmax - onehot``): (log-prob of the
    target, entropy, target is the argmax)."""
    n, vocab = tile.shape
    if tile.is_cuda and compile_supported():
        logprob = torch.empty(n, device=tile.device, dtype=torch.float32)
        entropy = torch.empty_like(logprob)
        top1 = torch.empty(n, device=tile.device, dtype=torch.int8)
        _row_kernel()[(n,)](tile, tile.stride(0), targets, logprob, entropy, top1, vocab, BLOCK=_ROW_BLOCK)
        return logprob, entropy, top1.bool()
    z = tile.float()  # the reference path (CPU): the same arithmetic in PyTorch ops
    log_z = torch.logsumexp(z, dim=-1)
    p = torch.exp(z - log_z[:, None])
    target_z = z.gather(1, targets[:, None]).squeeze(1)
    entropy = log_z - (p * z).sum(-1)
    top1 = z.argmax(-1) == targets
    p[torch.arange(n, device=z.device), targets] -= 1.0
    tile.copy_(p)
    return target_z - log_z, entropy, top1


class LogProbHead(torch.autograd.Function):
    """``(log p(target), entropy, is_top1)`` per row of ``hidden [N, H]`` under ``weight [V, H]``,
    differentiable in ``hidden`` (the gradient computed in forward, scaled in backward) when
    ``need_grad`` (the caller's grad mode and ``hidden.requires_grad``)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        block: int,
        need_grad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        kind = hidden.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else hidden.dtype
        w = weight.to(dtype)
        n = hidden.shape[0]
        logprob = torch.empty(n, device=hidden.device, dtype=torch.float32)
        entropy = torch.empty_like(logprob)
        top1 = torch.empty(n, device=hidden.device, dtype=torch.bool)
        # evaluation (no grad) skips the gradient GEMM: one vocabulary GEMM, as TRL's forward. (The
        # caller says: grad mode is always off inside forward, whatever it was outside.)
        grad_store = (
            torch.empty(hidden.shape, device=hidden.device, dtype=torch.float32) if need_grad else None
        )
        tile_buf = torch.empty((min(n, block), w.shape[0]), device=hidden.device, dtype=dtype)
        for start in range(0, n, block):
            end = min(start + block, n)
            h = hidden[start:end].to(dtype)
            tile = tile_buf[: end - start]
            torch.mm(h, w.t(), out=tile)
            logprob[start:end], entropy[start:end], top1[start:end] = _rows(tile, targets[start:end])
            if grad_store is not None:
                grad_store[start:end] = mm_fp32(tile, w)  # d(-logprob)/d hidden, fp32 accumulated
        del tile_buf
        ctx.save_for_backward(grad_store, hidden, weight, entropy)
        ctx.block, ctx.dtype = block, dtype
        ctx.mark_non_differentiable(top1)
        ctx.set_materialize_grads(False)
        return logprob, entropy, top1

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_logprob: torch.Tensor | None, grad_entropy: torch.Tensor | None, _grad_top1: Any
    ) -> tuple[Any, ...]:
        grad_store, hidden, weight, entropy = ctx.saved_tensors
        if grad_store is None:
            raise RuntimeError("LogProbHead: backward through a call made with need_grad=False")
        if grad_entropy is not None:  # rare: the exact entropy term needs the logits again
            grad = torch.zeros(hidden.shape, device=hidden.device, dtype=torch.float32)
            if grad_logprob is not None:
                grad.addcmul_(grad_store, grad_logprob.float()[:, None], value=-1.0)
            _entropy_grad(grad, hidden, weight.to(ctx.dtype), entropy, grad_entropy.float(), ctx.block)
            return grad.to(hidden.dtype), None, None, None, None
        if grad_logprob is None:
            return None, None, None, None, None
        # written block by block into the hidden dtype: no second tokens x hidden fp32 buffer beside
        # the stored one (at long sequences that is the size of the step's largest activations)
        grad = torch.empty_like(hidden)
        scale = grad_logprob.float().neg()[:, None]
        for start in range(0, hidden.shape[0], ctx.block):
            end = min(start + ctx.block, hidden.shape[0])
            grad[start:end] = grad_store[start:end] * scale[start:end]
        return grad, None, None, None, None


def _entropy_grad(
    grad: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    entropy: torch.Tensor,
    grad_entropy: torch.Tensor,
    block: int,
) -> None:
    """Adds ``d entropy / d hidden · grad_entropy`` to ``grad``: recomputes the logits
    (``dH/dz = -p (log p + H)``). Only a loss that differentiates the entropy gets here."""
    for start in range(0, hidden.shape[0], block):
        end = min(start + block, hidden.shape[0])
        z = (hidden[start:end].to(weight.dtype) @ weight.t()).float()
        log_p = torch.log_softmax(z, dim=-1)
        dz = -log_p.exp() * (log_p + entropy[start:end, None]) * grad_entropy[start:end, None]
        grad[start:end] += dz @ weight.float()


def head_covered(model: nn.Module) -> bool:
    """Whether this model's head is one :class:`LogProbHead` computes exactly as TRL's would: a
    family whose logits are the plain projection (no scale, no softcapping, no bias), frozen."""
    config = model.config.get_text_config()
    head = model.get_output_embeddings()
    return (
        config.model_type in model_types(FUSED_HEAD)
        and getattr(config, "final_logit_softcapping", None) is None
        and getattr(head, "bias", None) is None
        and type(head.weight) is nn.Parameter
        and not head.weight.requires_grad
    )


# Vocabulary entries per tile of TRL's chunked head on the compact CPU path (TRL's own default).
CPU_VOCAB_CHUNK = 32_768


def _covered(model: nn.Module, kwargs: dict[str, Any]) -> str | None:
    """How this fused-head call runs here: ``"triton"`` (:class:`LogProbHead`, CUDA with Triton),
    ``"compact"`` (TRL's head on the labelled positions only, CPU), None (TRL's forward)."""
    if kwargs.get("output_router_logits") or not head_covered(model):
        return None
    weight = model.get_output_embeddings().weight
    if weight.is_cuda:
        return "triton" if compile_supported() else None
    return "compact" if weight.device.type == "cpu" else None


def _compact_log_probs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> tuple:
    """TRL's chunked head over the labelled rows only: (log-prob, entropy, is-top-1) per row."""
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction

    log_probs, entropy, _sq, _mean, top1 = ChunkedLogProbFunction.apply(
        hidden, weight, None, targets, 1.0, CPU_VOCAB_CHUNK, None, 1.0, ("entropy", "is_top1")
    )
    return log_probs, entropy, top1


def _fused_forward(
    model: nn.Module,
    *args: Any,
    fused_lm_head: bool = False,
    labels: torch.Tensor | None = None,
    shift_labels: torch.Tensor | None = None,
    num_items_in_batch: Any = None,
    **kwargs: Any,
) -> Any:
    """TRL's fused-head forward contract (its FusedCausalLMOutput, same fields and loss) for the
    log-probs/entropy/top-1 outputs SFTTrainer asks for; anything else goes to TRL's forward."""
    prev = model.__dict__[_PREV_FORWARD]
    how = _covered(model, kwargs) if fused_lm_head else None
    if how is None:
        return prev(
            *args,
            fused_lm_head=fused_lm_head,
            labels=labels,
            shift_labels=shift_labels,
            num_items_in_batch=num_items_in_batch,
            **kwargs,
        )
    from trl.trainer.utils import FusedCausalLMOutput

    kwargs["use_cache"] = False
    hidden = model.base_model(*args, **kwargs).last_hidden_state
    if shift_labels is None:
        hidden, labels = hidden[:, :-1], labels[:, 1:]
    else:
        labels = shift_labels
    head = model.get_output_embeddings()
    labels = labels.to(head.weight.device)
    mask = labels != -100
    hidden = hidden.to(head.weight.device)[mask]
    if how == "compact":
        logprob, entropy, top1 = _compact_log_probs(hidden, head.weight, labels[mask])
    else:
        need_grad = torch.is_grad_enabled() and hidden.requires_grad
        block = token_block(head.weight.shape[0])
        logprob, entropy, top1 = LogProbHead.apply(hidden, head.weight, labels[mask], block, need_grad)
    # scattered back to the label positions (zero elsewhere), as TRL returns them; masked_scatter
    # keeps an all-ignored micro-batch connected to the graph (a zero loss, not a failed backward)
    log_probs, entropy, is_top1 = (
        x.new_zeros(mask.shape).masked_scatter(mask, x) for x in (logprob, entropy, top1)
    )
    denominator = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    return FusedCausalLMOutput(
        loss=-log_probs.sum() / denominator,
        log_probs=log_probs,
        entropy=entropy,
        is_top1=is_top1,
        label_mask=mask,
    )


def fuse_lm_head(model: nn.Module) -> bool:
    """Put :class:`LogProbHead` behind the fused-head forward TRL installed on this instance
    (``add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))``, what SFTTrainer
    does). Returns False (and changes nothing) if TRL's head is not there or it is already ours."""
    forward = model.__dict__.get("forward")
    if forward is None or _PREV_FORWARD in model.__dict__:
        return False
    code = getattr(getattr(forward, "__func__", None), "__code__", None)
    if code is None or code.co_name != "_fused_forward" or "trl" not in code.co_filename:
        return False

    # the model class's signature, as TRL keeps it: generate validates its kwargs against it
    @functools.wraps(type(model).forward)
    def forward_with_head(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return _fused_forward(self, *args, **kwargs)

    model.__dict__[_PREV_FORWARD] = forward
    model.forward = types.MethodType(forward_with_head, model)
    return True


def fuse_speed_lm_head(model: nn.Module) -> bool:
    """After SFTTrainer installed its head: :func:`fuse_lm_head` on the model (PEFT-wrapped or not)
    if it carries the speed engine (a speed report, mode not off), on CUDA with Triton (the gradient
    in forward) or on the CPU (labelled positions only); the speed report records which. What
    `legaltune train` and the seed's ``SFTTrainer`` call."""
    base = base_model(model)
    report = speed_report(base)
    if report is None or report.mode == "off" or (report.on_cuda and not compile_supported()):
        return False
    if not fuse_lm_head(base):
        return False
    if report.on_cuda:
        report.fused_head = True
    else:
        report.compact_head = True
    return True


__all__ = ["TOKEN_BLOCK", "head_covered", "token_block", "LogProbHead", "fuse_lm_head", "fuse_speed_lm_head"]
