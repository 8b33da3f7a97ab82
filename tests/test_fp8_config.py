"""quantization.load_in_fp8 from config to model: validation, the GPU check, loading on the CPU,
FastLanguageModel's load_in_fp8, and merge's note on an FP8-trained adapter."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import yaml

from legaltune.config.fields import ConfigError
from legaltune.config.load import build_config
from legaltune.config.schema import QuantizationConfig
from legaltune.model import load
from legaltune.speed.fp8_linear import Fp8Linear, fp8_linear_count
from tests.conftest import loss_and_grads
from tests.test_model_load import model_cfg, tiny_llama


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny"))


def _problems(raw: dict) -> list:
    with pytest.raises(ConfigError) as err:
        build_config(raw)
    return err.value.problems


@pytest.mark.parametrize("other", ["load_in_4bit", "load_in_8bit"])
def test_fp8_with_a_bitsandbytes_quantization_is_a_config_error(other):
    (p,) = _problems({"quantization": {"load_in_fp8": True, other: True}})
    assert p.path == "quantization.load_in_fp8" and other in p.message
    assert f"quantization.{other}: false" in p.fix and "quantization.load_in_fp8: false" in p.fix
    assert build_config({"quantization": {"load_in_fp8": True}}).quantization.load_in_fp8 is True


def test_fp8_under_fsdp_is_refused_with_ddp_as_the_fix():
    (p,) = _problems({"quantization": {"load_in_fp8": True}, "distributed": {"strategy": "fsdp"}})
    assert p.path == "quantization.load_in_fp8" and "distributed.strategy: ddp" in p.fix
    build_config({"quantization": {"load_in_fp8": True}, "distributed": {"strategy": "ddp"}})


def _gpu(monkeypatch, capability: tuple[int, int], name: str) -> None:
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)


def test_a_gpu_without_fp8_tensor_cores_is_named(monkeypatch):
    _gpu(monkeypatch, (8, 0), "NVIDIA A100-SXM4-80GB")
    with pytest.raises(ValueError, match=r"NVIDIA A100-SXM4-80GB \(compute capability 8\.0\)") as err:
        load.check_fp8("cuda", torch.bfloat16)
    assert "load_in_fp8: false" in str(err.value)
    _gpu(monkeypatch, (9, 0), "NVIDIA H200")
    load.check_fp8("cuda", torch.bfloat16)  # Hopper: fine
    with pytest.raises(ValueError, match="model.dtype: bfloat16"):
        load.check_fp8("cuda", torch.float16)


def test_cpu_says_it_runs_the_reference_path(capsys):
    load.check_fp8("cpu", torch.float32)
    assert "no speed-up" in capsys.readouterr().err


def test_fp8_and_4bit_together_fail_before_loading(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("nothing may load")

    monkeypatch.setattr(load, "resolve_model_path", boom)
    with pytest.raises(ValueError, match="choose one"):
        load.load_model(model_cfg("x/y"), QuantizationConfig(load_in_fp8=True, load_in_4bit=True))


def test_load_model_stores_the_decoder_projections_in_fp8_on_cpu(tiny_dir, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    dense, _ = load.load_model(model_cfg(str(tiny_dir)), QuantizationConfig())
    model, _ = load.load_model(model_cfg(str(tiny_dir)), QuantizationConfig(load_in_fp8=True))
    assert fp8_linear_count(model) == 2 * 7 and fp8_linear_count(dense) == 0
    assert "14 decoder projections in float8_e4m3" in capsys.readouterr().err
    down = model.model.layers[1].mlp.down_proj
    assert isinstance(down, Fp8Linear) and down.weight.dtype == torch.float8_e4m3fn
    # the stored weight is the dense one within e4m3 rounding
    ref = dense.model.layers[1].mlp.down_proj.weight
    assert (
        (down.dequantized_weight(torch.float32) - ref).abs() <= 2**-4 * ref.abs() + 1e-3 * ref.abs().max()
    ).all()


def test_fast_language_model_trains_lora_over_fp8(tiny_dir, monkeypatch):
    from legaltune.api import FastLanguageModel

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'block' scaling is not implemented"):
        FastLanguageModel.from_pretrained(str(tiny_dir), load_in_fp8="block")
    losses = {}
    for fp8 in (False, True):
        model, _ = FastLanguageModel.from_pretrained(str(tiny_dir), max_seq_length=64, load_in_fp8=fp8)
        peft_model = FastLanguageModel.get_peft_model(model, r=8, use_gradient_checkpointing=False)
        ids = torch.randint(3, 64, (2, 16), generator=torch.Generator().manual_seed(0))
        _, losses[fp8], grads = loss_and_grads(peft_model.train(), ids)
        assert all(torch.isfinite(g).all() for g in grads.values())
        assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)  # (A's are 0 while B is)
    assert fp8_linear_count(peft_model) == 14
    assert abs(losses[True] - losses[False]) / losses[False] < 0.01


def test_merge_notes_an_fp8_trained_adapter(tmp_path):
    from legaltune.export.merge import QuantizedBaseWarning, _training_quantization, _warn_quantized

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"quantization": {"load_in_fp8": True}}), encoding="utf-8")
    assert _training_quantization(config) == "FP8 (float8_e4m3)"
    info = type("Info", (), {"quantized": _training_quantization(config)})()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _warn_quantized(info)
    (warning,) = [w for w in caught if issubclass(w.category, QuantizedBaseWarning)]
    assert "FP8" in str(warning.message) and "16-bit base" in str(warning.message)


@pytest.mark.long
def test_legaltune_train_with_load_in_fp8_on_cpu(tmp_path):
    """The CLI end to end over the embedded model (minutes on a shared CPU: the reference path
    quantizes every activation in eager ops): FP8 projections, a finished run, a saved adapter."""
    from tests import train_cli

    config = train_cli.write_config(tmp_path / "c.yaml", tmp_path / "out", max_steps=2)
    proc = train_cli.run(
        "train", str(config), "--set", "quantization.load_in_fp8=true", "--set", "speed.mode=fast"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "210 decoder projections in float8_e4m3" in out and "210 FP8 base linears" in out
    assert (tmp_path / "out" / "k" / "adapter" / "adapter_model.safetensors").is_file()
