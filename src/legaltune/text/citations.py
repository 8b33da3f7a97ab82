"""Vietnamese legal citations in text: article references and document numbers, with positions.

Two kinds of reference are extracted:

* article references in the standard Vietnamese order, smallest unit first:
  "Điều 35", "khoản 1 Điều 3", "điểm a khoản 2 Điều 5", "Khoản 2, Điều 5",
  "khoản 1 và khoản 2 Điều 36", "khoản 1, 2 Điều 36", "Điều 35, Điều 36", "Điều 35, 36";
* document numbers "45/2019/QH14", "15/2020/NĐ-CP", "01/2021/TT-BLĐTBXH", ...

Article references are not tied to a document (``document=None``): which law "Điều 5" belongs
to is usually stated far away in the sentence, and guessing would make scores noisy. Clauses
or points that never reach an article number ("khoản 2 Điều này", "Điều 5 khoản 2" written in
reverse order) are dropped rather than guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from legaltune.text.vietnamese import normalize_tone_marks

CitationKind = Literal["article", "document"]


@dataclass(frozen=True)
class Citation:
    """One legal reference. ``article`` kind fills article/clause/point, ``document`` kind fills document."""

    kind: CitationKind
    article: int | None = None
    clause: int | None = None
    point: str | None = None
    document: str | None = None


# Later values of a list ("khoản 1, 2 và 3") must be followed by something that can end a
# reference, so that "Điều 5, 10 ngày sau" does not invent an article 10.
_LIST_END = (
    r"(?=\s*(?:$|[^\w\s]|(?:và|hoặc|hay|của|tại|thuộc|theo|điều|khoản|điểm|luật|bộ|nghị|thông"
    r"|quyết|pháp|văn|này|nêu|trên)\b))"
)
_SEP = r"\s*(?:,|;|\bvà\b|\bhoặc\b|\bhay\b)\s*"
_NUM = r"\d+(?!\d)"
_LETTER = r"[a-zđ](?![^\W\d_])"  # a single point letter, not the start of a word
_MENTION = re.compile(
    rf"\b(?:điểm\s+(?P<points>{_LETTER}(?:{_SEP}{_LETTER}{_LIST_END})*)"
    rf"|khoản\s+(?P<clauses>{_NUM}(?:{_SEP}{_NUM}{_LIST_END})*)"
    rf"|điều\s+(?P<articles>{_NUM}(?:{_SEP}{_NUM}{_LIST_END})*))",
    re.IGNORECASE,
)
_SPLIT_VALUES = re.compile(_SEP, re.IGNORECASE)
# What may stand between two mentions of one chain ("khoản 1 và khoản 2 của Điều 36").
_CONNECTOR = re.compile(r"[\s,;]*(?:(?:và|hoặc|hay|của|tại|thuộc|theo)\b[\s,;]*)*", re.IGNORECASE)

DOCUMENT_NUMBER = re.compile(
    r"(?<![\w/])(?P<number>\d{1,4})/(?P<year>\d{4})/"
    r"(?P<suffix>[A-Za-zĐđÐ]{2,}\d*(?:[-‐–][A-Za-zĐđÐ]{2,}\d*)*)(?![\w/-])"
)


def canonical_document(number: str, year: str, suffix: str) -> str:
    """``9/2023/tt–btc`` -> ``09/2023/TT-BTC``: official form, two-digit number, Đ kept."""
    suffix = re.sub(r"[‐–]", "-", suffix).upper().replace("Ð", "Đ")  # Ð: the look-alike Eth
    return f"{int(number):02d}/{year}/{suffix}"


@dataclass(frozen=True)
class Mention:
    """An article citation and where it is written: ``start`` opens its chain ("điểm a khoản 1 …"),
    ``end`` closes the article number that completes it."""

    citation: Citation
    start: int
    end: int


def _article_mentions(text: str) -> list[Mention]:
    found: list[Mention] = []
    points: list[str] = []  # waiting for their clause (or directly an article)
    clauses: list[tuple[int | None, tuple[str, ...]]] = []  # waiting for their article
    last_end: int | None = None
    chain_start = 0
    for match in _MENTION.finditer(text):
        if last_end is not None and not _CONNECTOR.fullmatch(text, last_end, match.start()):
            points, clauses = [], []  # the chain broke before an article number: unresolvable
        if not points and not clauses:
            chain_start = match.start()
        last_end = match.end()
        if match["points"]:
            points.extend(v.lower() for v in _SPLIT_VALUES.split(match["points"]))
        elif match["clauses"]:
            clauses.extend((int(v), tuple(points)) for v in _SPLIT_VALUES.split(match["clauses"]))
            points = []
        else:
            first, *others = (int(v) for v in _SPLIT_VALUES.split(match["articles"]))
            for clause, clause_points in clauses or [(None, tuple(points))]:
                for point in clause_points or (None,):
                    found.append(Mention(Citation("article", first, clause, point), chain_start, match.end()))
            found.extend(Mention(Citation("article", a), chain_start, match.end()) for a in others)
            points, clauses = [], []
    return found


def article_mentions(text: str) -> tuple[str, list[Mention]]:
    """(normalised text, article citations with their positions in it), in reading order.

    The text is normalised as :func:`extract_citations` does (NFC, new-style tone marks), so
    positions refer to the returned text, which callers search for the law a citation names.
    """
    text = normalize_tone_marks(text, "new")
    return text, _article_mentions(text)


def extract_citations(text: str) -> set[Citation]:
    """All article and document citations in ``text`` (NFC/NFD, any case, either tone style)."""
    text = normalize_tone_marks(text, "new")  # NFC too, so NFD input and "khỏan" typos match
    documents = {
        Citation("document", document=canonical_document(m["number"], m["year"], m["suffix"]))
        for m in DOCUMENT_NUMBER.finditer(text)
    }
    return {m.citation for m in _article_mentions(text)} | documents
