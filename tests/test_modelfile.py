"""The Ollama Modelfile written beside a GGUF, and the export's type lists and K-quant fallback message."""

from __future__ import annotations

import builtins

import pytest

from legaltune.data.format import load_template
from legaltune.export.modelfile import TemplateShapeError, chat_pieces, go_template, modelfile_text, render

# Gemma's shape: no system turn, the system prompt folded into the first user turn; "model" role.
GEMMA_LIKE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\\n\\n' %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set first = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for m in loop_messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{{ (first if loop.first else '') + m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
CHATS = [
    [{"role": "user", "content": "Thời gian thử việc tối đa là bao lâu?"}],
    [
        {"role": "user", "content": "Xin chào"},
        {"role": "assistant", "content": "Chào bạn.\nTôi giúp gì được?"},
        {"role": "user", "content": "Điều 35 nói gì?"},
    ],
]


@pytest.mark.parametrize(
    "name", ["tokenizer's own (chatml + default system)", "llama-3.1", "chatml", "gemma-like"]
)
@pytest.mark.parametrize("system", [None, "Bạn là trợ lý pháp lý."])
def test_pieces_render_exactly_as_the_jinja_template(tokenizer, name, system):
    template = {
        "llama-3.1": load_template("llama-3.1"),
        "chatml": load_template("chatml"),
        "gemma-like": GEMMA_LIKE,
    }
    chosen = template.get(name)
    pieces = chat_pieces(tokenizer, chosen)
    assert pieces.folded == (name == "gemma-like")
    kwargs = {"chat_template": chosen} if chosen else {}
    for chat in CHATS:
        full = ([{"role": "system", "content": system}] if system else []) + chat
        want = tokenizer.apply_chat_template(full, tokenize=False, add_generation_prompt=True, **kwargs)
        assert render(pieces, system, chat) == want


def test_go_template_is_the_pieces_around_system_and_content(tokenizer):
    text = go_template(chat_pieces(tokenizer, load_template("chatml")))
    assert text.startswith("{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ else }}{{ end }}")
    assert '{{ if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n' in text
    assert "{{ if $last }}<|im_start|>assistant\n{{ end }}" in text and "{{-" not in text  # no trimming
    folded = go_template(chat_pieces(tokenizer, GEMMA_LIKE))
    assert '{{ if $sys }}{{ $sys }}\n\n{{ $sys = "" }}{{ end }}{{ .Content }}' in folded


def test_modelfile_has_template_stops_and_the_runs_system_prompt(tokenizer):
    text, warning = modelfile_text(
        "model-q4_0.gguf",
        tokenizer,
        template=None,
        stops=["<|im_end|>", "<|im_end|>", "<|endoftext|>"],
        system_prompt="Bạn là trợ lý pháp lý tiếng Việt.",
        context_length=2048,
    )
    assert warning is None
    lines = text.splitlines()
    assert lines[1] == "FROM ./model-q4_0.gguf" and "ollama create NAME -f model-q4_0.Modelfile" in lines[0]
    assert [line for line in lines if line.startswith("PARAMETER stop")] == [
        'PARAMETER stop "<|im_end|>"',
        'PARAMETER stop "<|endoftext|>"',
    ]
    assert 'SYSTEM """Bạn là trợ lý pháp lý tiếng Việt."""' in text and "PARAMETER num_ctx 2048" in text
    assert text.count('TEMPLATE """') == 1 and "PARAMETER temperature 0" in text


def test_irregular_template_gets_no_template_and_a_warning(tokenizer):
    # the assistant turn is numbered: no fixed text around the content
    odd = "{% for m in messages %}[{{ loop.index }}] {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(TemplateShapeError):
        chat_pieces(tokenizer, odd)
    text, warning = modelfile_text("m.gguf", tokenizer, template=odd, stops=[], system_prompt=None)
    assert "TEMPLATE" not in text and "GGUF's chat template" in warning


def test_tokenizer_without_chat_template_gets_no_template_and_a_warning(tokenizer):
    """A base model exported as it is (no run, no template of its own): the Modelfile is written."""
    import copy

    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    with pytest.raises(TemplateShapeError, match="no chat template"):
        chat_pieces(bare)
    text, warning = modelfile_text("m.gguf", bare, template=None, stops=["<eos>"], system_prompt=None)
    assert "TEMPLATE" not in text and 'PARAMETER stop "<eos>"' in text and "no chat template" in warning


def test_cli_type_lists_are_the_exporters():
    from legaltune.cli.parser import GGUF_K_QUANTS, GGUF_TYPES
    from legaltune.export.gguf_export import K_QUANTS, TYPES

    assert GGUF_TYPES == tuple(TYPES) and GGUF_K_QUANTS == K_QUANTS


def test_k_quant_without_llama_cpp_says_what_to_install(monkeypatch, tmp_path):
    from legaltune.export import gguf_quantize
    from legaltune.export.gguf_export import export_gguf
    from legaltune.export.merge import ExportError

    real_import = builtins.__import__

    def no_llama_cpp(name, *args, **kwargs):
        if name == "llama_cpp":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(gguf_quantize.shutil, "which", lambda name: None)
    monkeypatch.setattr(builtins, "__import__", no_llama_cpp)
    # refused before the source is even read (a missing run here): no merge spent on it
    with pytest.raises(ExportError, match="llama-quantize.*PATH.*llama-cpp-python.*q4_0"):
        export_gguf(tmp_path / "no-such-run", tmp_path / "m.gguf", type="q4_k_m")
    assert not list(tmp_path.iterdir())
