"""The citation field of a served answer: each legal reference in it, checked against a corpus when one is given.

A checker is any callable ``answer text -> list of citation dicts``; the server adds its result to a
response as ``citations`` (the last chunk of a stream carries it). Without a corpus the references
are extracted only (``verified: null``); a corpus-backed checker (issue 19's ``legaltune.corpus``)
fills ``verified`` (the article exists), ``title`` and ``supported`` through the same interface.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

CitationChecker = Callable[[str], list[dict[str, Any]]]


def extract_only(answer: str) -> list[dict[str, Any]]:
    """The references of an answer (articles with clause/point, document numbers), unverified."""
    from legaltune.evaluate.citations import extract_citations

    found = sorted(
        extract_citations(answer), key=lambda c: (c.kind, c.document or "", c.article or 0, c.clause or 0)
    )
    return [{**asdict(c), "verified": None} for c in found]
