"""GPU checks of loading, QLoRA and offloaded checkpointing (run on a CUDA machine: `pytest -m gpu`).

Models are random Llamas saved to tmp_path, so nothing needs the hub or the embedded model.
"""

from __future__ import annotations

import copy
import importlib.util
import math
from pathlib import Path

import pytest
import torch

from legaltune.config.schema import LoraConfig, ModelConfig, QuantizationConfig
from legaltune.model.load import load_model
from legaltune.model.lora import apply_lora
from legaltune.speed.layers import find_decoder_layers
from legaltune.speed.offload import is_offloaded
from legaltune.speed.state import checkpointing_mode

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
needs_bnb = pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed"
)

WORDS = "<unk> <s> </s> điều khoản luật bộ dân sự người lao động hợp đồng quyền nghĩa vụ theo quy định của là ? .".split()


def random_llama(path: Path, *, hidden: int = 256, layers: int = 2, vocab: int = 512) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(path)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(1, hidden // 256),
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def train_steps(model, steps: int = 3, seq: int = 64) -> list[float]:
    """A few AdamW steps on random tokens; returns the losses."""
    from tests.conftest import loss_curve

    model.train()
    gen = torch.Generator(device="cuda").manual_seed(0)
    batches = [torch.randint(3, 512, (2, seq), device="cuda", generator=gen) for _ in range(steps)]
    return loss_curve(model, batches, lr=1e-3)


def _cfg(path: Path, **kw) -> ModelConfig:
    return ModelConfig(model_name=str(path), max_seq_length=512, attn_implementation="sdpa", **kw)


def test_bf16_load_lora_three_trainer_steps(tmp_path):
    from datasets import Dataset

    from legaltune.compat import SFTTrainer, TrainingArguments

    model, tok = load_model(_cfg(random_llama(tmp_path / "m")), QuantizationConfig())
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert next(model.parameters()).dtype is expected and next(model.parameters()).is_cuda
    peft_model = apply_lora(model, LoraConfig(r=16, lora_alpha=16, use_rslora=False))
    assert checkpointing_mode(peft_model) == "offload"
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_B" in n}
    text = "người lao động có quyền theo quy định của bộ luật lao động ."
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        warmup_ratio=0.1,
        save_strategy="no",
        gradient_checkpointing=True,  # the Trainer's switch must keep our offloaded mode
        report_to="none",
        bf16=expected is torch.bfloat16,
        fp16=expected is torch.float16,
    )
    trainer = SFTTrainer(
        model=peft_model,
        tokenizer=tok,
        train_dataset=Dataset.from_dict({"text": [text] * 8}),
        dataset_text_field="text",
        packing=False,
        args=args,
        max_seq_length=512,
    )
    result = trainer.train()
    assert trainer.state.global_step == 3 and math.isfinite(result.training_loss)
    assert is_offloaded(peft_model)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in peft_model.get_base_model().modules())
    assert any(not torch.equal(p, before[n]) for n, p in peft_model.named_parameters() if n in before)


@needs_bnb
@pytest.mark.parametrize("bits", ["load_in_4bit", "load_in_8bit"])
def test_quantized_load_lora_three_steps(tmp_path, bits):
    import bitsandbytes as bnb

    model, _ = load_model(_cfg(random_llama(tmp_path / "m")), QuantizationConfig(**{bits: True}))
    layer_type = bnb.nn.Linear4bit if bits == "load_in_4bit" else bnb.nn.Linear8bitLt
    q_proj = find_decoder_layers(model)[0].self_attn.q_proj
    assert isinstance(q_proj, layer_type)
    if bits == "load_in_4bit":
        assert q_proj.weight.quant_type == "nf4"
    peft_model = apply_lora(model, LoraConfig(r=8, lora_alpha=16, use_gradient_checkpointing="unsloth"))
    # No fp32 upcast of the non-quantized weights (embeddings, norms, lm_head): they stay 16-bit.
    kept = [p.dtype for n, p in peft_model.named_parameters() if "lora_" not in n and p.is_floating_point()]
    assert kept and all(d in (torch.bfloat16, torch.float16) for d in kept)
    losses = train_steps(peft_model)
    assert all(math.isfinite(x) for x in losses)


def _peak_fwd_bwd(model, ids: torch.Tensor) -> tuple[int, dict[str, torch.Tensor]]:
    model.train()
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model(input_ids=ids, labels=ids).loss.backward()
    torch.cuda.synchronize()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return torch.cuda.max_memory_allocated(), grads


def test_offload_uses_less_peak_memory_than_plain_checkpointing(tmp_path):
    layers, batch, seq, hidden = 8, 4, 2048, 1024
    path = random_llama(tmp_path / "m", hidden=hidden, layers=layers, vocab=512)
    base, _ = load_model(_cfg(path), QuantizationConfig())
    lora = dict(r=16, lora_alpha=16, use_rslora=False, target_modules=["q_proj", "v_proj", "down_proj"])
    plain = apply_lora(copy.deepcopy(base), LoraConfig(**lora, use_gradient_checkpointing=True))
    offl = apply_lora(base, LoraConfig(**lora, use_gradient_checkpointing="unsloth"))
    assert is_offloaded(offl) and not is_offloaded(plain)
    for model in (plain, offl):  # non-zero lora_B so that every adapter gets a gradient
        torch.manual_seed(1)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.data.normal_(0, 0.02)
    ids = torch.randint(
        3, 512, (batch, seq), device="cuda", generator=torch.Generator(device="cuda").manual_seed(0)
    )
    _peak_fwd_bwd(offl, ids)  # warm-up: pinned-memory pool, kernels
    plain_peak, g_plain = _peak_fwd_bwd(plain, ids)
    offl_peak, g_off = _peak_fwd_bwd(offl, ids)
    per_layer = batch * seq * hidden * 2  # one bf16 layer input
    mib = 2**20
    print(
        f"\npeak memory, {layers} layers × seq {seq} × batch {batch}: plain checkpointing "
        f"{plain_peak / mib:.0f} MiB, offloaded {offl_peak / mib:.0f} MiB, saved "
        f"{(plain_peak - offl_peak) / mib:.0f} MiB (layer inputs: {layers} × {per_layer / mib:.0f} MiB)"
    )
    assert offl_peak < plain_peak - (layers - 2) * per_layer // 2
    assert g_off.keys() == g_plain.keys()
    for n in g_off:
        torch.testing.assert_close(g_off[n], g_plain[n], rtol=2e-2, atol=1e-3)
