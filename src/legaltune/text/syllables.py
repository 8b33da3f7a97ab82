"""Syllables of Vietnamese text, and the canonical form answers are compared in.

Vietnamese writes one syllable per space-separated token, so text metrics, retrieval and
support checks all work on syllables of the normalised text, never on subword tokens."""

from __future__ import annotations

import unicodedata

from legaltune.text.vietnamese import ToneStyle, normalize_tone_marks

# One fixed style so that "hoà" (new orthography) and "hòa" (old) compare equal.
_TONE_STYLE: ToneStyle = "new"


def syllables(text: str) -> list[str]:
    """Split ``text`` into syllables: maximal runs of letters, combining marks and digits.

    Whitespace, punctuation (Unicode P*), symbols (S*) and the underscore all separate
    syllables, so "Bộ_luật", "45/2019/QH14" and "(điều 5)." split into their parts. Case
    and accents are kept; normalise first with :func:`normalize_answer` when comparing.
    """
    kept = "".join(ch if unicodedata.category(ch)[0] in "LMN" else " " for ch in text)
    return kept.split()


def normalize_answer(text: str) -> str:
    """Canonical form of an answer for comparison.

    NFC, tone marks in the new style (``normalize_tone_marks(style="new")``), lower case,
    punctuation/symbols/underscores replaced by spaces, whitespace collapsed to single spaces.
    Unlike SQuAD no articles are removed: Vietnamese has none that are safe to drop.
    """
    return " ".join(syllables(normalize_tone_marks(text.lower(), _TONE_STYLE)))
