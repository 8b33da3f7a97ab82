"""Answer metrics over Vietnamese syllables, with values checked by hand."""

import unicodedata

import pytest

from legaltune.evaluate.metrics import bleu, exact_match, rouge_l, token_f1
from legaltune.text.syllables import normalize_answer, syllables


def test_syllables_split_on_space_and_punctuation_keep_accents():
    assert syllables("Bộ_luật, số 45/2019/QH14 (Điều 5).") == [
        "Bộ",
        "luật",
        "số",
        "45",
        "2019",
        "QH14",
        "Điều",
        "5",
    ]
    assert syllables(unicodedata.normalize("NFD", "điều")) == [unicodedata.normalize("NFD", "điều")]
    assert syllables("  ") == []


def test_normalize_answer():
    assert normalize_answer("  Hòa giải,  tại TÒA ÁN!  ") == "hoà giải tại toà án"
    assert normalize_answer(unicodedata.normalize("NFD", "Thúy")) == normalize_answer("thuý") == "thuý"
    assert normalize_answer("...") == ""


def test_exact_match():
    assert exact_match("Hòa giải.", "hoà giải") == 1.0
    assert exact_match(unicodedata.normalize("NFD", "Người lao động"), "người lao động") == 1.0
    assert exact_match("người lao động", "người sử dụng lao động") == 0.0
    assert exact_match("bán", "bạn") == 0.0  # accents are significant


def test_token_f1_hand_computed():
    # 3 of 4 syllables shared on both sides: P = R = 3/4.
    assert token_f1("người lao động có", "người lao động được") == pytest.approx(0.75)
    # Prediction is a prefix: P = 4/4, R = 4/7, F1 = 2 * (4/7) / (11/7) = 8/11.
    assert token_f1("hợp đồng lao động", "hợp đồng lao động có thời hạn") == pytest.approx(8 / 11)
    # Repeated syllables are clipped: overlap 1, P = 1/3, R = 1/2, F1 = 0.4.
    assert token_f1("lao lao lao", "lao động") == pytest.approx(0.4)
    assert token_f1("bán nhà", "bạn bè") == 0.0


def test_token_f1_empty_cases():
    assert token_f1("", "") == 1.0
    assert token_f1("", "có") == 0.0
    assert token_f1("có", "!!") == 0.0


def test_rouge_l_hand_computed():
    # Same bag of words (F1 = 1) but order differs: LCS "người lao động nghỉ" = 4 of 5.
    pred, ref = "người được lao động nghỉ", "người lao động được nghỉ"
    assert token_f1(pred, ref) == pytest.approx(1.0)
    assert rouge_l(pred, ref) == pytest.approx(0.8)
    # LCS 2 ("lao động"), P = 2/2, R = 2/5, F1 = 2 * 0.4 / 1.4 = 4/7.
    assert rouge_l("lao động", "người lao động được nghỉ") == pytest.approx(4 / 7)
    # Accented letters are kept: "bán" and "bạn" differ, so only "nhà" matches (1 of 2).
    assert rouge_l("bán nhà", "bạn nhà") == pytest.approx(0.5)
    assert rouge_l("Hòa giải", "hoà giải") == 1.0
    assert rouge_l("", "") == 1.0 and rouge_l("", "x") == 0.0


def test_bleu_perfect_and_disjoint():
    refs = ["người lao động có quyền nghỉ hằng năm", "hợp đồng lao động phải được giao kết bằng văn bản"]
    assert bleu(refs, refs) == pytest.approx(100.0)
    # Tone style and case differences vanish after normalisation.
    assert bleu(
        ["Hòa giải viên lao động do Ủy ban bổ nhiệm"], ["hoà giải viên lao động do uỷ ban bổ nhiệm"]
    ) == (pytest.approx(100.0))
    disjoint = bleu(["tòa án nhân dân tối cao"], ["một hai ba bốn năm sáu"])
    assert disjoint == pytest.approx(0.0, abs=1e-6)
    partial = bleu(["người lao động có quyền nghỉ"], ["người lao động có quyền nghỉ hằng năm"])
    assert 0.0 < partial < 100.0


def test_bleu_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        bleu(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        bleu([], [])
