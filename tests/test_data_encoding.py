"""Encodings and damaged text: every file read as the user meant it, or an error saying how to fix it.

Double-encoded UTF-8 (the commonest Vietnamese mojibake), UTF-16/UTF-32/BOM files, Windows-1258
and legacy VNI files, invisible control characters, missing-value cells, and files with no records.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import unicodedata

import pytest

from legaltune.config.load import build_config
from legaltune.data.prepare import prepare_data
from legaltune.records.read import DataError, read_records
from legaltune.text import vietnamese as vn

RECS = [
    {"question": "Người lao động phải báo trước bao nhiêu ngày?", "answer": "Ít nhất 45 ngày (Điều 35)."},
    {"question": "Tuổi nghỉ hưu của lao động nam?", "answer": "Đủ 62 tuổi theo Bộ luật Lao động 2019."},
    {"question": "Thử việc tối đa bao lâu?", "answer": "Không quá 180 ngày đối với người quản lý."},
]
VIETNAMESE = [
    "Bộ luật Lao động 2019",
    "Điều 35. Quyền đơn phương chấm dứt hợp đồng lao động của người lao động",
    "Hòa giải viên lao động; khỏe mạnh; Ủy ban nhân dân; thuở ấy; quý khách",
    "Nghị định 145/2020/NĐ-CP hướng dẫn Bộ luật Lao động về điều kiện lao động",
    "Người sử dụng lao động phải trả lương đúng hạn, không được khấu trừ quá 30%.",
]


def _double(text: str, codec: str) -> str:
    """UTF-8 bytes read as `codec` (and saved again as UTF-8): the mojibake. Windows-1252 as
    Windows reads it: its five undefined bytes (0x81, 0x8d, 0x8f, 0x90, 0x9d) pass through as C1
    controls, which is ftfy's "sloppy" codec."""
    import ftfy.bad_codecs  # noqa: F401  (registers sloppy-windows-1252)

    return text.encode("utf-8").decode("sloppy-windows-1252" if codec == "cp1252" else codec)


def cfg_for(train, **data):
    return build_config(
        {
            "model": {"max_seq_length": 512},
            "data": {"train_file": str(train), **data},
            "logging": {"eval_strategy": "no"},
        }
    )


def jsonl_text(records) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


# --- double-encoded UTF-8 --------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["cp1252", "latin-1"])
@pytest.mark.parametrize("text", VIETNAMESE)
def test_double_encoded_utf8_is_detected(text, codec):
    garbled = _double(text, codec)
    assert garbled != text
    assert vn.detect_legacy_encoding(garbled) == vn.DOUBLE_UTF8


def test_issue_example_is_detected():
    assert vn.detect_legacy_encoding("Bá»™ luáº­t Lao Ä‘á»™ng") == vn.DOUBLE_UTF8


@pytest.mark.parametrize(
    "text",
    [
        *VIETNAMESE,
        "café, résumé, naïve, Ærø, São Paulo, Zürich, Łódź",
        "“Điều 5” – quy định… © 2024 ™",
        "Luật số 45/2019/QH14; Điều 169; 62 tuổi",
        "emoji 👍 and math ≤ ≥ ±",
    ],
)
def test_clean_text_is_not_flagged(text):
    assert vn.detect_legacy_encoding(text) is None


def test_double_encoded_record_is_an_error_with_file_line_and_a_pasteable_fix(tmp_path, tokenizer):
    bad = dict(RECS[1], answer=_double(RECS[1]["answer"], "cp1252"))
    f = tmp_path / "train.jsonl"
    f.write_text(jsonl_text([RECS[0], bad, RECS[2]]), encoding="utf-8")
    with pytest.raises(DataError) as info:
        prepare_data(cfg_for(f), tokenizer)
    msg = str(info.value)
    assert f"{f}:2:" in msg and "field 'assistant content'" in msg and "Windows-1252" in msg
    assert "data.fix_mojibake: true" in msg
    # the fix, pasted: repaired, counted, and the text is the original
    prep = prepare_data(cfg_for(f, fix_mojibake=True), tokenizer)
    assert prep.stats.hygiene["mojibake"] == 1 and prep.stats.train.examples == 3
    decoded = [tokenizer.decode(row["input_ids"]) for row in prep.train]
    assert any(RECS[1]["answer"] in d for d in decoded) and not any("á»" in d for d in decoded)


def test_fix_mojibake_leaves_clean_text_alone():
    report = vn.HygieneReport()
    for text in VIETNAMESE:
        assert vn.clean(text, fix_mojibake=True, report=report) == text
    assert report.mojibake == 0 and report.changed == 0


# --- file encodings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "codec,bom",
    [
        ("utf-8", b"\xef\xbb\xbf"),
        ("utf-16-le", b"\xff\xfe"),
        ("utf-16-be", b"\xfe\xff"),
        ("utf-16-le", b""),
        ("utf-16-be", b""),
        ("utf-32-le", b"\xff\xfe\x00\x00"),
        ("utf-32-be", b"\x00\x00\xfe\xff"),
    ],
)
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_utf16_utf32_and_bom_files_read(tmp_path, codec, bom, suffix):
    if suffix == ".jsonl":
        text = jsonl_text(RECS)
    elif suffix == ".json":
        text = json.dumps(RECS, ensure_ascii=False)
    else:
        text = "question,answer\r\n" + "".join(f'"{r["question"]}","{r["answer"]}"\r\n' for r in RECS)
    f = tmp_path / f"data{suffix}"
    f.write_bytes(bom + text.encode(codec))
    got = [r for _, r in read_records(f)]
    assert [(r["question"], r["answer"]) for r in got] == [(r["question"], r["answer"]) for r in RECS]


def _to_1258(text: str) -> bytes:
    """Windows-1258 bytes: ơ, ư, â, đ... are single bytes, tones combining marks after the letter."""
    out = bytearray()
    for ch in text:
        try:
            out += ch.encode("cp1258")
        except UnicodeEncodeError:
            parts = unicodedata.normalize("NFD", ch)
            tones = "".join(c for c in parts if c in "\u0300\u0301\u0303\u0309\u0323")
            base = unicodedata.normalize("NFC", "".join(c for c in parts if c not in tones))
            out += (base + tones).encode("cp1258")
    return bytes(out)


def test_windows_1258_file_names_file_line_encoding_and_fixes_that_work(tmp_path, tokenizer):
    f = tmp_path / "train.jsonl"
    # line 1 is ASCII: the first undecodable byte is on line 2
    f.write_bytes(b'{"question": "Q?", "answer": "A."}\n' + _to_1258(jsonl_text(RECS)))
    with pytest.raises(DataError) as info:
        read_records(f)
    msg = str(info.value)
    assert msg.startswith(f"{f}:2: not UTF-8") and "Windows-1258" in msg
    assert "data.encoding: cp1258" in msg and "iconv -f WINDOWS-1258 -t UTF-8" in msg
    # fix 1, pasted into the config: the records read as written
    prep = prepare_data(cfg_for(f, encoding="cp1258"), tokenizer)
    assert prep.stats.train.records == 4 and prep.stats.train.skipped_bad == 0
    decoded = tokenizer.decode(prep.train[1]["input_ids"])
    assert RECS[0]["answer"] in decoded
    # fix 2, the iconv command pasted into a shell
    if shutil.which("iconv"):
        command = msg.split("convert it: ", 1)[1]
        subprocess.run(command, shell=True, check=True)
        out = f.with_suffix(".utf8.jsonl")
        got = [r for _, r in read_records(out)][1:]
        assert [unicodedata.normalize("NFC", r["answer"]) for r in got] == [r["answer"] for r in RECS]


