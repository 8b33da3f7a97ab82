"""Answers scored against their references: text overlap, citation P/R/F1 and, with the law corpus,
the citations checked (hallucinated, supported); the same scores apart by where the context came from.

Each answer's and each reference's citations are extracted once; every citation score (per answer,
summed over the set, exact and article level, per context group) is computed from those sets.
"""

from __future__ import annotations

import statistics
from typing import Any

from legaltune.evaluate.citations import aggregate_set_scores, set_scores
from legaltune.evaluate.metrics import bleu, exact_match, rouge_l, syllables, token_f1
from legaltune.text.citations import Citation, extract_citations

_Cited = tuple[set[Citation], set[Citation]]  # (the answer's citations, the reference's)


def score_answers(
    answers: list[Any],
    refs: list[str],
    *,
    verifier: Any = None,
    contexts: list[str] | None = None,
    corpus_rows: list[int] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary, per-question rows) for answers against references.

    With a ``verifier`` (:class:`legaltune.corpus.verify.Verifier`) every citation of every answer is
    also resolved against the law corpus (``contexts``: the conversation each answer replies to, where
    a citation naming no law takes its law from): hallucinated and supported rates beside P/R/F1.
    ``corpus_rows``: the questions asked with law text from the corpus; when some but not all were,
    the summary's ``by_context`` holds the main scores of both groups apart (needs a verifier).
    """
    texts = [a.text for a in answers]
    cited: list[_Cited] = [
        (extract_citations(a.text), extract_citations(ref)) for a, ref in zip(answers, refs, strict=True)
    ]
    per = []
    checks = []
    for i, (a, ref) in enumerate(zip(answers, refs, strict=True)):
        c = set_scores(*cited[i])
        ca = set_scores(*cited[i], level="article")
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
    cit = aggregate_set_scores(cited)
    cit_article = aggregate_set_scores(cited, level="article")
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
        if corpus_rows and len(corpus_rows) < len(per):
            summary["by_context"] = _by_context(per, cited, checks, corpus_rows)
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


def _by_context(
    per: list[dict[str, Any]], cited: list[_Cited], checks: list[list[Any]], corpus_rows: list[int]
) -> dict[str, Any]:
    """The main scores apart for questions asked with law text from the corpus (data.context_fill)
    and for those that kept their own context, from the answers already scored."""
    from legaltune.corpus.verify import summarize_checks

    out = {}
    inside = set(corpus_rows)
    for name, rows in (
        ("corpus", sorted(inside)),
        ("own", [i for i in range(len(per)) if i not in inside]),
    ):
        exact = aggregate_set_scores([cited[i] for i in rows])
        article = aggregate_set_scores([cited[i] for i in rows], level="article")
        check = summarize_checks([checks[i] for i in rows])
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
