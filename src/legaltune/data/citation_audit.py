"""A data file's citations checked against the corpus: the records' ``citation`` fields and the
citations written in their answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from legaltune.corpus.model import Corpus, law_key
from legaltune.corpus.verify import CitationCheck, Verifier, summarize_checks
from legaltune.records.read import read_records


@dataclass
class Audit:
    records: int = 0
    with_citation: int = 0  # records with a citation field
    in_corpus_law: int = 0  # … whose law is in the corpus
    article_exists: int = 0
    unit_exists: int = 0  # article, and the clause and point it names, exist
    problems: list[str] = field(default_factory=list)  # "loc: what is missing"
    answers: dict[str, Any] = field(default_factory=dict)  # summarize_checks over in-corpus records

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _answers(rec: dict[str, Any]) -> list[str]:
    if isinstance(rec.get("answer"), str):
        return [rec["answer"]]
    msgs = rec.get("messages") or []
    return [m["content"] for m in msgs if isinstance(m, dict) and m.get("role") == "assistant"]


def audit_files(files: list[str], corpus: Corpus, verifier: Verifier | None = None) -> Audit:
    """Check each record's ``citation`` {number, article, clause, point} and its answers' citations.

    An answer's citations that name no law are read as citing the record's law.
    """
    verifier = verifier or Verifier(corpus)
    out = Audit()
    checks: list[list[CitationCheck]] = []
    for path in files:
        for loc, rec in read_records(path):
            out.records += 1
            cit = rec.get("citation")
            if not isinstance(cit, dict) or not cit.get("number"):
                continue
            out.with_citation += 1
            law = corpus.laws.get(law_key(str(cit["number"])))
            if law is None:
                continue
            out.in_corpus_law += 1
            article = law.articles.get(str(cit.get("article")))
            clause = str(cit["clause"]) if cit.get("clause") is not None else None
            point = cit.get("point") or None
            if article is None:
                out.problems.append(f"{loc}: Điều {cit.get('article')} is not in {law.label}")
            else:
                out.article_exists += 1
                if clause is None and point is None or article.unit_text(clause, point) is not None:
                    out.unit_exists += 1
                else:
                    unit = f"điểm {point} khoản {clause}" if point else f"khoản {clause}"
                    out.problems.append(f"{loc}: {unit} Điều {article.number} is not in {law.label}")
            hint = f"{law.name} ({law.key})"
            for answer in _answers(rec):
                checks.append(verifier.check(answer, hint))
    out.answers = summarize_checks(checks)
    return out
