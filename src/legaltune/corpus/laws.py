"""Which law a text names, and where: document numbers, the corpus's law names, other law titles.

Searched in text already normalised by :func:`legaltune.text.citations.article_mentions`
(NFC, new-style tone marks), so positions line up with the article citations found there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from legaltune.corpus.model import Corpus
from legaltune.text.citations import DOCUMENT_NUMBER, canonical_document

# A law title that is not one of the corpus's names: "Luật Đất đai 2024", "Bộ luật Hình sự năm 1999",
# "Luật Trật tự, an toàn giao thông đường bộ 2024". A capital L (or "Bộ luật") and a year are required,
# so that "pháp luật lao động" is not taken for a law.
_OTHER_TITLE = re.compile(
    r"(?<!\w)(?:[Bb]ộ\s+luật|Luật)\s+(?:(?![Ll]uật\b)[^\W\d_]+,?\s+){1,10}?(?:năm\s+)?(?:19|20)\d\d(?!\d)"
)
_SENTENCE_END = re.compile(r"[.;!?](?=\s|$)|\n")


@dataclass(frozen=True)
class LawMention:
    start: int
    end: int
    key: (
        str | None
    )  # the law's key: a document number (in the corpus or not), a corpus law; None: a title only
    text: str


def _alias_pattern(corpus: Corpus) -> tuple[re.Pattern[str] | None, dict[str, str]]:
    aliases = corpus.aliases()
    if not aliases:
        return None, aliases
    names = sorted(
        aliases, key=len, reverse=True
    )  # longest first: "bộ luật tố tụng dân sự" before "… dân sự"
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(n) for n in names) + r")(?!\w)"), aliases


def law_mentions(text: str, corpus: Corpus) -> list[LawMention]:
    """Every law mention in ``text``, in reading order, overlapping ones resolved longest first."""
    found: list[LawMention] = []
    for m in DOCUMENT_NUMBER.finditer(text):
        found.append(
            LawMention(m.start(), m.end(), canonical_document(m["number"], m["year"], m["suffix"]), m[0])
        )
    pattern, aliases = _alias_pattern(corpus)
    if pattern is not None:
        for m in pattern.finditer(text.lower()):
            found.append(LawMention(m.start(), m.end(), aliases[m[0]], text[m.start() : m.end()]))
    kept: list[LawMention] = []
    for cand in sorted(found, key=lambda x: (-(x.end - x.start), x.start)):
        if all(cand.end <= k.start or cand.start >= k.end for k in kept):
            kept.append(cand)
    # other titles only where no number or corpus name is: "Luật này và Bộ luật Lao động 2019" names one law
    for m in _OTHER_TITLE.finditer(text):
        if all(m.end() <= k.start or m.start() >= k.end for k in kept):
            kept.append(LawMention(m.start(), m.end(), None, m[0]))
    return sorted(kept, key=lambda x: x.start)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence: split after . ; ! ? followed by a space, and at newlines."""
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        if text[start : m.end()].strip():
            spans.append((start, m.end()))
        start = m.end()
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans
