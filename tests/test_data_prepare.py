"""Data files → records → messages → tokens: every file type, schema, and bad input."""

import json
import unicodedata

import pytest

from legaltune.config.load import build_config
from legaltune.data.prepare import prepare_data
from legaltune.records.read import DataError, read_records

QA = {
    "question": "Tuổi nghỉ hưu của lao động nam năm 2028 là bao nhiêu?",
    "answer": "Theo Điều 169 Bộ luật Lao động 2019, đủ 62 tuổi.",
}
CHAT = {
    "messages": [
        {"role": "user", "content": "Thử việc tối đa bao lâu?"},
        {"role": "assistant", "content": "Không quá 180 ngày với người quản lý doanh nghiệp (Điều 25)."},
        {"role": "user", "content": "Còn công việc khác?"},
        {"role": "assistant", "content": "Không quá 60 ngày với công việc cần trình độ cao đẳng trở lên."},
    ]
}
ALPACA = {
    "instruction": "Nêu điều kiện kết hôn",
    "input": "",
    "output": "Nam từ đủ 20 tuổi, nữ từ đủ 18 tuổi (Điều 8).",
}
TEXT = {"text": "<|im_start|>user\nXin chào<|im_end|>\n<|im_start|>assistant\nChào bạn.<|im_end|>\n"}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def cfg_for(train, **data):
    raw = {
        "model": {"max_seq_length": 512},
        "data": {"train_file": str(train), "val_split": 0.0, **data},
        "logging": {"eval_strategy": "no"},
    }
    return build_config(raw)


