"""The seed-compatible API: FastLanguageModel, the old SFTTrainer call, old TrainingArguments names."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import transformers
import trl
from datasets import Dataset

from legaltune.api import FastLanguageModel
from legaltune.compat import SFTTrainer, TrainingArguments, to_sft_config
from legaltune.model import embedded
from legaltune.model.arch import load_arch
from legaltune.plan.params import count_params
from legaltune.speed.offload import is_offloaded
from legaltune.speed.state import checkpointing_mode
from tests.test_model_load import tiny_llama

SEED_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A random 2-layer Llama (hidden 64) with a Vietnamese word-level tokenizer."""
    return tiny_llama(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    """These tests describe a CPU-only machine (fp32, SDPA), also when run on a GPU host."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def seed_load(name: str, **kw):
    """The seed's §0.1 call."""
    return FastLanguageModel.from_pretrained(
        model_name=name,
        max_seq_length=kw.pop("max_seq_length", 8192),
        dtype=kw.pop("dtype", None),
        load_in_4bit=False,
        attn_implementation="flash_attention_2",
        device_map="auto",
        **kw,
    )


def seed_peft(model):
    """The seed's §0.2 call."""
    return FastLanguageModel.get_peft_model(
        model,
        r=128,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        lora_alpha=256,
        lora_dropout=0.0,
        bias="none",
        use_gradient_checkpointing="unsloth",
        random_state=3407,
        use_rslora=True,
        max_seq_length=8192,
    )


# --- FastLanguageModel ------------------------------------------------------------------------------


def test_unknown_argument_is_a_type_error_naming_it(tiny_dir):
    with pytest.raises(TypeError, match="fast_inference"):
        FastLanguageModel.from_pretrained(model_name=str(tiny_dir), fast_inference=True)
    model, _ = seed_load(str(tiny_dir))
    with pytest.raises(TypeError, match="use_dora"):
        FastLanguageModel.get_peft_model(model, use_dora=True)
    with pytest.raises(NotImplementedError, match="loftq"):
        FastLanguageModel.get_peft_model(model, loftq_config={"loftq_bits": 4})


def test_bad_values_get_the_config_files_messages(tiny_dir):
    """The API builds config sections in code; they check themselves as a YAML file's do."""
    from legaltune.config.fields import ConfigError

    model, _ = seed_load(str(tiny_dir))
    with pytest.raises(ConfigError) as info:
        FastLanguageModel.get_peft_model(
            model, r=0, use_gradient_checkpointing="yes", target_modules=["all-linear", "q_proj"]
        )
    assert [p.path for p in info.value.problems] == ["lora.r", "lora.use_gradient_checkpointing"]
    with pytest.raises(ConfigError, match="lora.target_modules: 'all-linear' cannot be combined"):
        FastLanguageModel.get_peft_model(model, target_modules=["all-linear", "q_proj"])
    with pytest.raises(ConfigError, match="quantization.load_in_4bit: load_in_4bit and load_in_8bit"):
        FastLanguageModel.from_pretrained(model_name=str(tiny_dir), load_in_4bit=True, load_in_8bit=True)


@pytest.mark.parametrize("dtype", [None, "float32", torch.float32, "auto"])
def test_dtype_spellings(tiny_dir, dtype):
    model, _ = seed_load(str(tiny_dir), dtype=dtype)
    assert next(model.parameters()).dtype is torch.float32


def test_fp16_and_4bit_on_cpu_are_refused(tiny_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CPU"):
        seed_load(str(tiny_dir), dtype=torch.float16)
    with pytest.raises(ValueError, match="CUDA"):
        FastLanguageModel.from_pretrained(model_name=str(tiny_dir), load_in_4bit=True)


def test_seed_calls_on_tiny_model(tiny_dir, capsys):
    model, tokenizer = seed_load(str(tiny_dir))
    assert "using SDPA" in capsys.readouterr().err
    assert model.max_seq_length == 8192 and tokenizer.pad_token == "</s>"
    peft_model = seed_peft(model)
    assert checkpointing_mode(peft_model) == "offload" and is_offloaded(peft_model)
    q = peft_model.get_base_model().model.layers[0].self_attn.q_proj
    assert q.scaling["default"] == pytest.approx(256 / math.sqrt(128))
    assert peft_model.max_seq_length == 8192


def test_seed_calls_on_embedded_model():
    if not embedded.is_ready():
        pytest.skip(f"embedded model not fetched into {embedded.embedded_model_dir()} (run `make model`)")
    model, tokenizer = seed_load("smollm2-135m-instruct")
    peft_model = seed_peft(model)
    trainable, _ = peft_model.get_nb_trainable_parameters()
    assert trainable == count_params(load_arch("smollm2-135m-instruct"), 128, SEED_TARGETS).trainable
    assert tokenizer.model_max_length == 8192


# --- TrainingArguments / SFTTrainer -----------------------------------------------------------------


def test_training_arguments_old_names(tmp_path):
    args = TrainingArguments(
        output_dir=str(tmp_path), evaluation_strategy="steps", eval_steps=5, warmup_ratio=0.1
    )
    assert isinstance(args, transformers.TrainingArguments)
    assert args.eval_strategy == "steps"
    has_ratio = "warmup_ratio" in {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    assert (args.warmup_ratio if has_ratio else args.warmup_steps) == pytest.approx(0.1)


def test_training_arguments_contradictions(tmp_path):
    with pytest.raises(ValueError, match="eval_strategy"):
        TrainingArguments(output_dir=str(tmp_path), evaluation_strategy="epoch", eval_strategy="steps")
    if "warmup_ratio" not in {f.name for f in dataclasses.fields(transformers.TrainingArguments)}:
        with pytest.raises(ValueError, match="not both"):
            TrainingArguments(output_dir=str(tmp_path), warmup_ratio=0.1, warmup_steps=10)


def _datasets() -> dict[str, Dataset]:
    texts = [
        "người lao động có quyền theo quy định của bộ luật lao động .",
        "hợp đồng dân sự là gì ?",
        "nghĩa vụ của người lao động theo điều khoản hợp đồng .",
        "quyền dân sự theo bộ luật dân sự .",
    ] * 4
    return {"train": Dataset.from_dict({"text": texts}), "val": Dataset.from_dict({"text": texts[:4]})}


def test_seed_sft_trainer_call_trains_two_steps(tiny_dir, tmp_path):
    model, tokenizer = seed_load(str(tiny_dir))
    model = seed_peft(model)
    datasets = _datasets()
    training_args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        warmup_ratio=0.1,
        evaluation_strategy="no",
        save_strategy="no",
        gradient_checkpointing=True,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
    )
    trainer = SFTTrainer(  # the seed's §0.3 call, verbatim
        model=model,
        tokenizer=tokenizer,
        train_dataset=datasets["train"],
        eval_dataset=datasets.get("val"),
        dataset_text_field="text",
        packing=False,
        args=training_args,
        max_seq_length=8192,
    )
    assert isinstance(trainer, trl.SFTTrainer) and isinstance(trainer.args, trl.SFTConfig)
    assert trainer.args.dataset_text_field == "text" and trainer.args.packing is False
    assert trainer.args.max_length == 8192 and trainer.processing_class is tokenizer
    # Trainer(gradient_checkpointing=True) must not stack transformers' checkpointing on ours.
    assert is_offloaded(model)
    base = model.get_base_model()
    assert not any(getattr(m, "gradient_checkpointing", False) for m in base.modules())
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    result = trainer.train()
    assert trainer.state.global_step == 2 and math.isfinite(result.training_loss)
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)


def test_plain_training_arguments_take_model_length(tiny_dir, tmp_path):
    model, tokenizer = seed_load(str(tiny_dir), max_seq_length=96)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to="none", use_cpu=True)
    peft_model = FastLanguageModel.get_peft_model(model, r=8)
    trainer = SFTTrainer(model=peft_model, tokenizer=tokenizer, train_dataset=_datasets()["train"], args=args)
    assert trainer.args.max_length == 96  # the model's max_seq_length, not TRL's 1024


