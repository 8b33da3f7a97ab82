"""data.context_fill: records get the real article text (cited) or retrieved articles, every gap counted."""

import json

import pytest

from legaltune.config.fields import ConfigError
from legaltune.config.load import build_config
from legaltune.data.prepare import prepare_data

LABOR = {
    "id": "l1",
    "question": "Nghỉ việc phải báo trước bao nhiêu ngày với hợp đồng không xác định thời hạn?",
    "answer": "Theo điểm a khoản 1 Điều 35 Bộ luật Lao động 2019, ít nhất 45 ngày.",
    "context": "Điều 35 quy định (lời tác giả).",
    "citation": {"number": "45/2019/QH14", "article": 35, "clause": 1, "point": "a"},
}
LAND = {
    "id": "d1",
    "question": "Đất nông nghiệp được giao có thời hạn bao lâu?",
    "answer": "Theo Điều 172 Luật Đất đai 2024, 50 năm.",
    "context": "Lời tóm tắt của tác giả.",
    "citation": {"number": "31/2024/QH15", "article": 172},
}
NO_CITATION = {"id": "n1", "question": "Xin chào?", "answer": "Chào bạn."}
CHAT = {
    "id": "c1",
    "messages": [
        {"role": "user", "content": "Thời giờ làm việc bình thường là bao nhiêu?"},
        {"role": "assistant", "content": "Không quá 08 giờ một ngày (Điều 105)."},
        {"role": "user", "content": "Còn một tuần?"},
        {"role": "assistant", "content": "Không quá 48 giờ."},
    ],
    "citation": {"number": "45/2019/QH14", "article": 105},
}


def _prep(tmp_path, tokenizer, **data):
    path = tmp_path / "train.jsonl"
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in (LABOR, LAND, NO_CITATION, CHAT))
    )
    cfg = build_config(
        {
            "model": {"max_seq_length": 4096},
            # the same file as eval data: prep.eval_records holds every record's messages as training sees them
            "data": {"train_file": str(path), "eval_file": str(path), "system_prompt": None, **data},
        }
    )
    prep = prepare_data(cfg, tokenizer)
    return prep, [r["messages"] for r in prep.eval_records]


def test_cited_fills_the_real_article_and_counts_the_rest(tmp_path, tokenizer):
    prep, (labor, land, _, chat) = _prep(tmp_path, tokenizer, context_fill="cited")
    counts = prep.stats.train.context
    assert (counts.filled, counts.not_in_corpus, counts.no_citation) == (2, 1, 1)
    assert counts.examples["not_in_corpus"] == [f"{tmp_path / 'train.jsonl'}:2"]
    user = labor[0]["content"]
    assert user.startswith(
        "Căn cứ pháp lý tham khảo:\nĐiều 35 Bộ luật Lao động 2019 (45/2019/QH14). Quyền đơn phương"
    )
    assert "a) Ít nhất 45 ngày nếu làm việc theo hợp đồng lao động không xác định thời hạn" in user
    assert user.index("Ít nhất 45 ngày") < user.index("Câu hỏi: Nghỉ việc phải báo trước")
    assert "lời tác giả" not in user
    assert land[0]["content"].startswith(
        "Căn cứ pháp lý tham khảo:\nLời tóm tắt của tác giả."
    )  # own context kept
    first_user = chat[0]["content"]
    assert first_user.startswith("Căn cứ pháp lý tham khảo:\nĐiều 105 Bộ luật Lao động 2019 (45/2019/QH14)")
    assert first_user.endswith("Câu hỏi: Thời giờ làm việc bình thường là bao nhiêu?")
    assert chat[2]["content"] == "Còn một tuần?"  # only the first user turn gets the context
    # the chat template puts it where the model sees it: in the user turn, before the question
    text, spans = prep.formatter.spans(labor)
    assert text.index("Ít nhất 45 ngày") < text.index("Câu hỏi:") < spans[0][0]


def test_retrieved_counts_whether_the_cited_article_was_found(tmp_path, tokenizer):
    prep, msgs = _prep(tmp_path, tokenizer, context_fill="retrieved", context_top_k=3)
    counts = prep.stats.train.context
    # every record with a question gets retrieved articles; two cite an article the corpus has
    assert counts.filled == 4 and counts.retrieval_checked == 2
    assert counts.retrieval_hits == 2  # both questions use their article's words
    labor = msgs[0][0]["content"]
    assert labor.count("Bộ luật") >= 3 and "Điều 35 Bộ luật Lao động 2019" in labor


def test_max_chars_cuts_at_a_line_and_counts(tmp_path, tokenizer):
    prep, msgs = _prep(tmp_path, tokenizer, context_fill="cited", context_max_chars=300)
    assert prep.stats.train.context.cut == 2  # Điều 35 and Điều 105 are both longer than 300 characters
    assert prep.stats.to_dict()["train"]["context"]["cut"] == 2  # and data_stats.json says so
    context = msgs[0][0]["content"].split("\n\nCâu hỏi:")[0]
    assert len(context) <= 300 + len("Căn cứ pháp lý tham khảo:\n")


def test_context_fill_without_use_context_is_a_config_error():
    with pytest.raises(ConfigError, match="data.context_fill"):
        build_config(
            {"data": {"context_fill": "cited", "use_context": False}, "logging": {"eval_strategy": "no"}}
        )
