"""Model loading: name resolution, dtype/attention choice, quantization guards, tokenizer set-up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import legaltune.model.load as load
from legaltune.config.schema import ModelConfig, QuantizationConfig
from legaltune.model import embedded
from legaltune.model.arch import ModelNameError

WORDS = "<unk> <s> </s> điều khoản luật bộ dân sự người lao động hợp đồng quyền nghĩa vụ theo quy định của là ? .".split()


def tiny_llama(path: Path, *, tie: bool = False, layers: int = 2) -> Path:
    """A random 2-layer Llama (hidden 64) with a word-level tokenizer without a pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(path)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def model_cfg(name: str, **kw) -> ModelConfig:
    kw.setdefault("attn_implementation", "sdpa")
    return ModelConfig(model_name=name, max_seq_length=kw.pop("max_seq_length", 128), **kw)


# --- dtype ----------------------------------------------------------------------------------------


def test_auto_dtype_is_fp32_on_cpu():
    assert load.resolve_dtype("auto", "cpu") is torch.float32
    assert load.resolve_dtype(None, "cpu") is torch.float32


@pytest.mark.parametrize("bf16_ok,expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_dtype_on_cuda_prefers_bf16(monkeypatch, bf16_ok, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    assert load.resolve_dtype("auto", "cuda") is expected


@pytest.mark.parametrize(
    "name,expected",
    [
        ("bfloat16", torch.bfloat16),
        ("bf16", torch.bfloat16),
        ("torch.bfloat16", torch.bfloat16),
        ("float32", torch.float32),
    ],
)
def test_explicit_dtype_is_honoured_on_cpu(name, expected):
    assert load.resolve_dtype(name, "cpu") is expected


def test_fp16_on_cpu_is_refused_with_reason():
    with pytest.raises(ValueError, match="CPU"):
        load.resolve_dtype("float16", "cpu")
    assert load.resolve_dtype("float16", "cuda") is torch.float16


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="dtype"):
        load.resolve_dtype("int4", "cpu")


# --- attention ------------------------------------------------------------------------------------


def test_flash_attention_falls_back_to_sdpa_with_notice(monkeypatch, capsys):
    real = load.importlib.util.find_spec
    monkeypatch.setattr(
        load.importlib.util, "find_spec", lambda n, *a: None if n == "flash_attn" else real(n, *a)
    )
    assert load.resolve_attn("flash_attention_2") == "sdpa"
    assert "flash-attn not installed; using SDPA (FlashAttention-backed on Hopper)" in capsys.readouterr().err


def test_flash_attention_kept_when_installed_and_cuda(monkeypatch, capsys):
    monkeypatch.setattr(load.importlib.util, "find_spec", lambda n, *a: object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert load.resolve_attn("flash_attention_2") == "flash_attention_2"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("attn", ["sdpa", "eager", "flex_attention"])
def test_other_attention_as_asked(attn, capsys):
    assert load.resolve_attn(attn) == attn
    assert capsys.readouterr().err == ""


def test_unknown_attention_is_refused():
    with pytest.raises(ValueError, match="flash_attention_2"):
        load.resolve_attn("xformers")


# --- quantization guards: nothing may be resolved or loaded ----------------------------------------


@pytest.fixture
def nothing_loads(monkeypatch):
    import transformers

    def boom(*a, **k):
        raise AssertionError("must fail before resolving or loading anything")

    monkeypatch.setattr(load, "resolve_model_path", boom)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", boom)


@pytest.mark.parametrize("bits", ["load_in_4bit", "load_in_8bit"])
def test_quantization_without_cuda_fails_first(monkeypatch, nothing_loads, bits):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA"):
        load.load_model(model_cfg("unsloth/Llama-3.1-8B-Instruct"), QuantizationConfig(**{bits: True}))


@pytest.mark.parametrize("bits", ["load_in_4bit", "load_in_8bit"])
def test_quantization_without_bitsandbytes_says_pip_install(monkeypatch, nothing_loads, bits):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real = load.importlib.util.find_spec
    monkeypatch.setattr(
        load.importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a)
    )
    with pytest.raises(ValueError, match="pip install bitsandbytes"):
        load.load_model(model_cfg("unsloth/Llama-3.1-8B-Instruct"), QuantizationConfig(**{bits: True}))


