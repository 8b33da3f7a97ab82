"""Every citation of an answer resolved against the corpus: exists or hallucinated, and supported.

Which law an article citation belongs to is read from the text around it, in this order:

1. the first law named after it in the same sentence ("Điều 35 Bộ luật Lao động 2019",
   "Điều 5 Nghị định 145/2020/NĐ-CP", "Điều 3 Luật Đất đai 2024");
2. the last law named before it in the same sentence, then anywhere before it in the answer
   ("Theo Bộ luật Lao động 2019, … tại Điều 36");
3. the conversation the answer replies to (the question and its context): the law whose article
   of that number the context quotes, else the first corpus law the context names.

A citation whose law is in the corpus is *checked*: ``ok`` when the article (and the clause and
point it names) exists, else ``no_article`` / ``no_clause`` / ``no_point`` (hallucinated). One
whose law is named but not in the corpus is ``outside_corpus``; one with no law anywhere is
``no_law``. Neither is counted in the rates. An existing article *supports* the citation when the
support score of the answer's sentences about it reaches the calibrated threshold (support.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from legaltune.corpus.laws import LawMention, law_mentions, sentence_spans
from legaltune.corpus.model import Corpus
from legaltune.corpus.support import SupportScorer
from legaltune.text.citations import Citation, Mention, article_mentions

Status = Literal["ok", "no_article", "no_clause", "no_point", "outside_corpus", "no_law"]
HALLUCINATED: tuple[Status, ...] = ("no_article", "no_clause", "no_point")
STATUSES: tuple[Status, ...] = ("ok", *HALLUCINATED, "outside_corpus", "no_law")


@dataclass(frozen=True)
class CitationCheck:
    """One distinct citation of an answer and what the corpus says about it."""

    written: str  # as written in the answer: "điểm a khoản 1 Điều 35"
    article: int
    clause: int | None
    point: str | None
    law: str | None  # the law's key (document number), when one was found
    law_name: str | None  # its name, when the corpus has the law
    status: Status
    title: str | None  # the article's title when it exists
    support: float | None  # support score of the answer's sentences about it (existing articles)
    supported: bool
    claim: str = field(default="", repr=False)  # the answer's text the support score was computed on

    @property
    def checked(self) -> bool:
        return self.status in ("ok", *HALLUCINATED)

    @property
    def hallucinated(self) -> bool:
        return self.status in HALLUCINATED

    @property
    def mark(self) -> str:
        """✓ exists and supported, ✗ hallucinated or not supported, ? not checkable."""
        if not self.checked:
            return "?"
        return "✓" if self.status == "ok" and self.supported else "✗"

    def describe(self) -> str:
        """One line: mark, unit and law, the article's title, and the verdict."""
        unit = "".join(
            [f"điểm {self.point} " if self.point else "", f"khoản {self.clause} " if self.clause else ""]
        )
        law = self.law_name or self.law
        where = f"{unit}Điều {self.article}" + (f" {law}" if law else "")
        title = f" — {self.title}" if self.title else ""
        verdict = {
            "ok": f"support {self.support:.2f}" if self.support is not None else "no claim to check",
            "no_article": "no such article in this law (hallucinated)",
            "no_clause": f"the article has no khoản {self.clause} (hallucinated)",
            "no_point": f"khoản {self.clause} has no điểm {self.point} (hallucinated)",
            "outside_corpus": "law not in the corpus: not checked",
            "no_law": "no law named: not checked",
        }[self.status]
        if self.status == "ok" and not self.supported and self.support is not None:
            verdict += " (below the support threshold)"
        return f"{self.mark} {where}{title}: {verdict}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["claim"]
        return {**out, "mark": self.mark, "line": self.describe()}


def _bind(m: Mention, sentence: tuple[int, int], laws: list[LawMention]) -> LawMention | None:
    after = [x for x in laws if m.end <= x.start < sentence[1]]
    if after:
        return after[0]
    before = [x for x in laws if x.end <= m.start]
    inside = [x for x in before if x.start >= sentence[0]]
    return (inside or before or [None])[-1]


def _claims(text: str, mentions: list[Mention], sentences: list[tuple[int, int]]) -> list[str]:
    """The sentences each mention's claim is made of: its own, plus the uncited ones after it (or,
    before the first citation, those leading up to it)."""
    owner = [next(i for i, (s, e) in enumerate(sentences) if s <= m.start < e) for m in mentions]
    cited = sorted(set(owner))
    groups: dict[int, list[int]] = {i: [i] for i in cited}
    for i in range(len(sentences)):
        if i in groups or not cited:
            continue
        prev = [c for c in cited if c < i]
        groups[prev[-1] if prev else cited[0]].append(i)
    return [" ".join(text[sentences[j][0] : sentences[j][1]] for j in sorted(groups[o])) for o in owner]


def _blank(text: str, spans: Iterable[tuple[int, int]]) -> str:
    chars = list(text)
    for s, e in spans:
        chars[s:e] = " " * (e - s)
    return "".join(chars)