def test_every_file_type_reads_the_same_records(tmp_path):
    import pandas as pd
    from datasets import Dataset

    recs = [QA, {"question": "Q2", "answer": "A2"}]
    write_jsonl(tmp_path / "a.jsonl", recs)
    (tmp_path / "a.json").write_text(json.dumps(recs, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps({"data": recs}, ensure_ascii=False), encoding="utf-8")
    pd.DataFrame(recs).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame(recs).to_parquet(tmp_path / "a.parquet")
    Dataset.from_list(recs).save_to_disk(str(tmp_path / "saved"))
    for name in ("a.jsonl", "a.json", "b.json", "a.csv", "a.parquet", "saved"):
        got = [r for _, r in read_records(tmp_path / name)]
        assert [(r["question"], r["answer"]) for r in got] == [(r["question"], r["answer"]) for r in recs], (
            name
        )


def test_bom_and_crlf_are_handled(tmp_path):
    f = tmp_path / "bom.jsonl"
    f.write_bytes(("\ufeff" + json.dumps(QA, ensure_ascii=False) + "\r\n").encode("utf-8"))
    assert read_records(f)[0][1]["question"] == QA["question"]


def test_bad_json_line_names_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps(QA) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
        read_records(f)


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_records(tmp_path / "nope.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="unsupported file type"):
        read_records(tmp_path / "x.txt")


def test_all_schemas_detected_and_formatted(tmp_path, tokenizer):
    f = write_jsonl(tmp_path / "t.jsonl", [QA, CHAT, ALPACA, TEXT])
    prep = prepare_data(cfg_for(f), tokenizer)
    assert prep.stats.train.schemas == {"legal_qa": 1, "chat": 1, "alpaca": 1, "text": 1}
    assert prep.stats.train.examples == 4 and 0 < prep.stats.train.trained_fraction < 1


def test_bad_record_error_names_file_line_field(tmp_path, tokenizer):
    f = write_jsonl(tmp_path / "t.jsonl", [QA, {"question": "Q", "answer": ""}])
    with pytest.raises(DataError, match=r"t\.jsonl:2: field 'answer': empty"):
        prepare_data(cfg_for(f), tokenizer)
    bad_chat = {"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}
    write_jsonl(f, [QA, bad_chat])
    with pytest.raises(DataError, match=r"t\.jsonl:2: field 'messages\[1\]\.role'"):
        prepare_data(cfg_for(f), tokenizer)


def test_skip_mode_counts_bad_records(tmp_path, tokenizer):
    f = write_jsonl(tmp_path / "t.jsonl", [QA, {"question": "Q", "answer": 3}, {"foo": 1}])
    prep = prepare_data(cfg_for(f, on_bad_record="skip"), tokenizer)
    assert prep.stats.train.skipped_bad == 2 and prep.stats.train.examples == 1
    assert any("t.jsonl:3" in r for r in prep.stats.train.skipped_reasons)


def test_duplicates_dropped_and_counted(tmp_path, tokenizer):
    f = write_jsonl(tmp_path / "t.jsonl", [QA, QA, ALPACA, QA])
    prep = prepare_data(cfg_for(f), tokenizer)
    assert prep.stats.train.duplicates == 2 and prep.stats.train.examples == 2


def test_mojibake_is_an_error_with_location(tmp_path, tokenizer):
    vni = {
        "question": "Xin chaøo caùc baïn, ñaây laø caâu hoûi veà luaät",
        "answer": "Vaâng, toâi seõ traû lôøi.",
    }
    f = write_jsonl(tmp_path / "t.jsonl", [QA, vni])
    with pytest.raises(DataError, match=r"t\.jsonl:2:.*VNI"):
        prepare_data(cfg_for(f), tokenizer)


def test_nfd_input_normalised_and_counted(tmp_path, tokenizer):
    nfd = {k: unicodedata.normalize("NFD", v) for k, v in QA.items()}
    f = write_jsonl(tmp_path / "t.jsonl", [nfd])
    prep = prepare_data(cfg_for(f), tokenizer)
    assert prep.stats.hygiene["nfc"] == 2
    assert unicodedata.is_normalized("NFC", prep.first_example["text"])


def test_val_split_is_seeded_and_overlap_warned(tmp_path, tokenizer):
    recs = [{"question": f"Câu hỏi số {i}?", "answer": f"Trả lời {i}."} for i in range(20)]
    f = write_jsonl(tmp_path / "t.jsonl", recs)
    cfg = build_config({"model": {"max_seq_length": 256}, "data": {"train_file": str(f), "val_split": 0.25}})
    a, b = prepare_data(cfg, tokenizer), prepare_data(cfg, tokenizer)
    assert a.stats.train.examples == 15 and a.stats.eval.examples == 5
    assert [r["input_ids"] for r in a.eval] == [r["input_ids"] for r in b.eval]
    ev = write_jsonl(tmp_path / "e.jsonl", recs[:3] + [{"question": "Khác?", "answer": "Khác."}])
    cfg = build_config(
        {"model": {"max_seq_length": 256}, "data": {"train_file": str(f), "eval_file": str(ev)}}
    )
    assert prepare_data(cfg, tokenizer).stats.overlap_train_eval == 3


def test_all_masked_dataset_is_an_error(tmp_path, tokenizer):
    # max_seq_length too short to reach any answer: every example loses all trained tokens
    f = write_jsonl(tmp_path / "t.jsonl", [QA, ALPACA])
    cfg = build_config(
        {"model": {"max_seq_length": 16}, "data": {"train_file": str(f)}, "logging": {"eval_strategy": "no"}}
    )
    with pytest.raises(DataError, match="no training example has a trained token"):
        prepare_data(cfg, tokenizer)


def test_truncation_counted_in_stats(tmp_path, tokenizer):
    long = {"question": "Hỏi?", "answer": "Điều 35 quy định. " * 60}
    f = write_jsonl(tmp_path / "t.jsonl", [QA, long])
    prep = prepare_data(cfg_for(f, system_prompt=None), tokenizer)
    s = prep.stats.train
    assert s.truncated == 1 and s.answers_lost_tokens == 1 and s.lost_trained_tokens > 0
    prep = prepare_data(cfg_for(f, system_prompt=None, overlength="drop"), tokenizer)
    assert prep.stats.train.dropped_overlength == 1 and prep.stats.train.examples == 1


def test_packing_rows_and_efficiency(tmp_path, tokenizer):
    recs = [{"question": f"Câu {i}?", "answer": "Trả lời ngắn."} for i in range(12)]
    f = write_jsonl(tmp_path / "t.jsonl", recs)
    prep = prepare_data(cfg_for(f, packing=True), tokenizer)
    s = prep.stats.train
    assert s.rows < s.examples and all(sum(r["seq_lens"]) <= 512 for r in prep.train)
    assert s.efficiency["packed_rows_fill"] > 0.9 > 3 * s.efficiency["padded_to_max_seq_length"]


def test_alqac_join_and_missing_article(tmp_path, tokenizer):
    corpus = [
        {
            "law_id": "45/2019/QH14",
            "articles": [{"article_id": "25", "text": "Thời gian thử việc không quá 180 ngày."}],
        }
    ]
    (tmp_path / "corpus.json").write_text(json.dumps(corpus, ensure_ascii=False), encoding="utf-8")
    q_ok = {
        "question": "Thử việc bao lâu?",
        "relevant_articles": [{"law_id": "45/2019/QH14", "article_id": "25"}],
    }
    f = write_jsonl(tmp_path / "q.jsonl", [q_ok])
    prep = prepare_data(cfg_for(f, format="alqac", corpus_file=str(tmp_path / "corpus.json")), tokenizer)
    assert "180 ngày" in prep.first_example["text"] and "Điều 25 (45/2019/QH14)" in prep.first_example["text"]
    q_bad = {"question": "?", "relevant_articles": [{"law_id": "45/2019/QH14", "article_id": "99"}]}
    write_jsonl(f, [q_ok, q_bad])
    with pytest.raises(DataError, match=r"q\.jsonl:2:.*article 99 of law 45/2019/QH14 is not in the corpus"):
        prepare_data(cfg_for(f, format="alqac", corpus_file=str(tmp_path / "corpus.json")), tokenizer)


def test_subsample_is_seeded_and_counted_and_dedup_switch(tmp_path, tokenizer):
    recs = [{"question": f"Câu {i}?", "answer": f"Đáp {i}."} for i in range(10)]
    f = write_jsonl(tmp_path / "t.jsonl", recs + recs[:2])
    a = prepare_data(cfg_for(f, max_train_examples=4), tokenizer)
    b = prepare_data(cfg_for(f, max_train_examples=4), tokenizer)
    assert a.stats.train.examples == 4 and a.stats.train.not_selected == 6 and a.stats.train.duplicates == 2
    assert [r["input_ids"] for r in a.train] == [r["input_ids"] for r in b.train]
    assert prepare_data(cfg_for(f, dedup=False), tokenizer).stats.train.examples == 12


def test_bundled_sample_loads_cleanly(tokenizer):
    from legaltune.config.load import load_config

    cfg = load_config("configs/demo.yaml", ["data.max_train_examples=null", "data.max_eval_examples=null"])
    prep = prepare_data(cfg, tokenizer)
    s = prep.stats
    assert s.train.records >= 300 * 0.8 and s.eval.records >= 0.15 * (s.train.records + s.eval.records)
    assert s.train.skipped_bad == 0 and s.train.duplicates == 0 and s.overlap_train_eval == 0
    assert s.train.schemas.get("chat", 0) >= 20 and s.hygiene["nfc"] == 0


@pytest.mark.parametrize("packing", [False, True])
def test_an_eval_set_alone_is_prepared_as_the_runs_eval_file(tmp_path, tokenizer, packing):
    """`legaltune eval --data FILE` reads that file alone, as data.eval_file is read for training."""
    from legaltune.data.prepare import prepare_eval_data

    train = write_jsonl(tmp_path / "train.jsonl", [QA, {"question": "Q2", "answer": "A2"}])
    evals = write_jsonl(tmp_path / "eval.jsonl", [CHAT, QA, QA, {"question": "Q3", "answer": "A3"}])
    cfg = cfg_for(train, eval_file=str(evals), packing=packing)
    both = prepare_data(cfg, tokenizer)
    train.unlink()  # the training data need not be present
    alone = prepare_eval_data(cfg, tokenizer, evals)
    assert alone.eval == both.eval and alone.eval_records == both.eval_records and not alone.train
    assert alone.stats.eval == both.stats.eval and alone.stats.eval.duplicates == 1
    with pytest.raises(DataError, match="missing.jsonl"):
        prepare_eval_data(cfg, tokenizer, tmp_path / "missing.jsonl")