def test_to_sft_config_keeps_values_and_tokens(tmp_path):
    args = TrainingArguments(
        output_dir=str(tmp_path), hub_token="secret", learning_rate=3e-4, report_to="none"
    )
    sft = to_sft_config(args, {"max_length": 512, "packing": True})
    assert sft.hub_token == "secret" and sft.learning_rate == 3e-4 and sft.max_length == 512 and sft.packing
    ready = trl.SFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    assert to_sft_config(ready) is ready
    if not torch.cuda.is_available():
        assert to_sft_config(None, {"output_dir": str(tmp_path), "report_to": "none"}).use_cpu


def test_conflicting_tokenizer_and_length(tiny_dir, tmp_path):
    model, tokenizer = seed_load(str(tiny_dir))
    args = trl.SFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="max_length"):
        SFTTrainer(model=model, tokenizer=tokenizer, args=args, max_seq_length=10, max_length=20)
    with pytest.raises(ValueError, match="processing_class"):
        SFTTrainer(model=model, tokenizer=tokenizer, processing_class=object(), args=args)


def test_api_defaults_are_the_configs():
    """FastLanguageModel's defaults equal a config's, except the two the module docstring names."""
    import inspect

    from legaltune.config.load import build_config

    cfg = build_config({})
    peft = inspect.signature(FastLanguageModel.get_peft_model).parameters
    for name in (
        "r",
        "lora_alpha",
        "lora_dropout",
        "bias",
        "use_gradient_checkpointing",
        "random_state",
        "use_rslora",
    ):
        assert peft[name].default == getattr(cfg.lora, name), name
    assert peft["target_modules"].default is None and cfg.lora.target_modules == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    load = inspect.signature(FastLanguageModel.from_pretrained).parameters
    for name in ("model_name", "attn_implementation", "device_map", "trust_remote_code"):
        assert load[name].default == getattr(cfg.model, name), name
    assert load["max_seq_length"].default == 2048 != cfg.model.max_seq_length  # Unsloth's; documented
