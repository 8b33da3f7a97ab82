"""The LM head with the hidden-state gradient computed in forward (speed/lm_head.py), on the CPU:
the same log-probs, entropy, top-1 and gradients as the full-logits reference and as TRL's fused
head (the Triton row kernel is checked on the GPU, tests/gpu/test_gpu_speed.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from legaltune.speed import lm_head
from legaltune.speed.lm_head import LogProbHead, fuse_lm_head
from legaltune.speed.state import set_speed_report, speed_report
from tests.conftest import randomize_lora_b

trl_utils = pytest.importorskip("trl.trainer.utils")


@pytest.mark.parametrize("with_entropy_grad", [False, True])
def test_log_prob_head_matches_full_logits(with_entropy_grad):
    torch.manual_seed(0)
    n, hidden, vocab = 37, 16, 50  # 37 rows in blocks of 8: a partial last block
    h = torch.randn(n, hidden, requires_grad=True)
    weight = torch.randn(vocab, hidden)
    targets = torch.randint(0, vocab, (n,))
    token_weight, entropy_weight = torch.rand(n), torch.rand(n)

    logprob, entropy, top1 = LogProbHead.apply(h, weight, targets, 8, True)
    loss = -(logprob * token_weight).sum() + (with_entropy_grad and (entropy * entropy_weight).sum())
    loss.backward()
    grad = h.grad.clone()
    h.grad = None

    z = h @ weight.t()
    log_p = torch.log_softmax(z, dim=-1)
    ref_logprob = log_p.gather(1, targets[:, None]).squeeze(1)
    ref_entropy = -(log_p.exp() * log_p).sum(-1)
    ref_loss = -(ref_logprob * token_weight).sum() + (
        with_entropy_grad and (ref_entropy * entropy_weight).sum()
    )
    ref_loss.backward()
    torch.testing.assert_close(logprob, ref_logprob, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy, ref_entropy, rtol=1e-5, atol=1e-5)
    assert torch.equal(top1, z.argmax(-1) == targets)
    torch.testing.assert_close(grad, h.grad, rtol=1e-4, atol=1e-5)


def test_log_prob_head_without_grad_skips_the_gradient(monkeypatch):
    """Evaluation: the same outputs, and no gradient GEMM for a backward that will not come."""
    calls = []
    monkeypatch.setattr(lm_head, "mm_fp32", lambda a, b: calls.append(1) or a.float() @ b.float())
    torch.manual_seed(0)
    h, weight, targets = torch.randn(9, 8), torch.randn(20, 8), torch.randint(0, 20, (9,))
    LogProbHead.apply(h.requires_grad_(), weight, targets, 4, True)
    assert len(calls) == 3  # one per block of 4 rows when training
    calls.clear()
    with torch.no_grad():
        logprob, _entropy, _top1 = LogProbHead.apply(h, weight, targets, 4, False)
    assert not calls
    torch.testing.assert_close(
        logprob, torch.log_softmax(h @ weight.t(), -1).gather(1, targets[:, None]).squeeze(1)
    )
    assert logprob.grad_fn is None


def _model(arch: str = "llama") -> torch.nn.Module:
    torch.manual_seed(0)
    kw = dict(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, use_cache=False,
    )  # fmt: skip
    if arch == "gemma3":  # tied head, embeddings scaled by √hidden, sliding-window layers
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        base = Gemma3ForCausalLM(
            Gemma3TextConfig(**kw, sliding_window=8, layer_types=["sliding_attention", "full_attention"])
        )
    else:
        base = LlamaForCausalLM(LlamaConfig(**kw))
    trl_utils.add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))  # as SFTTrainer does
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    randomize_lora_b(model, 0.02, seed=1)
    return model.train()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_fused_forward_matches_trl_head(monkeypatch, arch):
    ids = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, :5] = -100  # a masked prompt
    ref = _model(arch)
    ours = copy.deepcopy(ref)
    assert lm_head.head_covered(ours.get_base_model())  # the registry's families, plain frozen head
    assert fuse_lm_head(ours.get_base_model())
    assert not fuse_lm_head(ours.get_base_model())  # once only
    # on the CPU the head runs TRL's on the labelled rows; force the Triton path's math to compare
    monkeypatch.setattr(lm_head, "_covered", lambda model, kwargs: "triton")
    outputs = {}
    for name, model in (("trl", ref), ("ours", ours)):
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        outputs[name] = (out, grads)
    (ref_out, ref_grads), (out, grads) = outputs["trl"], outputs["ours"]
    torch.testing.assert_close(out.loss, ref_out.loss, rtol=1e-5, atol=1e-5)
    for field in ("log_probs", "entropy"):
        torch.testing.assert_close(getattr(out, field), getattr(ref_out, field), rtol=1e-4, atol=1e-5)
    assert torch.equal(out.is_top1, ref_out.is_top1)
    assert torch.equal(out.label_mask, ref_out.label_mask)
    assert set(grads) == set(ref_grads)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-6, msg=name)
    # without fused_lm_head the model's own forward runs (logits, HF loss)
    plain = ours(input_ids=ids, labels=labels)
    assert plain.logits.shape == (2, 24, 96)


def test_fuse_lm_head_needs_trls_head():
    base = LlamaForCausalLM(
        LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1)
    )  # fmt: skip
    assert not fuse_lm_head(base)
    assert "forward" not in base.__dict__


def _rows_projected(monkeypatch) -> list[int]:
    """The number of hidden rows each call of TRL's chunked head projects onto the vocabulary."""
    from trl.kernels import chunked_logprob

    rows: list[int] = []
    real = chunked_logprob.ChunkedLogProbFunction.forward

    def counting(ctx, hidden, *args, **kwargs):
        rows.append(hidden.shape[0])
        return real(ctx, hidden, *args, **kwargs)

    monkeypatch.setattr(chunked_logprob.ChunkedLogProbFunction, "forward", staticmethod(counting))
    return rows


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_cpu_head_scores_only_labelled_rows_with_trls_results(monkeypatch, arch):
    """On the CPU TRL projects every position (prompt and padding too); ours only the labelled ones,
    with the same loss, per-token outputs and gradients."""
    ids = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, :15] = -100  # a prompt
    labels[1, :9] = -100
    labels[1, 20:] = -100  # padding
    ref = _model(arch)
    ours = copy.deepcopy(ref)
    assert fuse_lm_head(ours.get_base_model())
    rows = _rows_projected(monkeypatch)
    outputs = {}
    for name, model in (("trl", ref), ("ours", ours)):
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        out.loss.backward()
        outputs[name] = (out, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    labelled = int((labels[:, 1:] != -100).sum())
    assert rows == [2 * 23, labelled] and labelled < 2 * 23 / 2
    (ref_out, ref_grads), (out, grads) = outputs["trl"], outputs["ours"]
    torch.testing.assert_close(out.loss, ref_out.loss, rtol=1e-6, atol=1e-6)
    for field in ("log_probs", "entropy"):
        torch.testing.assert_close(getattr(out, field), getattr(ref_out, field), rtol=1e-5, atol=1e-6)
    assert torch.equal(out.is_top1, ref_out.is_top1) and torch.equal(out.label_mask, ref_out.label_mask)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_uncovered_calls_go_to_trls_forward(monkeypatch):
    """A head the registry does not cover (here: trained) is TRL's on every device: same outputs."""
    ids = torch.randint(0, 96, (1, 16), generator=torch.Generator().manual_seed(1))
    ref = _model()
    ours = copy.deepcopy(ref)
    fuse_lm_head(ours.get_base_model())
    ours.get_base_model().get_output_embeddings().weight.requires_grad_(True)
    ref.get_base_model().get_output_embeddings().weight.requires_grad_(True)
    rows = _rows_projected(monkeypatch)
    a = ref(input_ids=ids, labels=ids, fused_lm_head=True)
    b = ours(input_ids=ids, labels=ids, fused_lm_head=True)
    assert rows == [15, 15]  # every position, both times
    assert torch.equal(a.log_probs, b.log_probs) and torch.equal(a.entropy, b.entropy)


def test_fuse_speed_lm_head_only_over_the_speed_engine(monkeypatch):
    """What `legaltune train` and the seed's SFTTrainer call: only a model carrying the speed engine
    gets the head, the gradient-in-forward one on CUDA, the labelled-rows one on the CPU (the report
    says which); speed off keeps TRL's."""
    from legaltune.speed.apply import SpeedReport

    model = _model()
    base = model.get_base_model()
    assert not lm_head.fuse_speed_lm_head(model)  # no speed report
    set_speed_report(base, SpeedReport(mode="off", on_cuda=True))
    assert not lm_head.fuse_speed_lm_head(model)
    cpu = copy.deepcopy(model)
    set_speed_report(cpu.get_base_model(), SpeedReport(mode="fast", on_cuda=False))
    assert lm_head.fuse_speed_lm_head(cpu)  # the CPU: labelled positions only
    report = speed_report(cpu.get_base_model())
    assert report.compact_head and not report.fused_head
    assert "LM head on labelled positions only" in report.summary()
    monkeypatch.setattr(lm_head, "compile_supported", lambda: True)
    set_speed_report(base, SpeedReport(mode="fast", on_cuda=True))
    assert lm_head.fuse_speed_lm_head(model) and speed_report(base).fused_head
    assert "LM head gradient in forward" in speed_report(base).summary()
