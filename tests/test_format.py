"""Chat formatting and responses-only masking for ChatML (SmolLM2) and the Llama-3.1 format."""

import pytest

from legaltune.data.format import IGNORE, ChatFormatter, TemplateError, load_template

CHAT = [
    {"role": "system", "content": "Bạn là trợ lý pháp lý."},
    {"role": "user", "content": "Tuổi kết hôn của nam là bao nhiêu?"},
    {"role": "assistant", "content": "Nam từ đủ 20 tuổi trở lên (Điều 8)."},
    {"role": "user", "content": "Còn nữ?"},
    {"role": "assistant", "content": "Nữ từ đủ 18 tuổi trở lên."},
]


def trained_text(tok, enc) -> str:
    return tok.decode([i for i, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE])


def test_chatml_trains_every_assistant_turn_with_end_of_turn(tokenizer):
    fmt = ChatFormatter(tokenizer)
    enc = fmt.encode(CHAT, 1024)
    assert (
        trained_text(tokenizer, enc)
        == "Nam từ đủ 20 tuổi trở lên (Điều 8).<|im_end|>Nữ từ đủ 18 tuổi trở lên.<|im_end|>"
    )
    assert fmt.end_of_turn == "<|im_end|>"
    # labels equal ids where trained
    assert all(lab in (IGNORE, i) for i, lab in zip(enc.input_ids, enc.labels, strict=True))


def test_llama31_template_masks_user_and_system(tokenizer):
    fmt = ChatFormatter(tokenizer, template=load_template("llama-3.1"))
    text, spans = fmt.spans(CHAT)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system")
    assert [text[s:e] for s, e in spans] == [
        "Nam từ đủ 20 tuổi trở lên (Điều 8).<|eot_id|>",
        "Nữ từ đủ 18 tuổi trở lên.<|eot_id|>",
    ]
    assert fmt.assistant_header == "<|start_header_id|>assistant<|end_header_id|>\n\n"


def test_train_on_all_trains_everything_but_the_first_token(tokenizer):
    enc = ChatFormatter(tokenizer, train_on="all").encode(CHAT, 1024)
    assert enc.labels[0] == IGNORE and enc.trained == len(enc.input_ids) - 1


def test_preformatted_text_masked_by_template_markers(tokenizer):
    fmt = ChatFormatter(tokenizer)
    text = fmt.render(CHAT)
    from_text = fmt.encode_text(text, 1024)
    from_msgs = fmt.encode(CHAT, 1024)
    assert from_text.labels == from_msgs.labels


def test_truncation_is_counted_and_drop_drops(tokenizer):
    fmt = ChatFormatter(tokenizer)
    full = fmt.encode(CHAT, 4096)
    cut = fmt.encode(CHAT, len(full.input_ids) - 5)
    assert cut.truncated and len(cut.input_ids) == len(full.input_ids) - 5
    lost = sum(1 for lab in full.labels[-5:] if lab != IGNORE)  # the final "\n" after <|im_end|> is untrained
    assert lost == 4 and cut.lost_trained == lost and cut.trained == full.trained - lost
    assert fmt.encode(CHAT, 10, "drop") is None


def test_template_without_end_of_turn_is_rejected(tokenizer):
    bad = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    with pytest.raises(TemplateError, match="end-of-turn"):
        ChatFormatter(tokenizer, template=bad)


def test_unknown_template_name(tmp_path):
    with pytest.raises(TemplateError, match="chatml"):
        load_template("vicuna")
    f = tmp_path / "t.jinja"
    f.write_text("x", encoding="utf-8")
    assert load_template(str(f)) == "x"


def _gemma_like(tokenizer):
    """The embedded tokenizer as a pretrained Gemma's looks to legaltune: no chat template, and
    <start_of_turn>/<end_of_turn> as single tokens of its vocabulary."""
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tok.bos_token = "<|endoftext|>"
    return tok


