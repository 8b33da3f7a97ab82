"""speed.embeddings_on_host: the frozen input embedding table looked up in host memory gives the
same outputs and gradients, leaves parameters() and state_dict(), and is refused where the table is
tied, trained or not a plain embedding (CPU; tests/gpu checks the device memory it frees)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from legaltune.speed.host_embedding import embeddings_to_host, host_embedding_blocker
from tests.conftest import make_tiny_llama


def _lora(model, targets=("q_proj", "v_proj")):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), init_lora_weights=False)
    )


def _loss_and_grads(model, ids):
    model.zero_grad()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), grads


def test_host_lookup_gives_the_same_outputs_and_gradients():
    ids = torch.randint(0, 300, (2, 17), generator=torch.Generator().manual_seed(1))
    ref = _lora(make_tiny_llama(300, tie=False))
    moved = copy.deepcopy(ref)
    table = moved.get_input_embeddings().weight
    assert embeddings_to_host(moved) == table.numel() * 4  # fp32 on this CPU model
    names = {n for n, _ in moved.named_parameters()}
    assert not any("embed_tokens" in n for n in names)
    assert not any("embed_tokens" in k for k in moved.state_dict())
    assert host_embedding_blocker(moved) == "the input embedding is already in host memory"
    assert embeddings_to_host(moved) == 0  # a second call changes nothing
    logits_a, grads_a = _loss_and_grads(ref, ids)
    logits_b, grads_b = _loss_and_grads(moved, ids)
    assert torch.equal(logits_a, logits_b)  # the table's own rows: bit for bit
    assert grads_a.keys() == grads_b.keys() and any("lora_A" in k for k in grads_a)
    for k in grads_a:
        torch.testing.assert_close(grads_b[k], grads_a[k], rtol=0, atol=0)
    # generation reads the table the same way
    prompt = ids[:1, :5]
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(ref.generate(input_ids=prompt, **kw), moved.generate(input_ids=prompt, **kw))


def test_a_tied_trained_or_adapted_table_stays():
    tied = make_tiny_llama(300, tie=True)
    assert "tied to the LM head" in host_embedding_blocker(tied) and embeddings_to_host(tied) == 0
    trained = make_tiny_llama(300, tie=False)  # a bare model: every parameter requires grad
    assert host_embedding_blocker(trained) == "the input embedding is trained"
    adapted = _lora(make_tiny_llama(300, tie=False), targets=("q_proj", "embed_tokens"))
    assert "not a plain nn.Embedding" in host_embedding_blocker(adapted)
    assert embeddings_to_host(adapted) == 0


@pytest.mark.slow
def test_a_run_with_the_table_on_the_host_trains_as_one_without(tmp_path):
    """`legaltune train` as a user runs it, on a tiny untied Llama with the embedded tokenizer:
    speed.embeddings_on_host true gives the losses of false, and the run says what it did."""
    from transformers import AutoTokenizer

    from legaltune.config.load import build_config
    from legaltune.model.embedded import ensure_embedded_model
    from legaltune.train.trainer import run_training

    tok = AutoTokenizer.from_pretrained(str(ensure_embedded_model()))
    model_dir = tmp_path / "tiny"
    make_tiny_llama(len(tok), tie=False).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    losses, summaries = {}, {}
    for on in (False, True):
        raw = {
            "model": {"model_name": str(model_dir), "max_seq_length": 128, "dtype": "float32", "device_map": "cpu"},
            "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "use_gradient_checkpointing": False},
            "training": {"per_device_train_batch_size": 2, "max_steps": 3, "warmup_steps": 0, "seed": 7},
            "optimization": {"gradient_checkpointing": False},
            "data": {"train_file": "data/vi_legal_qa/train.jsonl", "use_context": False, "max_train_examples": 8, "system_prompt": None,
                     "dataloader_num_workers": 0, "dataloader_pin_memory": False},
            "logging": {"output_dir": str(tmp_path / "runs"), "run_name": f"host-{on}", "logging_steps": 1,
                        "save_strategy": "no", "eval_strategy": "no", "report_to": ["none"]},
            "speed": {"mode": "auto", "embeddings_on_host": on},
        }  # fmt: skip
        run = run_training(build_config(raw), show_progress=False).run_dir
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        losses[on] = [r["loss"] for r in rows if "loss" in r]
        summaries[on] = json.loads((run / "train_summary.json").read_text())
    assert losses[True] == pytest.approx(losses[False], rel=1e-6) and len(losses[True]) == 3
    assert summaries[True]["plan"]["embeddings_on_host"] is True
    assert any("pinned host memory" in n for n in summaries[True]["speed"]["notes"])
    assert summaries[False]["plan"]["embeddings_on_host"] is False