class Verifier:
    """Checks answers' citations against one corpus."""

    def __init__(self, corpus: Corpus, scorer: SupportScorer | None = None):
        self.corpus = corpus
        self.scorer = scorer or SupportScorer(corpus)

    def _context_hints(self, context: str) -> tuple[list[str], dict[int, str]]:
        """Corpus laws the context names (in order) and, per article number it quotes, that article's law."""
        text, mentions = article_mentions(context)
        laws = law_mentions(text, self.corpus)
        named = list(dict.fromkeys(x.key for x in laws if x.key in self.corpus.laws))
        sentences = sentence_spans(text) or [(0, len(text))]
        quoted: dict[int, str] = {}
        for m in mentions:
            sentence = next((s for s in sentences if s[0] <= m.start < s[1]), (0, len(text)))
            bound = _bind(m, sentence, laws)
            if bound is not None and bound.key in self.corpus.laws:
                quoted.setdefault(m.citation.article or 0, bound.key)  # type: ignore[arg-type]
        return named, quoted

    def check(self, answer: str, context: str = "") -> list[CitationCheck]:
        """The distinct article citations of ``answer``, each resolved and scored.

        ``context`` is the conversation the answer replies to (question, quoted articles): where the
        answer names no law for a citation, the law is taken from there.
        """
        text, mentions = article_mentions(answer)
        if not mentions:
            return []
        laws = law_mentions(text, self.corpus)
        sentences = sentence_spans(text)
        # the citations and law names come out of the claims: they would match every article of the law
        blanked = _blank(text, [(m.start, m.end) for m in mentions] + [(x.start, x.end) for x in laws])
        claims = _claims(blanked, mentions, sentences)
        hints: tuple[list[str], dict[int, str]] | None = None
        grouped: dict[tuple[str | None, Citation], tuple[Mention, LawMention | None, list[str]]] = {}
        for m, claim in zip(mentions, claims, strict=True):
            sentence = next(s for s in sentences if s[0] <= m.start < s[1])
            bound = _bind(m, sentence, laws)
            key = bound.key if bound is not None else None
            if bound is None:
                hints = hints if hints is not None else self._context_hints(context)
                named, quoted = hints
                key = quoted.get(m.citation.article or 0) or (named[0] if named else None)
            entry = grouped.setdefault((key, m.citation), (m, bound, []))
            if claim not in entry[2]:
                entry[2].append(claim)
        out = []
        for (key, c), (m, bound, claim_parts) in grouped.items():
            out.append(self._resolve(text, m, c, key, bound, " ".join(claim_parts)))
        return out

    def _resolve(
        self,
        text: str,
        m: Mention,
        c: Citation,
        key: str | None,
        bound: LawMention | None,
        claim: str,
    ) -> CitationCheck:
        law = self.corpus.laws.get(key) if key else None
        written = text[m.start : m.end]
        if law is None:
            status: Status = "outside_corpus" if (key or bound is not None) else "no_law"
            name = bound.text if bound is not None and key is None else None
            return CitationCheck(
                written, c.article or 0, c.clause, c.point, key, name, status, None, None, False, claim
            )
        article = law.articles.get(str(c.article))
        if article is None:
            status = "no_article"
        elif c.clause is not None and str(c.clause) not in article.clauses:
            status = "no_clause"
        elif c.point is not None and article.unit_text(str(c.clause), c.point) is None:
            status = "no_point"
        else:
            status = "ok"
        support = self.scorer.score(claim, article) if article is not None else None
        return CitationCheck(
            written,
            c.article or 0,
            c.clause,
            c.point,
            law.key,
            law.name,
            status,
            article.title if article is not None else None,
            round(support, 4) if support is not None else None,
            status == "ok" and self.scorer.supported(support),
            claim,
        )


def summarize_checks(per_answer: list[list[CitationCheck]]) -> dict[str, Any]:
    """Counts per status and the rates over checked citations (those whose law is in the corpus).

    ``hallucinated_rate``: checked citations whose article, clause or point does not exist;
    ``hallucinated_article_rate``: those whose article does not exist; ``supported_rate``: checked
    citations whose article exists and supports the answer. Rates are None when nothing was checked.
    """
    counts = dict.fromkeys(STATUSES, 0)
    supported = 0
    for checks in per_answer:
        for c in checks:
            counts[c.status] += 1
            supported += c.supported
    checked = sum(counts[s] for s in ("ok", *HALLUCINATED))
    hallucinated = sum(counts[s] for s in HALLUCINATED)

    def rate(n: int) -> float | None:
        return n / checked if checked else None

    return {
        "answers": len(per_answer),
        "answers_with_citations": sum(1 for a in per_answer if a),
        "answers_with_hallucination": sum(1 for a in per_answer if any(c.hallucinated for c in a)),
        "citations": sum(counts.values()),
        "checked": checked,
        "by_status": counts,
        "supported": supported,
        "hallucinated_rate": rate(hallucinated),
        "hallucinated_article_rate": rate(counts["no_article"]),
        "supported_rate": rate(supported),
    }
