"""Scoring of Vietnamese legal citations in answers: precision, recall and F1 of the citations an
answer makes against the reference's, exact (article, clause, point) or at article level.

The citations are read by :mod:`legaltune.text.citations`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from legaltune.text.citations import Citation, extract_citations

Level = Literal["exact", "article"]


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
