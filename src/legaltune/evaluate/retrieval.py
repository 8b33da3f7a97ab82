"""Retrieval recall@k on questions whose cited article is in the corpus."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from legaltune.corpus.search import ArticleSearch
from legaltune.data.context import record_citations, record_question
from legaltune.records.read import read_records


@dataclass
class Recall:
    ks: list[int]
    questions: int = 0  # questions whose cited article is in the corpus
    skipped: int = 0  # records with no citation in the corpus (not measured)
    hits: dict[int, int] = field(default_factory=dict)
    scoped: bool = False  # search only the cited article's law
    misses: list[dict[str, Any]] = field(default_factory=list)  # at the largest k
    by_file: dict[str, Recall] = field(default_factory=dict)  # the same counts per data file (split)

    def rate(self, k: int) -> float | None:
        return self.hits.get(k, 0) / self.questions if self.questions else None

    def count(self, hit_at: dict[int, bool]) -> None:
        self.questions += 1
        for k, hit in hit_at.items():
            self.hits[k] += hit

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "questions": self.questions,
            "skipped": self.skipped,
            "scoped_to_law": self.scoped,
            "recall": {f"@{k}": self.rate(k) for k in self.ks},
        }
        if self.by_file:
            out["by_file"] = {
                path: {
                    "questions": r.questions,
                    "skipped": r.skipped,
                    "recall": {f"@{k}": r.rate(k) for k in r.ks},
                }
                for path, r in self.by_file.items()
            }
        out["misses"] = self.misses
        return out


def measure_recall(
    files: list[str], search: ArticleSearch, ks: list[int], *, scope_to_law: bool = False
) -> Recall:
    """recall@k: the share of questions whose cited article is among the k best hits (any of them,
    for a question citing several). ``scope_to_law`` searches only the law the record cites."""
    ks = sorted(set(ks))
    out = Recall(ks, hits=dict.fromkeys(ks, 0), scoped=scope_to_law)
    corpus = search.corpus
    for path in files:
        part = out.by_file.setdefault(path, Recall(ks, hits=dict.fromkeys(ks, 0), scoped=scope_to_law))
        for loc, rec in read_records(path):
            cited = [c for c in record_citations(rec) if corpus.article(*c) is not None]
            question = record_question(rec)
            if not cited or not question:
                out.skipped += 1
                part.skipped += 1
                continue
            law = cited[0][0] if scope_to_law else None
            ranked = [(h.article.law, h.article.number) for h in search.search(question, ks[-1], law=law)]
            hit_at = {k: any(c in ranked[:k] for c in cited) for k in ks}
            out.count(hit_at)
            part.count(hit_at)
            if not any(c in ranked for c in cited):
                out.misses.append({"loc": loc, "question": question, "cited": cited, "top": ranked[:3]})
    return out
