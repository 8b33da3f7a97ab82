"""Legal retrieval corpora in the ALQAC / Zalo layout: ``[{law_id, articles: [{article_id, title?, text}]}]``."""

from __future__ import annotations

from typing import Any

from legaltune.records.read import DataError, read_records


def load_corpus(path: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(law_id, article_id) → article, from a corpus file."""
    index: dict[tuple[str, str], dict[str, Any]] = {}
    for loc, law in read_records(path):
        if "law_id" not in law or not isinstance(law.get("articles"), list):
            raise DataError(f"{loc}: a corpus entry needs 'law_id' and a list 'articles'")
        for j, art in enumerate(law["articles"]):
            if not isinstance(art, dict) or "article_id" not in art or not isinstance(art.get("text"), str):
                raise DataError(f"{loc}: articles[{j}] needs 'article_id' and a string 'text'")
            index[(str(law["law_id"]), str(art["article_id"]))] = art
    return index
