"""Citations resolved against the corpus: which law, exists or hallucinated, supported or not."""

import pytest

from legaltune.corpus import build_corpus
from legaltune.corpus.verify import Verifier, summarize_checks
from legaltune.text.citations import Citation, article_mentions


@pytest.fixture(scope="module")
def verifier():
    return Verifier(build_corpus())


def _one(checks):
    assert len(checks) == 1, [c.describe() for c in checks]
    return checks[0]


def test_mentions_carry_their_positions():
    text, mentions = article_mentions("Theo điểm a khoản 1 Điều 35 và Điều 36, …")
    assert [(m.citation, text[m.start : m.end]) for m in mentions] == [
        (Citation("article", 35, 1, "a"), "điểm a khoản 1 Điều 35"),
        (Citation("article", 36), "Điều 36"),
    ]


def test_an_existing_article_that_says_it_is_ok_and_supported(verifier):
    c = _one(
        verifier.check(
            "Theo điểm a khoản 1 Điều 35 Bộ luật Lao động 2019, người lao động làm việc theo hợp đồng lao động "
            "không xác định thời hạn phải báo trước ít nhất 45 ngày."
        )
    )
    assert (c.law, c.article, c.clause, c.point, c.status) == ("45/2019/QH14", 35, 1, "a", "ok")
    assert c.title == "Quyền đơn phương chấm dứt hợp đồng lao động của người lao động"
    assert c.supported and c.support > 0.9 and c.mark == "✓"
    assert c.describe().startswith("✓ điểm a khoản 1 Điều 35 Bộ luật Lao động 2019 — Quyền đơn phương")


def test_the_same_claim_under_the_wrong_article_is_not_supported(verifier):
    c = _one(
        verifier.check(
            "Theo Điều 139 Bộ luật Lao động 2019, người lao động làm việc theo hợp đồng lao động không xác định "
            "thời hạn phải báo trước ít nhất 45 ngày khi đơn phương chấm dứt hợp đồng."
        )
    )
    assert c.status == "ok" and c.title == "Nghỉ thai sản"
    assert not c.supported and c.support < 0.75 and c.mark == "✗"


def test_hallucinated_units_and_unchecked_laws(verifier):
    checks = verifier.check(
        "Theo Điều 999 Bộ luật Lao động 2019, khoản 9 Điều 35 BLLĐ và điểm z khoản 1 Điều 35 BLLĐ; "
        "Điều 5 Luật Đất đai 2024 cũng vậy."
    )
    assert [(c.article, c.status, c.mark) for c in checks] == [
        (999, "no_article", "✗"),
        (35, "no_clause", "✗"),
        (35, "no_point", "✗"),
        (5, "outside_corpus", "?"),
    ]
    assert checks[3].law_name == "Luật Đất đai 2024" and not checks[3].checked
    s = summarize_checks([checks, []])
    assert (s["answers"], s["citations"], s["checked"], s["answers_with_hallucination"]) == (2, 4, 3, 1)
    assert s["hallucinated_rate"] == 1.0 and s["hallucinated_article_rate"] == pytest.approx(1 / 3)
    assert s["supported_rate"] == 0.0
    assert summarize_checks([[]])["hallucinated_rate"] is None  # nothing checked: no rate, not 0


def test_which_law_a_citation_belongs_to(verifier):
    # named before it in the sentence
    assert (
        _one(verifier.check("Theo Bộ luật Hình sự 2015, tại Điều 12 quy định tuổi.")).law == "100/2015/QH13"
    )
    # a document number after it
    assert _one(verifier.check("Điều 12 Bộ luật số 100/2015/QH13 quy định.")).law == "100/2015/QH13"
    # none in the answer: the context's article of that number, else the first law it names
    ctx = "Điều 12 Bộ luật Hình sự 2015 (100/2015/QH13). Tuổi chịu trách nhiệm hình sự\n…"
    assert _one(verifier.check("Theo Điều 12, người từ đủ 16 tuổi phải chịu.", ctx)).law == "100/2015/QH13"
    ctx2 = "Bộ luật Dân sự 2015 quy định …; Bộ luật Lao động 2019 cũng vậy."
    assert _one(verifier.check("Theo Điều 20, …", ctx2)).law == "91/2015/QH13"
    c = _one(verifier.check("Theo Điều 20, …"))
    assert (c.status, c.law, c.mark) == ("no_law", None, "?")