def test_gemma_template_trains_model_turns_with_end_of_turn(tokenizer):
    from legaltune.generate.answers import stop_token_ids

    tok = _gemma_like(tokenizer)
    fmt = ChatFormatter(tok, template=load_template("gemma"))
    text, spans = fmt.spans(CHAT)
    # no system role in Gemma's format: the system prompt opens the first user turn
    assert text.startswith(
        "<|endoftext|><start_of_turn>user\nBạn là trợ lý pháp lý.\n\nTuổi kết hôn của nam là bao nhiêu?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert [text[s:e] for s, e in spans] == [
        "Nam từ đủ 20 tuổi trở lên (Điều 8).<end_of_turn>",
        "Nữ từ đủ 18 tuổi trở lên.<end_of_turn>",
    ]
    assert fmt.assistant_header == "<start_of_turn>model\n" and fmt.end_of_turn == "<end_of_turn>"
    enc = fmt.encode(CHAT, 1024)
    assert (
        trained_text(tok, enc)
        == "Nam từ đủ 20 tuổi trở lên (Điều 8).<end_of_turn>Nữ từ đủ 18 tuổi trở lên.<end_of_turn>"
    )
    # generation stops at it
    assert tok.convert_tokens_to_ids("<end_of_turn>") in stop_token_ids(tok, fmt.end_of_turn)


def test_gemma_pretrained_template_trains_model_turns_with_eos_and_generation_stops_there(tokenizer):
    """The template a pretrained Gemma gets: Gemma's turns, the model's closed by eos (not by the
    <end_of_turn> it never trained), that eos labelled, and an answer that emits it stops."""
    from legaltune.generate.answers import generate_answers
    from tests.conftest import make_tiny_llama

    tok = _gemma_like(tokenizer)
    fmt = ChatFormatter(tok, template=load_template("gemma-pretrained"))
    eos = tok.eos_token
    assert fmt.assistant_header == "<start_of_turn>model\n" and fmt.end_of_turn == eos
    text, spans = fmt.spans(CHAT)
    assert text.startswith(
        "<|endoftext|><start_of_turn>user\nBạn là trợ lý pháp lý.\n\nTuổi kết hôn của nam là bao nhiêu?<end_of_turn>\n"
        "<start_of_turn>model\nNam từ đủ 20 tuổi trở lên (Điều 8)." + eos + "\n<start_of_turn>user\n"
    )
    enc = fmt.encode(CHAT, 1024)
    assert trained_text(tok, enc) == f"Nam từ đủ 20 tuổi trở lên (Điều 8).{eos}Nữ từ đủ 18 tuổi trở lên.{eos}"
    assert [enc.labels[i] for i, t in enumerate(enc.input_ids) if t == tok.eos_token_id] == [
        tok.eos_token_id
    ] * 2

    # a model whose first answer token is eos: that answer stops at once and counts as stopped
    model = make_tiny_llama(len(tok))

    def emit_eos(_module, _inputs, logits):
        logits[..., tok.eos_token_id] = logits.max() + 10.0
        return logits

    model.lm_head.register_forward_hook(emit_eos)
    (ans,) = generate_answers(
        model, tok, [CHAT[:2]], max_new_tokens=5, chat_template=fmt.template, end_of_turn=fmt.end_of_turn
    )
    assert ans.stopped and ans.new_tokens == 0


def test_a_tokenizer_without_template_gets_gemma_only_with_gemma_markers(tokenizer, capsys):
    from legaltune.data.format import fallback_template_name
    from legaltune.model.load import prepare_tokenizer

    assert fallback_template_name(tokenizer) is None  # has its own (ChatML)
    tok = _gemma_like(tokenizer)
    assert fallback_template_name(tok) == "gemma-pretrained"
    prepare_tokenizer(tok, 512)
    assert tok.chat_template == load_template("gemma-pretrained")
    assert "built-in 'gemma-pretrained' template" in capsys.readouterr().err
    # a pretrained model's turn markers are untrained: its answers close with eos, which it knows
    assert ChatFormatter(tok).end_of_turn == tok.eos_token

    import copy

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    assert fallback_template_name(plain) is None
    prepare_tokenizer(plain, 512)
    assert plain.chat_template is None
    with pytest.raises(TemplateError, match="chatml.*llama-3.1, gemma"):
        ChatFormatter(plain)
