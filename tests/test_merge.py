"""Merging a run's LoRA adapter: the merged model computes what base + adapter computes.

The helpers here build a tiny random Llama run (base + non-zero LoRA adapter + config.yaml) on the
embedded model's tokenizer; tests/test_gguf_export.py reuses them.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import randomize_lora_b

SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VIETNAMESE = "Người lao động có quyền đơn phương chấm dứt hợp đồng lao động."


def tokenizer_or_skip():
    from transformers import AutoTokenizer

    from legaltune.model import embedded

    if not embedded.is_ready():
        pytest.skip(
            "the embedded SmolLM2 tokenizer is not cached (run `python -m legaltune.model.embedded` once)"
        )
    return AutoTokenizer.from_pretrained(str(embedded.embedded_model_dir()))


def make_base(path: Path, tokenizer, *, tie: bool = True, **overrides) -> Path:
    """A random 2-layer Llama (hidden 64, 4 heads, 2 KV heads) with the given tokenizer, saved to `path`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    settings = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        # A larger init than Llama's 0.02 so that logits vary by O(1) and errors are visible.
        initializer_range=0.1,
        tie_word_embeddings=tie,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # SmolLM2's theta, not the default: the GGUF must carry it for the read-back to match.
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
    )
    settings.update(overrides)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**settings))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_run(root: Path, tokenizer, *, tie: bool = True, quantized: bool = False) -> Path:
    """root/base (the base) and root/run (adapter/ with a non-zero LoRA on all 7 projections, config.yaml)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base_dir = make_base(root / "base", tokenizer, tie=tie)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=SEVEN))
    randomize_lora_b(model, 0.05, seed=1)  # a zero B would make merging a no-op
    run = root / "run"
    model.save_pretrained(run / "adapter")
    tokenizer.save_pretrained(run / "adapter")
    config = {
        "model": {"model_name": str(base_dir)},
        "quantization": {"load_in_4bit": quantized},
        "lora": {"r": 8, "lora_alpha": 16, "target_modules": SEVEN},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return run


def input_ids(tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer(VIETNAMESE)["input_ids"]])


@torch.no_grad()
def logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits.float()


@torch.no_grad()
def peft_logits(run: Path, ids: torch.Tensor) -> torch.Tensor:
    """Reference: the fp32 base with the adapter applied unmerged, as in training."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = run / "adapter"
    base_dir = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return logits(PeftModel.from_pretrained(base, str(adapter)).eval(), ids)


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizer_or_skip()


@pytest.fixture(scope="module")
def run(tmp_path_factory, tokenizer) -> Path:
    return make_run(tmp_path_factory.mktemp("tiny"), tokenizer)


def test_fixture_adapter_is_not_a_no_op(run, tokenizer):
    from transformers import AutoModelForCausalLM

    ids = input_ids(tokenizer)
    base = AutoModelForCausalLM.from_pretrained(str(run.parent / "base"), dtype=torch.float32)
    assert (peft_logits(run, ids) - logits(base, ids)).abs().max() > 0.1


