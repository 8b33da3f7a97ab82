"""Extraction and scoring of Vietnamese legal citations in answers.

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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from legaltune.data.vietnamese import normalize_tone_marks

CitationKind = Literal["article", "document"]
Level = Literal["exact", "article"]


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


def _project(citations: set[Citation], level: Level) -> set[Citation]:
    if level == "exact":
        return citations
    if level == "article":
        return {Citation("article", c.article) if c.kind == "article" else c for c in citations}
    raise ValueError(f"level must be 'exact' or 'article', got {level!r}")


def _scores(matched: int, n_pred: int, n_ref: int) -> dict[str, float | None]:
    if n_pred == 0 and n_ref == 0:
        return {"precision": None, "recall": None, "f1": None}
    precision = matched / n_pred if n_pred else None
    recall = matched / n_ref if n_ref else None
    if precision is None or recall is None or matched == 0:
        f1 = 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1}


def set_scores(
    pred: set[Citation], ref: set[Citation], *, level: Level = "exact"
) -> dict[str, float | int | None]:
    """:func:`citation_scores` of citations already extracted (``pred``: the answer's, ``ref``: the
    reference's), so that a caller scoring several ways extracts each text once."""
    pred_set, ref_set = _project(pred, level), _project(ref, level)
    matched = len(pred_set & ref_set)
    return {
        **_scores(matched, len(pred_set), len(ref_set)),
        "n_pred": len(pred_set),
        "n_ref": len(ref_set),
        "n_match": matched,
    }


def citation_scores(pred: str, ref: str, *, level: Level = "exact") -> dict[str, float | int | None]:
    """Precision, recall and F1 of the citations in ``pred`` against those in ``ref``.

    Sets are compared exactly (``level="exact"``: "khoản 1 Điều 3" does not match "Điều 3"),
    or after dropping clause and point (``level="article"``). Empty cases:

    * neither side cites anything: precision, recall and f1 are None (nothing to score);
    * only ``pred`` cites: precision 0.0, recall None, f1 0.0 (every citation is spurious);
    * only ``ref`` cites: precision None, recall 0.0, f1 0.0 (every citation is missed).

    Also returns the counts ``n_pred``, ``n_ref``, ``n_match``.
    """
    return set_scores(extract_citations(pred), extract_citations(ref), level=level)


def aggregate_set_scores(
    pairs: Iterable[tuple[set[Citation], set[Citation]]], *, level: Level = "exact"
) -> dict[str, float | int | None]:
    """:func:`aggregate_citation_scores` over citations already extracted (answer's, reference's)."""
    totals = dict.fromkeys(
        ("n_pairs", "n_refs_with_citations", "n_preds_with_citations", "n_pred", "n_ref", "n_match"), 0
    )
    for pred, ref in pairs:
        one = set_scores(pred, ref, level=level)
        totals["n_pairs"] += 1
        totals["n_refs_with_citations"] += one["n_ref"] > 0
        totals["n_preds_with_citations"] += one["n_pred"] > 0
        for key in ("n_pred", "n_ref", "n_match"):
            totals[key] += one[key]
    return {**_scores(totals["n_match"], totals["n_pred"], totals["n_ref"]), **totals}


def aggregate_citation_scores(
    pairs: Iterable[tuple[str, str]], *, level: Level = "exact"
) -> dict[str, float | int | None]:
    """Micro-averaged citation precision/recall/F1 over ``(pred, ref)`` pairs.

    Matches, predicted and reference citations are summed over all pairs before dividing, so
    answers with many citations weigh more; the empty cases follow :func:`citation_scores`.
    Also returns ``n_pairs``, ``n_refs_with_citations``, ``n_preds_with_citations`` and the
    summed counts ``n_pred``, ``n_ref``, ``n_match``.
    """
    extracted = ((extract_citations(pred), extract_citations(ref)) for pred, ref in pairs)
    return aggregate_set_scores(extracted, level=level)
