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
