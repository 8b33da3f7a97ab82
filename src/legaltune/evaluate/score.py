"""Answers scored against their references: text overlap, citation P/R/F1 and, with the law corpus,
the citations checked (hallucinated, supported); the same scores apart by where the context came from."""

from __future__ import annotations

import statistics
from typing import Any

from legaltune.evaluate.citations import aggregate_citation_scores, citation_scores
from legaltune.evaluate.metrics import bleu, exact_match, rouge_l, syllables, token_f1


def score_answers(
    answers: list[Any],
    refs: list[str],
    *,
    verifier: Any = None,
    contexts: list[str] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary, per-question rows) for answers against references.

    With a ``verifier`` (:class:`legaltune.corpus.verify.Verifier`) every citation of every answer is
    also resolved against the law corpus (``contexts``: the conversation each answer replies to, where
    a citation naming no law takes its law from): hallucinated and supported rates beside P/R/F1.
    """
    texts = [a.text for a in answers]
    per = []
    checks = []
    for i, (a, ref) in enumerate(zip(answers, refs, strict=True)):
        c = citation_scores(a.text, ref)
        ca = citation_scores(a.text, ref, level="article")
        row = {
            "answer": a.text,
            "new_tokens": a.new_tokens,
            "syllables": len(syllables(a.text)),
            "stopped": a.stopped,
            "exact_match": exact_match(a.text, ref),
            "token_f1": round(token_f1(a.text, ref), 4),
            "rouge_l": round(rouge_l(a.text, ref), 4),
            "citation_precision": c["precision"],
            "citation_recall": c["recall"],
            "citation_f1": c["f1"],
            "citation_f1_article_level": ca["f1"],
        }
        if verifier is not None:
            found = verifier.check(a.text, contexts[i] if contexts else "")
            checks.append(found)
            row["citation_checks"] = [x.to_dict() for x in found]
        per.append(row)
    cit = aggregate_citation_scores(zip(texts, refs, strict=True))
    cit_article = aggregate_citation_scores(zip(texts, refs, strict=True), level="article")
    summary = {
        "exact_match": statistics.fmean(p["exact_match"] for p in per),
        "token_f1": statistics.fmean(p["token_f1"] for p in per),
        "rouge_l": statistics.fmean(p["rouge_l"] for p in per),
        "bleu": bleu(texts, refs),
        "citation_precision": cit["precision"],
        "citation_recall": cit["recall"],
        "citation_f1": cit["f1"],
        # clause/point ignored: the right article with a wrong clause counts
        "citation_precision_article_level": cit_article["precision"],
        "citation_recall_article_level": cit_article["recall"],
        "citation_f1_article_level": cit_article["f1"],
        "mean_new_tokens": statistics.fmean(p["new_tokens"] for p in per),
        "mean_syllables": statistics.fmean(p["syllables"] for p in per),
        "stopped_rate": statistics.fmean(float(p["stopped"]) for p in per),
        "citations": cit,
        "citations_article_level": cit_article,
    }
    if verifier is not None:
        from legaltune.corpus.verify import summarize_checks

        check = summarize_checks(checks)
        summary |= {
            "hallucinated_rate": check["hallucinated_rate"],
            "hallucinated_article_rate": check["hallucinated_article_rate"],
            "supported_rate": check["supported_rate"],
            "citation_check": check,
        }
    return summary, per


_SUBSET_KEYS = (
    "citation_f1",
    "citation_precision_article_level",
    "citation_recall_article_level",
    "citation_f1_article_level",
    "hallucinated_rate",
    "supported_rate",
    "token_f1",
)


def by_context(per: list[dict[str, Any]], refs: list[str], corpus_rows: list[int]) -> dict[str, Any]:
    """The main scores apart for questions asked with law text from the corpus (data.context_fill)
    and for those that kept their own context, from the answers already scored."""
    from legaltune.corpus.verify import CitationCheck, summarize_checks

    out = {}
    inside = set(corpus_rows)
    for name, rows in (
        ("corpus", sorted(inside)),
        ("own", [i for i in range(len(per)) if i not in inside]),
    ):
        pairs = [(per[i]["answer"], refs[i]) for i in rows]
        exact = aggregate_citation_scores(pairs)
        article = aggregate_citation_scores(pairs, level="article")
        checks = [
            [
                CitationCheck(**{k: v for k, v in c.items() if k not in ("mark", "line")})
                for c in per[i]["citation_checks"]
            ]
            for i in rows
        ]
        check = summarize_checks(checks)
        summary = {
            "questions": len(rows),
            "citation_f1": exact["f1"],
            "citation_precision_article_level": article["precision"],
            "citation_recall_article_level": article["recall"],
            "citation_f1_article_level": article["f1"],
            "hallucinated_rate": check["hallucinated_rate"],
            "supported_rate": check["supported_rate"],
            "token_f1": statistics.fmean(per[i]["token_f1"] for i in rows) if rows else None,
        }
        out[name] = {k: summary[k] for k in ("questions", *_SUBSET_KEYS)}
    return out
