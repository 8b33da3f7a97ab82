"""GPU: speed.forward_tokens through PyTorch's varlen flash kernel, the way `legaltune train` runs
it: a padding-free micro-batch as several forwards gives one forward's loss and gradients."""

from __future__ import annotations

import pytest
import torch

from legaltune.data.pack import BatchCollator
from legaltune.speed.varlen import enable_varlen_attention, varlen_supported
from legaltune.train.split_forward import SplitForwards, split_micro_batch
from tests.gpu.test_gpu_varlen import _features, _llama

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not varlen_supported(), reason="torch.nn.attention.varlen missing"),
]


def test_split_forwards_match_one_forward_through_the_varlen_kernel(tmp_path):
    from transformers import Trainer, TrainingArguments

    class Split(SplitForwards, Trainer):
        pass

    batch = BatchCollator(padding_free=True, max_length=2048)(_features([300, 17, 1200, 64, 511, 900]))
    assert len(split_micro_batch(batch, 1300)) == 4  # [300 17] [1200 64] [511] [900]
    items = torch.tensor(int((batch["labels"][..., 1:] != -100).sum()), device="cuda")
    results = []
    for cap in (None, 1300):
        model = _llama(torch.bfloat16)
        enable_varlen_attention(model)
        args = TrainingArguments(output_dir=str(tmp_path), report_to="none", gradient_accumulation_steps=1)
        trainer = Split(model=model, args=args)
        trainer.current_gradient_accumulation_steps = 1
        trainer.forward_tokens = cap
        loss = trainer.training_step(model, dict(batch), num_items_in_batch=items)
        grad = model.model.layers[0].self_attn.q_proj.weight.grad.float().clone()
        results.append((float(loss), grad))
    (loss_a, grad_a), (loss_b, grad_b) = results
    assert loss_b == pytest.approx(loss_a, rel=1e-2)
    torch.testing.assert_close(grad_b, grad_a, atol=2e-2, rtol=5e-2)
