"""The speed engine's family registry (legaltune.speed.families): its class names exist in the
installed transformers, no other source file restates a family list, and a model whose family (or
one of whose fast paths) is not covered gets a notice in the speed report instead of silence."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from legaltune.speed import families
from legaltune.speed.apply import apply_speed
from tests.conftest import make_tiny_llama

SRC = Path(__file__).resolve().parents[1] / "src" / "legaltune"


@pytest.mark.parametrize("family", families.FAMILIES, ids=lambda f: f.label)
def test_every_registered_class_exists_in_transformers(family):
    # the modeling module of the family's first model type (gemma3_text lives in models/gemma3)
    model_type = family.model_types[-1] if len(family.model_types) > 1 else family.model_types[0]
    module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    for part in ("DecoderLayer", "Attention", "MLP", "RMSNorm"):
        assert hasattr(module, family.class_name(part)), family.class_name(part)
    for model_type in family.model_types:
        assert families.family_for_model_type(model_type) is family


def test_no_family_list_outside_the_registry():
    # class-name sets and "Llama/Qwen2/…" lists belong to families.py alone
    class_name = re.compile(r"\b(Llama|Qwen2|Qwen3|Mistral|Gemma3)(DecoderLayer|Attention|MLP|RMSNorm)\b")
    slash_list = re.compile(r"Llama/Qwen|Qwen2/Qwen3")
    found = []
    for path in SRC.rglob("*.py"):
        if path.name == "families.py":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if class_name.search(line) or slash_list.search(line):
                found.append(f"{path.relative_to(SRC)}:{n}: {line.strip()}")
    assert not found, "family lists restated outside speed/families.py:\n" + "\n".join(found)


def test_lookups():
    llama = families.family_for_model_type("llama")
    assert llama is families.family_for_class("LlamaDecoderLayer")
    assert families.family_for_class("GPT2Block") is None
    assert "LlamaDecoderLayer" in families.class_names("DecoderLayer", families.SPLIT)
    assert "llama" in families.model_types(families.FUSED_HEAD)
    assert families.labels(families.SPLIT).startswith("Llama/Qwen2/Qwen3/Mistral")
    assert families.family_notices("llama") == []


def test_an_unregistered_family_gets_a_notice_in_the_speed_report():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    base = Gemma2ForCausalLM(
        Gemma2Config(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, head_dim=16, use_cache=False,
        )
    )  # fmt: skip
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    report = apply_speed(model, mode="fast", compile=False)
    assert report.fused_lora == 2  # what the registry does not gate still applies
    assert report.rms_norm == report.swiglu == 0
    (note,) = report.notes
    assert "'gemma2'" in note and "not in the speed engine's family registry" in note
    for label in families.PATH_LABELS.values():
        assert label in note

    llama = get_peft_model(make_tiny_llama(64), LoraConfig(r=2, target_modules=["q_proj"]))
    assert apply_speed(llama, mode="fast", compile=False).notes == []


def test_docs_show_the_registry():
    text = (SRC.parents[1] / "docs" / "speed.md").read_text(encoding="utf-8")
    table = text.split("<!-- families:start")[1].split("-->", 1)[1].split("<!-- families:end -->")[0]
    assert table.strip() == families.markdown_table(), "regenerate docs/speed.md's table from the registry"
