"""Filling records' context with real law text: the cited article, or the top-k retrieved articles.

``data.context_fill: cited`` replaces a record's context with the text of the article its
``citation`` (``{number, article}``) or ALQAC ``relevant_articles`` name; ``retrieved`` with the
``data.context_top_k`` best BM25 articles for its question. A chat record gets the context in
its first user turn, as a legal QA record gets it before its question (``user_prompt``). Nothing
is silent: records whose citation is not in the corpus (they keep their own context), records
with no citation, retrieved contexts that miss the cited article and contexts cut to
``data.context_max_chars`` are all counted, with the first few record locations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from legaltune.corpus.model import Article, Corpus, law_key
from legaltune.corpus.search import ArticleSearch
from legaltune.data.schemas import user_prompt

FILL_MODES = ("none", "cited", "retrieved")
_EXAMPLES = 5


def article_context(article: Article, corpus: Corpus) -> str:
    """'Điều 35 Bộ luật Lao động 2019 (45/2019/QH14). <title>' and the article's text below it."""
    law = corpus.laws[article.law]
    head = f"Điều {article.number} {law.label}" + (f". {article.title}" if article.title else "")
    return f"{head}\n{article.text}"


def record_citations(rec: dict[str, Any]) -> list[tuple[str, str]]:
    """(law key, article id) pairs a record names: ``citation`` {number, article} or ALQAC ``relevant_articles``."""
    cit = rec.get("citation")
    if isinstance(cit, dict) and cit.get("number") and cit.get("article") is not None:
        return [(law_key(str(cit["number"])), str(cit["article"]))]
    rel = rec.get("relevant_articles")
    if isinstance(rel, list):
        return [
            (law_key(str(r["law_id"])), str(r["article_id"]))
            for r in rel
            if isinstance(r, dict) and "law_id" in r and "article_id" in r
        ]
    return []


def record_question(rec: dict[str, Any]) -> str | None:
    if isinstance(rec.get("question"), str):
        return rec["question"]
    msgs = rec.get("messages") or rec.get("conversations")
    if isinstance(msgs, list):
        for m in msgs:
            if isinstance(m, dict) and m.get("role", m.get("from")) in ("user", "human"):
                content = m.get("content", m.get("value"))
                return content if isinstance(content, str) else None
    return None


@dataclass
class ContextCounts:
    """What context filling did to one split."""

    mode: str
    filled: int = 0  # records whose context now comes from the corpus
    not_in_corpus: int = 0  # cited: the citation names a law or article the corpus lacks (own context kept)
    no_citation: int = 0  # cited: no citation to look up (own context kept)
    retrieval_checked: int = 0  # retrieved: records whose cited article is in the corpus
    retrieval_hits: int = 0  # … whose retrieved articles include it
    not_applicable: int = 0  # records of a schema without a context (text, alpaca)
    cut: int = 0  # contexts cut to data.context_max_chars
    examples: dict[str, list[str]] = field(default_factory=dict)  # first few locations per count

    def note(self, what: str, loc: str) -> None:
        setattr(self, what, getattr(self, what) + 1)
        seen = self.examples.setdefault(what, [])
        if len(seen) < _EXAMPLES:
            seen.append(loc)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ContextFiller:
    """Fills records' context from a corpus (``cited`` or ``retrieved``), counting what it did."""

    def __init__(self, corpus: Corpus, mode: str, *, top_k: int = 3, max_chars: int | None = None):
        if mode not in FILL_MODES[1:]:
            raise ValueError(f"context fill mode must be cited or retrieved, got {mode!r}")
        self.corpus = corpus
        self.mode = mode
        self.top_k = top_k
        self.max_chars = max_chars
        self._search: ArticleSearch | None = None

    @property
    def search(self) -> ArticleSearch:
        if self._search is None:
            self._search = ArticleSearch(self.corpus)  # ~2 s to index: only when retrieving
        return self._search

    def context_for(
        self,
        question: str,
        cited: list[tuple[str, str]],
        counts: ContextCounts,
        loc: str,
        *,
        mode: str | None = None,
    ) -> str | None:
        """The corpus context for a question (None: keep the record's own); ``mode`` overrides the filler's."""
        if (mode or self.mode) == "cited":
            if not cited:
                counts.note("no_citation", loc)
                return None
            articles = [self.corpus.article(law, art) for law, art in cited]
            if any(a is None for a in articles):
                counts.note("not_in_corpus", loc)
                return None
            text = "\n\n".join(article_context(a, self.corpus) for a in articles if a is not None)
        else:
            hits = self.search.search(question, self.top_k)
            in_corpus = [c for c in cited if self.corpus.article(*c) is not None]
            if in_corpus:
                counts.retrieval_checked += 1
                found = {(h.article.law, h.article.number) for h in hits}
                if any(c in found for c in in_corpus):
                    counts.retrieval_hits += 1
            text = "\n\n".join(article_context(h.article, self.corpus) for h in hits)
        counts.filled += 1
        if self.max_chars is not None and len(text) > self.max_chars:
            counts.note("cut", loc)
            cut = text.rfind("\n", 0, self.max_chars)
            text = text[: cut if cut > 0 else self.max_chars].rstrip()
        return text

    def fill(self, rec: dict[str, Any], schema: str, loc: str, counts: ContextCounts) -> dict[str, Any]:
        """A copy of ``rec`` with its context from the corpus (or ``rec`` itself when it keeps its own)."""
        if schema not in ("legal_qa", "alqac", "chat"):
            counts.note("not_applicable", loc)
            return rec
        question = record_question(rec)
        if not question:
            return rec  # malformed: the schema check reports it
        context = self.context_for(question, record_citations(rec), counts, loc)
        if context is None:
            return rec
        if schema != "chat":
            return {**rec, "context": context}
        key = "messages" if "messages" in rec else "conversations"
        msgs = [dict(m) for m in rec[key]]
        for m in msgs:
            if m.get("role", m.get("from")) in ("user", "human"):
                field_name = "content" if "content" in m else "value"
                m[field_name] = user_prompt(m[field_name], context)
                break
        return {**rec, key: msgs}