def test_merge_fp32_matches_peft_model(run, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from legaltune.export.merge import merge_run

    out = merge_run(run, tmp_path / "merged", dtype="fp32")
    assert (out / "model.safetensors").is_file() and (out / "generation_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(str(out))
    assert merged.dtype == torch.float32 and not hasattr(merged, "peft_config")
    ids = input_ids(tokenizer)
    reference = peft_logits(run, ids)
    # Measured max |Δ| ≈ 3e-6 on logits up to ≈ 4.4: only the order of the float sums differs.
    torch.testing.assert_close(logits(merged, ids), reference, atol=1e-4, rtol=0)
    # The tokenizer and chat template travel with the merged model.
    from transformers import AutoTokenizer

    merged_tok = AutoTokenizer.from_pretrained(str(out))
    assert merged_tok(VIETNAMESE)["input_ids"] == tokenizer(VIETNAMESE)["input_ids"]
    assert merged_tok.chat_template == tokenizer.chat_template
    assert json.loads((out / "legaltune_merge.json").read_text())["dtype"] == "fp32"


def test_merge_bf16_is_close_to_peft_model(run, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from legaltune.export.merge import merge_run

    out = merge_run(run, tmp_path / "merged16", dtype="bf16")
    merged = AutoModelForCausalLM.from_pretrained(str(out))
    assert merged.dtype == torch.bfloat16
    ids = input_ids(tokenizer)
    reference = peft_logits(run, ids)
    diff = (logits(merged, ids) - reference).abs().max().item()
    scale = reference.abs().max().item()
    # bf16 keeps 8 significant bits (relative step 2^-8 ≈ 0.4 %) in weights and activations; measured
    # max |Δ| ≈ 0.05 against logits up to ≈ 4.4 (~1.2 %). Bound at 5 % of the logit scale.
    assert diff < 0.05 * scale, (diff, scale)
    # and the argmax prediction mostly agrees (measured 54/57 positions; a random model's top logits
    # are close together, so a few flips are bf16 rounding, not a merge error)
    agree = (logits(merged, ids).argmax(-1) == reference.argmax(-1)).float().mean().item()
    assert agree >= 0.85


def test_refuses_to_overwrite_non_empty_output(run, tmp_path):
    from legaltune.export.merge import ExportError, merge_run

    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        merge_run(run, out, dtype="fp32")
    assert (out / "keep.txt").read_text() == "mine"
    merge_run(run, out, dtype="fp32", overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    # nothing half-written or set aside is left next to it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_empty_output_dir_is_fine(run, tmp_path):
    from legaltune.export.merge import merge_run

    (tmp_path / "empty").mkdir()
    assert (merge_run(run, tmp_path / "empty", dtype="fp32") / "config.json").is_file()


def test_missing_adapter_says_what_was_expected(tmp_path):
    from legaltune.export.merge import ExportError, merge_run

    with pytest.raises(ExportError, match="no such run"):
        merge_run(tmp_path / "run", tmp_path / "out")
    (tmp_path / "run").mkdir()
    with pytest.raises(ExportError, match="not a run directory"):
        merge_run(tmp_path / "run", tmp_path / "out")
    (tmp_path / "run" / "config.yaml").write_text("{}")
    with pytest.raises(ExportError, match=r"no final adapter \(.*adapter/adapter_config\.json\)"):
        merge_run(tmp_path / "run", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # an interrupted run has checkpoints but no final adapter: say which to pass
    ckpt = tmp_path / "run" / "checkpoints" / "checkpoint-10"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_config.json").write_text("{}")
    with pytest.raises(ExportError, match="checkpoints/checkpoint-10"):
        merge_run(tmp_path / "run", tmp_path / "out")


def test_missing_base_names_the_path(run, tmp_path):
    import shutil

    from legaltune.export.merge import ExportError, merge_run

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config_file = copy / "adapter" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone" / "base")
    config_file.write_text(json.dumps(config))
    with pytest.raises(ExportError, match=r"gone/base.*locally.*Hub"):
        merge_run(copy, tmp_path / "out")


def test_bad_dtype_is_rejected(run, tmp_path):
    from legaltune.export.merge import ExportError, merge_run

    with pytest.raises(ExportError, match="bf16, fp16, fp32"):
        merge_run(run, tmp_path / "out", dtype="int4")


def test_quantized_training_warns_and_still_merges(tokenizer, tmp_path):
    from legaltune.export.merge import QuantizedBaseWarning, merge_run

    run = make_run(tmp_path / "q", tokenizer, quantized=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merge_run(run, tmp_path / "merged", dtype="fp32")
    messages = [str(w.message) for w in caught if issubclass(w.category, QuantizedBaseWarning)]
    assert messages and "4-bit" in messages[0] and "quantization error" in messages[0]
    assert (tmp_path / "merged" / "model.safetensors").is_file()


def test_checkpoint_directory_is_accepted(run, tmp_path):
    from legaltune.export.merge import inspect_run

    info = inspect_run(run / "adapter")
    assert info.adapter_dir == run / "adapter" and Path(info.base).name == "base"
    assert info.quantized is None


def test_merged_model_stops_at_the_templates_end_of_turn(tokenizer, tmp_path):
    """A pretrained base lists only its eos in generation_config (Gemma 3 270M: <eos>), but the tuned
    model closes answers with the template's end-of-turn: the merged model's generate() must stop there
    too, not run on into an invented next turn."""
    import copy

    from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

    from legaltune.data.format import load_template
    from legaltune.export.merge import merge_run

    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tok.chat_template = load_template("gemma")
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    run = make_run(tmp_path / "gemma-like", tok)
    base = AutoModelForCausalLM.from_pretrained(str(tmp_path / "gemma-like" / "base"))
    assert eot not in [base.generation_config.eos_token_id]  # the base alone would not stop there

    merged = AutoModelForCausalLM.from_pretrained(str(merge_run(run, tmp_path / "merged", dtype="fp32")))
    assert eot in merged.generation_config.eos_token_id
    assert tok.eos_token_id in merged.generation_config.eos_token_id  # eos still stops

    class EmitEndOfTurnSecond(LogitsProcessor):
        """The model 'answers' one token, then closes its turn."""

        def __init__(self, prompt_len: int):
            self.prompt_len = prompt_len

        def __call__(self, input_ids, scores):
            forced = torch.full_like(scores, -1e9)
            forced[:, eot if input_ids.shape[1] > self.prompt_len else 42] = 0
            return forced

    ids = input_ids(tok)
    out = merged.generate(
        ids,
        max_new_tokens=8,
        do_sample=False,
        logits_processor=LogitsProcessorList([EmitEndOfTurnSecond(ids.shape[1])]),
        pad_token_id=tok.pad_token_id or 0,
    )
    assert out[0, ids.shape[1] :].tolist() == [42, eot]  # stopped at end-of-turn, not at max_new_tokens
