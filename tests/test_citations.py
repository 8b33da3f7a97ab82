"""Legal citation extraction and precision/recall/F1 over citation sets."""

import unicodedata

import pytest

from legaltune.evaluate.citations import aggregate_citation_scores, citation_scores
from legaltune.text.citations import Citation, extract_citations


def art(article, clause=None, point=None):
    return Citation("article", article, clause, point)


def doc(number):
    return Citation("document", document=number)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Theo Điều 35 Bộ luật Lao động", {art(35)}),
        ("quy định tại khoản 1 Điều 3", {art(3, 1)}),
        ("điểm a khoản 2 Điều 5", {art(5, 2, "a")}),
        ("Khoản 2, Điều 5", {art(5, 2)}),
        ("khoản 1 và khoản 2 Điều 36", {art(36, 1), art(36, 2)}),
        ("khoản 1, 2 Điều 36", {art(36, 1), art(36, 2)}),
        ("Điều 35, Điều 36", {art(35), art(36)}),
        ("Điều 35, 36 và 37 của Bộ luật", {art(35), art(36), art(37)}),
        ("khoản 2 của Điều 5 và khoản 3 Điều 6", {art(5, 2), art(6, 3)}),
        ("điểm a, b khoản 1 Điều 7", {art(7, 1, "a"), art(7, 1, "b")}),
        ("điểm a khoản 1 và điểm b khoản 2 Điều 8", {art(8, 1, "a"), art(8, 2, "b")}),
        ("điểm đ khoản 1 Điều 11", {art(11, 1, "đ")}),
        ("KHOẢN 3 ĐIỀU 9", {art(9, 3)}),
        ("theo Điều 5, 10 ngày sau khi nhận", {art(5)}),
        ("khoản 2 Điều này", set()),
        ("điều kiện và điều khoản của hợp đồng", set()),
        ("", set()),
    ],
)
def test_article_citations(text, expected):
    assert extract_citations(text) == expected


def test_nfd_and_misplaced_tone_input():
    text = unicodedata.normalize("NFD", "Khoản 4 Điều 10 Luật 45/2019/QH14")
    assert extract_citations(text) == {art(10, 4), doc("45/2019/QH14")}
    assert extract_citations("khỏan 1 Điều 2") == {art(2, 1)}  # old-style typo of "khoản"


def test_document_numbers_canonicalised():
    text = (
        "Bộ luật 45/2019/QH14, Luật 100/2015/QH13, Nghị định 15/2020/NĐ-CP và 168/2024/nđ-cp, "
        "Thông tư 9/2023/TT–BTC, Thông tư 01/2021/TT-BLĐTBXH."
    )
    assert extract_citations(text) == {
        doc("45/2019/QH14"),
        doc("100/2015/QH13"),
        doc("15/2020/NĐ-CP"),
        doc("168/2024/NĐ-CP"),
        doc("09/2023/TT-BTC"),
        doc("01/2021/TT-BLĐTBXH"),
    }


def test_dates_and_fractions_are_not_documents():
    assert extract_citations("ngày 15/10/2020, tỷ lệ 1/2, số 45/2019") == set()


def test_citation_scores_values():
    # pred {art 3 cl 1, art 4}, ref {art 3 cl 1}: P = 1/2, R = 1, F1 = 2/3.
    scores = citation_scores("khoản 1 Điều 3 và Điều 4", "khoản 1 Điều 3")
    assert scores["precision"] == pytest.approx(0.5)
    assert scores["recall"] == pytest.approx(1.0)
    assert scores["f1"] == pytest.approx(2 / 3)
    assert (scores["n_pred"], scores["n_ref"], scores["n_match"]) == (2, 1, 1)


def test_citation_scores_levels():
    pred, ref = "Điều 3", "khoản 1 Điều 3"
    assert citation_scores(pred, ref)["f1"] == 0.0
    assert citation_scores(pred, ref, level="article")["f1"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        citation_scores(pred, ref, level="clause")  # type: ignore[arg-type]


def test_citation_scores_empty_cases():
    assert citation_scores("không có", "cũng không")["f1"] is None
    assert citation_scores("không có", "cũng không")["precision"] is None
    only_pred = citation_scores("Điều 5", "không")
    assert (only_pred["precision"], only_pred["recall"], only_pred["f1"]) == (0.0, None, 0.0)
    only_ref = citation_scores("không", "Điều 5")
    assert (only_ref["precision"], only_ref["recall"], only_ref["f1"]) == (None, 0.0, 0.0)


def test_aggregate_is_micro_averaged():
    pairs = [
        ("khoản 1 Điều 3", "khoản 1 Điều 3 và Điều 4"),  # pred 1, ref 2, match 1
        ("Điều 5", "không có"),  # pred 1, ref 0, match 0
        ("", ""),  # nothing
        ("theo Nghị định 15/2020/NĐ-CP", "Nghị định 15/2020/NĐ-CP và Điều 7"),  # pred 1, ref 2, match 1
    ]
    agg = aggregate_citation_scores(pairs)
    # Totals: pred 3, ref 4, match 2 -> P = 2/3, R = 1/2, F1 = 2 * (1/3) / (7/6) = 4/7.
    assert agg["precision"] == pytest.approx(2 / 3)
    assert agg["recall"] == pytest.approx(0.5)
    assert agg["f1"] == pytest.approx(4 / 7)
    assert (agg["n_pairs"], agg["n_refs_with_citations"], agg["n_preds_with_citations"]) == (4, 2, 3)
    assert (agg["n_pred"], agg["n_ref"], agg["n_match"]) == (3, 4, 2)
    assert aggregate_citation_scores([])["f1"] is None
