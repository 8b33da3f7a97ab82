"""The citation field of a served answer: each legal reference in it, checked against the law corpus.

A checker is any callable ``(answer, context) -> list of citation dicts``; with ``--citations`` the
server adds its result to each response as ``citations`` (the last chunk of a stream carries it).
``corpus_checker`` resolves every citation against legaltune's Vietnamese law corpus (exists or
hallucinated, the article's title, support of the answer's claim; ``legaltune.corpus.verify``), taking
the law from the question when the answer names none.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from legaltune.generate.load import Generator

CitationChecker = Callable[[str, str], list[dict[str, Any]]]


def corpus_checker(gen: Generator) -> CitationChecker:
    """Citation checks against the corpus the run names (built now, not on the first request)."""
    verifier = gen.verifier()

    def check(answer: str, context: str) -> list[dict[str, Any]]:
        return [{**c.to_dict(), "line": c.describe()} for c in verifier.check(answer, context)]

    return check