def test_vni_file_is_named_vni(tmp_path):
    # VNI-Windows bytes: "chaøo" (chào), "Vieät Nam" (Việt Nam), "ngöôøi lao ñoäng" (người lao động)
    vni = "chaøo caùc baïn, Vieät Nam, ngöôøi lao ñoäng, hôïp ñoàng lao ñoäng"
    f = tmp_path / "train.jsonl"
    f.write_bytes(('{"question": "' + vni + '", "answer": "x"}\n').encode("cp1252"))
    with pytest.raises(DataError) as info:
        read_records(f)
    assert f"{f}:1: not UTF-8" in str(info.value) and "VNI" in str(info.value)


def test_named_encoding_that_does_not_fit_says_so(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_bytes(b'{"question": "a"}\n' + "Điều".encode("utf-16-le"))
    with pytest.raises(DataError, match=r"train.jsonl:2: not valid ascii .* data.encoding"):
        read_records(f, "ascii")


# --- invisible characters, missing values, empty files ----------------------------------------------


def test_invisible_controls_removed_and_counted(tmp_path, tokenizer):
    dirty = dict(RECS[0], question="Người\u200b lao\u200d động\u2060 phải\u202e báo\u2066 trước\u200f?\ufeff")
    f = tmp_path / "train.jsonl"
    f.write_text(jsonl_text([dirty, RECS[1]]), encoding="utf-8")
    prep = prepare_data(cfg_for(f, system_prompt=None), tokenizer)
    assert prep.stats.hygiene["invisible"] == 7
    text = tokenizer.decode(prep.train[0]["input_ids"])
    assert "Người lao động phải báo trước?" in text
    assert not any(ch in text for ch in "\u200b\u200d\u2060\u202e\u2066\u200f\ufeff")


@pytest.mark.parametrize("cell", ["", "NaN", "nan", "NULL", "None", "N/A"])
def test_missing_csv_answer_is_an_error_or_skipped_and_counted(tmp_path, tokenizer, cell):
    import csv

    f = tmp_path / "train.csv"
    with f.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["question", "answer"])
        w.writerow([RECS[0]["question"], RECS[0]["answer"]])
        w.writerow([RECS[1]["question"], cell])
        w.writerow([RECS[2]["question"], RECS[2]["answer"]])
    with pytest.raises(DataError, match=rf"{f}:3: field 'answer': missing"):
        prepare_data(cfg_for(f), tokenizer)
    prep = prepare_data(cfg_for(f, on_bad_record="skip"), tokenizer)
    assert prep.stats.train.skipped_bad == 1 and prep.stats.train.examples == 2
    assert not any("NaN" in tokenizer.decode(r["input_ids"]) for r in prep.train)


def test_pandas_nan_cells_in_parquet_and_json(tmp_path, tokenizer):
    import pandas as pd

    df = pd.DataFrame([RECS[0], {"question": RECS[1]["question"], "answer": float("nan")}])
    df.to_parquet(tmp_path / "t.parquet")
    (tmp_path / "t.jsonl").write_text(
        json.dumps(RECS[0], ensure_ascii=False) + "\n" + '{"question": "Q", "answer": NaN}\n',
        encoding="utf-8",
    )
    for name, where in (("t.parquet", "[row 2]"), ("t.jsonl", ":2")):
        with pytest.raises(DataError, match=r"field 'answer': missing"):
            prepare_data(cfg_for(tmp_path / name), tokenizer)
        prep = prepare_data(cfg_for(tmp_path / name, on_bad_record="skip"), tokenizer)
        assert prep.stats.train.skipped_bad == 1, name
        assert where in prep.stats.train.skipped_reasons[0]


@pytest.mark.parametrize(
    "name,content",
    [
        ("empty.jsonl", ""),
        ("blank.jsonl", "\n  \n\t\n"),
        ("empty.json", ""),
        ("array.json", "[]"),
        ("items.json", '{"data": []}'),
        ("empty.csv", ""),
        ("header.csv", "question,answer\n"),
        ("bom.jsonl", "\ufeff\n"),
    ],
)
def test_file_without_records_says_so(tmp_path, tokenizer, name, content):
    f = tmp_path / name
    f.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{f} has no records"):
        read_records(f)
    with pytest.raises(DataError, match=rf"^{f} has no records"):
        prepare_data(cfg_for(f), tokenizer)