def test_repeated_citations_are_checked_once_with_all_their_sentences(verifier):
    checks = verifier.check(
        "Theo Điều 105 Bộ luật Lao động 2019, thời giờ làm việc bình thường không quá 08 giờ trong 01 ngày. "
        "Cũng theo Điều 105 Bộ luật Lao động 2019, không quá 48 giờ trong 01 tuần."
    )
    c = _one(checks)
    assert "08 giờ" in c.claim and "48 giờ" in c.claim and "Điều 105" not in c.claim


def test_eval_scores_carry_the_corpus_checks(verifier):
    from legaltune.evaluate.score import score_answers
    from legaltune.generate.answers import Answer

    refs = [
        "Theo điểm a khoản 1 Điều 35 Bộ luật Lao động 2019, ít nhất 45 ngày.",
        "Theo Điều 105 Bộ luật Lao động 2019, không quá 08 giờ một ngày.",
    ]
    answers = [
        Answer("Theo khoản 1 Điều 35 Bộ luật Lao động 2019, phải báo trước ít nhất 45 ngày.", 10, True),
        Answer("Theo Điều 999, làm việc 08 giờ.", 8, True),  # law from the context: BLLĐ has no Điều 999
    ]
    contexts = ["Câu hỏi về nghỉ việc", "Điều 105 Bộ luật Lao động 2019 (45/2019/QH14). Thời giờ làm việc"]
    summary, per = score_answers(answers, refs, verifier=verifier, contexts=contexts)
    # exact: {k1 Đ35} vs {a k1 Đ35} and {Đ999} vs {Đ105}: nothing matches; article level: Đ35 matches
    assert summary["citation_f1"] == 0.0
    assert (
        summary["citation_precision_article_level"] == 0.5 and summary["citation_recall_article_level"] == 0.5
    )
    assert summary["citation_f1_article_level"] == 0.5 and per[0]["citation_f1_article_level"] == 1.0
    assert summary["hallucinated_rate"] == 0.5 and summary["hallucinated_article_rate"] == 0.5
    assert summary["supported_rate"] == 0.5  # the Điều 35 answer says what Điều 35 says
    assert [c["mark"] for c in per[0]["citation_checks"]] == ["✓"]
    assert per[1]["citation_checks"][0]["status"] == "no_article"
    assert per[1]["citation_checks"][0]["law"] == "45/2019/QH14"
    assert "citation_check" not in score_answers(answers, refs)[0]  # no verifier: no corpus rates


def test_eval_scores_extract_each_texts_citations_once_and_split_by_context(verifier, monkeypatch):
    from legaltune.evaluate import score
    from legaltune.generate.answers import Answer

    refs = [
        "Theo điểm a khoản 1 Điều 35 Bộ luật Lao động 2019, ít nhất 45 ngày.",
        "Theo Điều 105 Bộ luật Lao động 2019, không quá 08 giờ một ngày.",
        "Theo Điều 105 Bộ luật Lao động 2019, không quá 48 giờ một tuần.",
    ]
    answers = [
        Answer("Theo khoản 1 Điều 35 Bộ luật Lao động 2019, phải báo trước ít nhất 45 ngày.", 10, True),
        Answer("Theo Điều 999 Bộ luật Lao động 2019, làm việc 08 giờ.", 8, True),
        Answer("Theo Điều 105 Bộ luật Lao động 2019, không quá 48 giờ.", 8, True),
    ]
    seen: list[str] = []
    real = score.extract_citations

    def counting(text):
        seen.append(text)
        return real(text)

    monkeypatch.setattr(score, "extract_citations", counting)
    summary, _ = score.score_answers(answers, refs, verifier=verifier, corpus_rows=[0])
    # exact and article level, per answer, over the set and per context group: one extraction each
    assert sorted(seen) == sorted([a.text for a in answers] + refs)
    corpus, own = summary["by_context"]["corpus"], summary["by_context"]["own"]
    assert corpus["questions"] == 1 and own["questions"] == 2
    assert corpus["citation_f1_article_level"] == 1.0  # Đ35 for Đ35
    assert own["citation_f1_article_level"] == 0.5  # Đ999 for Đ105, Đ105 for Đ105
    assert own["hallucinated_rate"] == 0.5 and corpus["hallucinated_rate"] == 0.0
    # all asked with corpus text (or none): no groups to tell apart
    assert "by_context" not in score.score_answers(answers, refs, verifier=verifier, corpus_rows=[0, 1, 2])[0]
    assert "by_context" not in score.score_answers(answers, refs, verifier=verifier)[0]
