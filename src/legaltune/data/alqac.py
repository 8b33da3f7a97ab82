"""Questions of legal retrieval sets in the ALQAC / Zalo layout, joined with their corpus into
legal QA records.

Corpus: ``[{law_id, articles: [{article_id, title?, text}]}]``, read by
:mod:`legaltune.corpus.alqac`. Questions: records with ``relevant_articles: [{law_id, article_id}]`` (and an ``answer`` when the set has one). The relevant
articles' text becomes the record's context; a question naming an article absent from the corpus
is an error naming both.
"""

from __future__ import annotations

from typing import Any

from legaltune.data.schemas import RecordError


def join_question(
    rec: dict[str, Any], corpus: dict[tuple[str, str], dict[str, Any]], corpus_path: str
) -> dict[str, Any]:
    """A legal QA record whose context is the text of the question's relevant articles."""
    question = rec.get("question", rec.get("text"))
    if not isinstance(question, str) or not question.strip():
        raise RecordError("question", "missing (ALQAC questions use 'question' or 'text')")
    rel = rec.get("relevant_articles")
    if not isinstance(rel, list) or not rel:
        raise RecordError("relevant_articles", "must be a non-empty list of {law_id, article_id}")
    parts, cites = [], []
    for i, ref in enumerate(rel):
        if not isinstance(ref, dict) or "law_id" not in ref or "article_id" not in ref:
            raise RecordError(f"relevant_articles[{i}]", "needs law_id and article_id")
        key = (str(ref["law_id"]), str(ref["article_id"]))
        art = corpus.get(key)
        if art is None:
            raise RecordError(
                f"relevant_articles[{i}]",
                f"article {key[1]} of law {key[0]} is not in the corpus {corpus_path}; "
                "check the ids or use the matching corpus file",
            )
        title = (
            f" {art['title'].strip()}" if isinstance(art.get("title"), str) and art["title"].strip() else ""
        )
        parts.append(f"Điều {key[1]} ({key[0]}){title}: {art['text'].strip()}")
        cites.append(f"Điều {key[1]} ({key[0]})")
    context = "\n".join(parts)
    answer = rec.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        # Retrieval sets (Zalo) carry no answer: the target is to name and quote the governing articles.
        answer = "Căn cứ " + ", ".join(cites) + ":\n" + "\n".join(p.split(": ", 1)[1] for p in parts)
    # relevant_articles stays: context_fill and citation checks look the articles up in the law corpus
    return {"question": question, "answer": answer, "context": context, "relevant_articles": rel}