def test_4bit_and_8bit_together_is_refused(nothing_loads):
    with pytest.raises(ValueError, match="choose one"):
        load.load_model(model_cfg("x/y"), QuantizationConfig(load_in_4bit=True, load_in_8bit=True))


# --- name resolution --------------------------------------------------------------------------------


def test_alias_resolves_to_embedded_cache_dir():
    if not embedded.is_ready():
        pytest.skip(f"embedded model not fetched into {embedded.embedded_model_dir()} (run `make model`)")
    assert load.resolve_model_path("smollm2-135m-instruct") == str(embedded.embedded_model_dir())
    assert load.resolve_model_path("SmolLM2-135M-Instruct") == str(embedded.embedded_model_dir())


def test_local_dir_resolves_to_itself(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert load.resolve_model_path(str(tmp_path)) == str(tmp_path)


def test_dir_without_config_is_refused(tmp_path):
    with pytest.raises(ModelNameError, match="config.json"):
        load.resolve_model_path(str(tmp_path))


def test_missing_path_and_hub_id(tmp_path, monkeypatch):
    from legaltune.model import hub

    with pytest.raises(ModelNameError, match="no such"):
        load.resolve_model_path(str(tmp_path / "nope"))
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)  # a hub id is then from_pretrained's to fetch
    assert load.resolve_model_path("unsloth/Llama-3.1-8B-Instruct") == "unsloth/Llama-3.1-8B-Instruct"


def test_gguf_converted_once_into_stable_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LEGALTUNE_CACHE", str(tmp_path / "cache"))
    calls: list[tuple[Path, Path]] = []

    def fake_convert(src: Path, out: Path) -> Path:
        calls.append((src, out))
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        return out

    monkeypatch.setattr(load, "convert_gguf", fake_convert)
    gguf = tmp_path / "Vi-Law.Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF")
    first = load.resolve_model_path(str(gguf))
    assert load.resolve_model_path(str(gguf)) == first and len(calls) == 1
    assert Path(first).parent == tmp_path / "cache" / "models"
    assert Path(first).name.startswith("Vi-Law.Q4_K_M-")
    st = gguf.stat()
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # an edited file converts again
    assert load.resolve_model_path(str(gguf)) != first and len(calls) == 2


# --- loading ----------------------------------------------------------------------------------------


def test_load_tiny_model_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only machine, also on GPU hosts
    path = tiny_llama(tmp_path / "tiny")
    model, tok = load.load_model(model_cfg(str(path), device_map="auto"), QuantizationConfig())
    assert next(model.parameters()).dtype is torch.float32
    assert next(model.parameters()).device.type == "cpu"
    assert model.config._attn_implementation == "sdpa"
    assert tok.pad_token == tok.eos_token == "</s>"
    assert model.config.pad_token_id == tok.pad_token_id
    assert tok.model_max_length == 128 and model.max_seq_length == 128
    assert not hasattr(model, "hf_device_map") or set(model.hf_device_map.values()) <= {"cpu"}


def test_load_model_uses_the_tokenizer_it_is_given(tmp_path, monkeypatch):
    """`legaltune train` tokenizes the data first; the model load reuses that tokenizer, not a second."""
    import transformers

    from legaltune.model.tokenizer import load_tokenizer

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = model_cfg(str(tiny_llama(tmp_path / "tiny")), device_map="cpu")
    tok = load_tokenizer(cfg)
    loads = []
    real = transformers.AutoTokenizer.from_pretrained
    monkeypatch.setattr(
        transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: loads.append(a) or real(*a, **k)
    )
    model, same = load.load_model(cfg, QuantizationConfig(), tok)
    assert same is tok and loads == [] and model.config.pad_token_id == tok.pad_token_id
    load.load_model(cfg, QuantizationConfig())
    assert len(loads) == 1


def test_hub_failure_names_model_and_fix(monkeypatch):
    import transformers

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(ModelNameError) as err:
        load.load_model(model_cfg("vinai/not-a-model"), QuantizationConfig())
    msg = str(err.value)
    assert "vinai/not-a-model" in msg and "Hugging Face Hub did not provide it" in msg
    assert "model directory with config.json" in msg and "'smollm2-135m-instruct'" in msg
    # the tokenizer alone (data check, the first thing train loads) says the same, not a traceback
    from legaltune.model.tokenizer import load_tokenizer

    with pytest.raises(ModelNameError, match="llama-9000.*Names that work offline"):
        load_tokenizer(model_cfg("llama-9000"))
