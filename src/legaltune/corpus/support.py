"""How well an article's text supports a claim: IDF-weighted syllable containment.

support(claim, article) = Σ idf(s) over the claim's distinct syllables s that occur in the
article (title + text) / Σ idf(s) over all the claim's distinct syllables, with
idf(s) = ln((N + 1) / (df(s) + 1)) + 1 over the N articles of the corpus. The claim is the
answer's sentences about the citation, with the citation and law names removed (they would
match any article of that law). Weighting by IDF keeps syllables that every article has
("người", "được", "của") from making any article look supportive.

The threshold :data:`SUPPORT_THRESHOLD` is calibrated by ``legaltune corpus calibrate``
(:mod:`legaltune.evaluate.support_calibration`) on the bundled sample; docs/corpus.md gives the numbers.
"""

from __future__ import annotations

import math
from collections import Counter

from legaltune.corpus.model import Article, Corpus
from legaltune.text.syllables import normalize_answer, syllables

# Chosen by `legaltune corpus calibrate` on the 164 bundled answers whose citation is in the corpus:
# the maximum of Youden's J averaged over random and nearest-article negatives (docs/corpus.md).
SUPPORT_THRESHOLD = 0.75


def _syllable_set(text: str) -> frozenset[str]:
    return frozenset(syllables(normalize_answer(text)))


class SupportScorer:
    """Support scores against one corpus (IDF computed once, article syllables cached)."""

    def __init__(self, corpus: Corpus, threshold: float = SUPPORT_THRESHOLD):
        self.threshold = threshold
        self._sets: dict[tuple[str, str], frozenset[str]] = {}
        df: Counter[str] = Counter()
        n = 0
        for article in corpus.articles():
            df.update(self._article_set(article))
            n += 1
        self._n = n
        self._df = df

    def _article_set(self, article: Article) -> frozenset[str]:
        key = (article.law, article.number)
        found = self._sets.get(key)
        if found is None:
            found = self._sets[key] = _syllable_set(f"{article.title} {article.text}")
        return found

    def idf(self, syllable: str) -> float:
        return math.log((self._n + 1) / (self._df.get(syllable, 0) + 1)) + 1.0

    def score(self, claim: str, article: Article) -> float | None:
        """Support in [0, 1]; None when the claim has no syllable left to check."""
        words = _syllable_set(claim)
        if not words:
            return None
        inside = self._article_set(article)
        total = sum(self.idf(w) for w in words)
        return sum(self.idf(w) for w in words if w in inside) / total

    def supported(self, score: float | None) -> bool:
        return score is not None and score >= self.threshold
