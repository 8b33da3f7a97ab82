"""Vietnamese text hygiene: Unicode form, tone-mark placement, segmentation underscores, newlines,
invisible control characters, and mojibake.

Pure Python (``unicodedata``, ``re`` and ftfy) so that it can run inside dataset preprocessing
without loading tokenizers or models. The mojibake check (VNI / TCVN3 read as Latin-1, UTF-8 read
as Windows-1252) is deliberately separate from :func:`clean`: cleaning never raises on content,
the caller decides what to do with a text that :func:`detect_legacy_encoding` flags (and knows the
file and line to report); only UTF-8 read as Windows-1252 can be repaired (``fix_mojibake``).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import asdict, dataclass
from typing import Literal

ToneStyle = Literal["old", "new"]

# The five tones as combining characters (NFD). Circumflex U+0302, breve U+0306 and horn U+031B
# change the vowel itself (a -> â, ă; o -> ơ) and are *not* tones: they never move.
_TONE_MARKS = frozenset("\u0300\u0301\u0303\u0309\u0323")
_BASE_VOWELS = "aăâeêioôơuưy"
_BASE_LETTERS = frozenset("abcdđeghiklmnopqrstuvxy" + "ăâêôơư")


def _vietnamese_letters() -> frozenset[str]:
    letters = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZđĐ")
    for vowel in _BASE_VOWELS:
        for tone in ("", *_TONE_MARKS):
            composed = unicodedata.normalize("NFC", vowel + tone)
            letters.update((composed, composed.upper()))
    return frozenset(letters)


_VI_LETTERS = _vietnamese_letters()
# Letters that only Vietnamese (among the texts we meet) writes: what marks a word as Vietnamese.
_VI_SPECIFIC = frozenset(ch for ch in _VI_LETTERS if not ch.isascii())

# Syllable = initial consonant? + vowel nucleus + final consonant?, matched on the lower-case,
# toneless NFC form. "qu" and "gi" are initials, so the u/i after them is never part of the
# nucleus ("quý" has nucleus "y", "gia" has "a"); "q" alone is not an initial.
_INITIALS = "ngh|ng|gh|gi|kh|nh|ph|th|tr|ch|qu|[bcdđghklmnprstvx]"
_NUCLEI = (
    "iêu yêu oai oao oay oeo uây uôi uya uyê uyu ươi ươu "
    "ai ao au ay âu ây eo êu ia iê iu oa oă oe oi oo ôi ơi ua uâ uê ui uô uơ uy ưa ưi ưu ươ yê "
    "a ă â e ê i o ô ơ u ư y"
).split()
_FINALS = "ch|ng|nh|[cmnpt]"
_SYLLABLE = re.compile(rf"(?P<ini>{_INITIALS})?(?P<nuc>{'|'.join(_NUCLEI)})(?P<fin>{_FINALS})?")
# Nuclei whose tone position differs between the old and new orthography (when open).
_MOVABLE_NUCLEI = frozenset({"oa", "oe", "uy"})

_WORD = re.compile(r"[^\W\d_]+")


def nfc(text: str) -> str:
    """Return ``text`` in Unicode NFC (precomposed letters, as keyboards and most corpora emit)."""
    return unicodedata.normalize("NFC", text)


def _split_tone(word: str) -> tuple[str, str] | None:
    """Split ``word`` into (toneless NFC word, tone mark or ""); None if it carries several tones."""
    decomposed = unicodedata.normalize("NFD", word)
    tones = [ch for ch in decomposed if ch in _TONE_MARKS]
    if len(tones) > 1:
        return None
    base = unicodedata.normalize("NFC", "".join(ch for ch in decomposed if ch not in _TONE_MARKS))
    return base, (tones[0] if tones else "")


def _parse_syllable(toneless_lower: str) -> re.Match[str] | None:
    if not toneless_lower or any(ch not in _BASE_LETTERS for ch in toneless_lower):
        return None
    return _SYLLABLE.fullmatch(toneless_lower)


def _is_syllable(word: str) -> bool:
    """True when ``word`` is phonotactically a Vietnamese syllable (at most one tone)."""
    split = _split_tone(word)
    return split is not None and _parse_syllable(split[0].lower()) is not None


def is_vietnamese_word(word: str) -> bool:
    """True for a Vietnamese syllable written with a letter only Vietnamese uses (``luật``, ``đó``)."""
    word = nfc(word)
    return any(ch in _VI_SPECIFIC for ch in word) and _is_syllable(word)


@functools.lru_cache(
    maxsize=65536
)  # a text repeats few distinct syllables; the law corpus retones in 1/10 the time
def _retone_word(word: str, style: ToneStyle) -> str:
    split = _split_tone(word)
    if split is None or not split[1]:
        return word
    base, tone = split
    match = _parse_syllable(base.lower())
    if match is None or match["nuc"] not in _MOVABLE_NUCLEI:
        return word
    # Open syllable: old style marks the first vowel (hòa), new style the second (hoà).
    # Closed syllable (hoàn, huýt, hoạch): the second vowel in both styles.
    second = style == "new" or bool(match["fin"])
    index = match.start("nuc") + (1 if second else 0)
    toned = unicodedata.normalize("NFC", base[index] + tone)
    return base[:index] + toned + base[index + 1 :]


def _retone_counted(text: str, style: ToneStyle) -> tuple[str, int]:
    if style not in ("old", "new"):
        raise ValueError(f"tone style must be 'old' or 'new', got {style!r}")
    changed = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal changed
        word = match.group()
        new = _retone_word(word, style)
        changed += new != word
        return new

    return _WORD.sub(replace, nfc(text)), changed


def normalize_tone_marks(text: str, style: ToneStyle = "new") -> str:
    """Place tone marks consistently in syllables whose nucleus is ``oa``, ``oe`` or ``uy``.

    Rules (the only place where the two Vietnamese orthographies disagree):

    * open syllable (no final consonant): ``style="old"`` marks the first vowel
      (hòa, khỏe, thúy, ủy), ``style="new"`` the second (hoà, khoẻ, thuý, uỷ);
    * closed syllable (final c, ch, m, n, ng, nh, p, t): the second vowel in both styles
      (hoàn, hoạch, huýt, huỳnh), so a misplaced "hòan" is corrected to "hoàn";
    * after the initials "qu" and "gi" the u/i belongs to the consonant, so "qua", "quý",
      "quà", "gia" have a one-vowel nucleus and are never touched;
    * every other syllable (triphthongs such as "hoài", "khuya", "ngoéo"; non-Vietnamese
      words; words with two tones) is left exactly as it is. Letter case is preserved.

    The input is NFC-normalised first and the output is NFC.
    """
    return _retone_counted(text, style)[0]


# A run of letters (with any combining marks, so NFD text works too) joined by single underscores.
_LETTER_RUN = r"(?:[^\W\d_][\u0300-\u036f]*)+"
_SEGMENTED = re.compile(rf"(?<![\w\u0300-\u036f]){_LETTER_RUN}(?:_{_LETTER_RUN})+(?![\w\u0300-\u036f])")


def _strip_underscores_counted(text: str) -> tuple[str, int]:
    replaced = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal replaced
        parts = match.group().split("_")
        if not any(ch in _VI_SPECIFIC for part in parts for ch in nfc(part)):
            return match.group()
        replaced += len(parts) - 1
        return " ".join(parts)

    return _SEGMENTED.sub(replace, text), replaced


def strip_word_segmentation(text: str) -> str:
    """Undo pyvi / VnCoreNLP word segmentation: ``Bộ_luật Lao_động`` -> ``Bộ luật Lao động``.

    A token is rewritten only when it is letters joined by *single* underscores and at least
    one of its parts contains a Vietnamese-specific letter (ă, â, đ, ê, ô, ơ, ư or a toned
    vowel). So ``max_seq_length``, ``__init__``, ``_private``, ``a__b`` and ``lora_r16`` stay
    as they are. The price of being conservative: segmented words written only with plain
    ASCII letters (``kinh_doanh``, ``tham_gia``) are also kept, because they cannot be told
    apart from identifiers; in practice they sit next to accented words in the same sentence
    and are rare enough not to matter for training text.
    """
    return _strip_underscores_counted(text)[0]


# --- legacy encodings -----------------------------------------------------------------------
# VNI-Windows writes a base ASCII vowel followed by one byte per diacritic combination; read as
# cp1252 those bytes become Latin-1 letters ("chaøo" = chào, "Vieät" = Việt).
_VNI_MARK_BYTES = (
    ("ùÙ", "\u0301"),
    ("øØ", "\u0300"),
    ("ûÛ", "\u0309"),
    ("õÕ", "\u0303"),
    ("ïÏ", "\u0323"),
    ("âÂ", "\u0302"),
    ("áÁ", "\u0302\u0301"),
    ("àÀ", "\u0302\u0300"),
    ("åÅ", "\u0302\u0309"),
    ("ãÃ", "\u0302\u0303"),
    ("äÄ", "\u0302\u0323"),
    ("êÊ", "\u0306"),
    ("éÉ", "\u0306\u0301"),
    ("èÈ", "\u0306\u0300"),
    ("úÚ", "\u0306\u0309"),
    ("üÜ", "\u0306\u0303"),
    ("ëË", "\u0306\u0323"),
)
_VNI_MARKS = {byte: combining for chars, combining in _VNI_MARK_BYTES for byte in chars}
# Bytes that stand for a whole letter: ơ and ư (which then take tone bytes), toned i, ỵ, đ.
_VNI_LETTERS = dict(zip("ôöíìæóòîñÔÖÍÌÆÓÒÎÑ", "ơưíìỉĩịỵđƠƯÍÌỈĨỊỴĐ", strict=True))
_VNI_TONABLE = frozenset("aeiouyAEIOUYôöÔÖ")

# TCVN3 (ABC) has one byte per lower-case letter; capitals with tones need a second font.
_TCVN3 = dict(
    zip(
        "µ¸¶·¹¨»¾¼½Æ©ÇÊÈÉË®ÌÐÎÏÑªÒÕÓÔÖ×ÝØÜÞßãáâä«åèæçé¬êíëìîïóñòô\u00ad\u2212õøö÷ùúýûüþ¡¢§£¤¥¦",
        "àáảãạăằắẳẵặâầấẩẫậđèéẻẽẹêềếểễệìíỉĩịòóỏõọôồốổỗộơờớởỡợùúủũụưưừứửữựỳýỷỹỵĂÂĐÊÔƠƯ",
        strict=True,
    )
)


def _decode_vni(word: str) -> str:
    out: list[str] = []
    after_vowel = False
    for ch in word:
        if after_vowel and ch in _VNI_MARKS:
            out.append(_VNI_MARKS[ch])
            after_vowel = False  # one mark byte per vowel: it already carries both diacritics
        else:
            out.append(_VNI_LETTERS.get(ch, ch))
            after_vowel = ch in _VNI_TONABLE
    return unicodedata.normalize("NFC", "".join(out))


def _decode_tcvn3(word: str) -> str:
    return "".join(_TCVN3.get(ch, ch) for ch in word)


# Bytes that never occur in Unicode Vietnamese: only they count as evidence.
_VNI_STRONG = (frozenset(_VNI_MARKS) | frozenset(_VNI_LETTERS)) - _VI_LETTERS
_TCVN3_STRONG = frozenset(_TCVN3) - _VI_LETTERS
# At least one hit must use a byte that ordinary European text does not put in a word like this:
# for VNI not the diaeresis (French "haï", "Loïc"), for TCVN3 a non-letter (Swedish "på" is å).
_VNI_CORE = _VNI_STRONG - frozenset("ïëÏË")
_TCVN3_CORE = frozenset(ch for ch in _TCVN3_STRONG if not "\u00c0" <= ch <= "\u00ff")
_ENCODINGS = (
    ("VNI", _decode_vni, _VNI_STRONG, _VNI_CORE),
    ("TCVN3", _decode_tcvn3, _TCVN3_STRONG, _TCVN3_CORE),
)
_TOKEN_SPLIT = re.compile(r"[\s!-/:-@\[-`{-~]+")  # whitespace and ASCII punctuation
_MIN_DISTINCT_HITS = 2
_MIN_HIT_RATIO = 0.1
DOUBLE_UTF8 = "UTF-8 read as Windows-1252"


def _double_encoded_utf8(text: str) -> bool:
    """UTF-8 bytes decoded as Windows-1252/Latin-1 and saved again (``Bá»™ luáº­t`` for ``Bộ luật``):
    ftfy finds the mis-decoding, and undoing it must give Vietnamese letters."""
    import ftfy.badness

    if not ftfy.badness.is_bad(text):
        return False
    fixed = _fix_encoding(text)
    return fixed != text and any(ch in _VI_SPECIFIC for ch in fixed if ch not in text)


def _fix_encoding(text: str) -> str:
    import ftfy

    return ftfy.fix_encoding(text)


def detect_legacy_encoding(text: str) -> str | None:
    """Return ``"VNI"`` or ``"TCVN3"`` when ``text`` looks like that legacy Vietnamese encoding
    mis-decoded as Latin-1 / cp1252, :data:`DOUBLE_UTF8` when it is UTF-8 decoded as
    Windows-1252/Latin-1 (the commonest Vietnamese mojibake), else None.

    A word is a *hit* for an encoding when it contains an ASCII letter and a byte of that
    encoding that Unicode Vietnamese never uses (VNI ``ø ï ä ñ``..., TCVN3 ``¸ µ Ö ®``...),
    and decoding it with that encoding's table yields a valid Vietnamese syllable. The text is
    flagged when it has at least two distinct hits, hits make up at least 10% of the words,
    and one hit uses a byte that ordinary European words cannot explain (see ``_VNI_CORE`` and
    ``_TCVN3_CORE``). This keeps ordinary Vietnamese, English, legal numbers ("45/2019/QH14")
    and French/Spanish/German/Nordic text at None; a single garbled word is not enough.
    """
    if _double_encoded_utf8(text):
        return DOUBLE_UTF8
    tokens = [tok for tok in _TOKEN_SPLIT.split(text) if tok]
    if not tokens:
        return None
    best: tuple[int, str] | None = None
    for name, decode, strong, core in _ENCODINGS:
        hits: list[str] = []
        has_core = False
        for token in tokens:
            if not any(ch in strong for ch in token) or not any(
                ch.isascii() and ch.isalpha() for ch in token
            ):
                continue
            decoded = decode(token)
            if decoded != token and _is_syllable(decoded):
                hits.append(decoded.casefold())
                has_core = has_core or any(ch in core for ch in token)
        if (
            has_core
            and len(set(hits)) >= _MIN_DISTINCT_HITS
            and len(hits) / len(tokens) >= _MIN_HIT_RATIO
            and (best is None or len(hits) > best[0])
        ):
            best = (len(hits), name)
    return best[1] if best else None


# --- newlines and the cleaning pipeline ------------------------------------------------------
def _fix_newlines_counted(text: str) -> tuple[str, int, int]:
    bom = int(text.startswith("\ufeff"))
    text = text[bom:]
    carriage_returns = text.count("\r")  # one per CRLF or lone CR
    if carriage_returns:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text, carriage_returns, bom


def fix_newlines(text: str) -> str:
    """Turn CRLF and lone CR line ends into LF and strip one leading byte-order mark."""
    return _fix_newlines_counted(text)[0]


# Zero-width characters and bidirectional controls: invisible, never meaningful in legal text, and
# they split words into different tokens ("lu\u200bật"). A BOM inside a text (U+FEFF) is one too.
_INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]")


def _strip_invisible_counted(text: str) -> tuple[str, int]:
    return _INVISIBLE.subn("", text)


@dataclass
class HygieneReport:
    """What :func:`clean` changed, accumulated over every call that received this report."""

    texts: int = 0  # texts passed through clean()
    changed: int = 0  # texts that came out different from what went in
    nfc: int = 0  # texts whose NFC form differed (typically NFD input from macOS or PDFs)
    tone: int = 0  # syllables whose tone mark was moved
    underscores: int = 0  # segmentation underscores turned into spaces
    newlines: int = 0  # CRLF / CR line ends turned into LF
    bom: int = 0  # leading byte-order marks removed
    invisible: int = 0  # zero-width and bidi control characters removed
    mojibake: int = 0  # texts repaired from UTF-8 read as Windows-1252 (fix_mojibake)

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (for logs and JSON run summaries)."""
        return asdict(self)


def clean(
    text: str,
    *,
    nfc: bool = True,
    tone_style: ToneStyle | None = None,
    strip_underscores: bool = False,
    fix_mojibake: bool = False,
    report: HygieneReport | None = None,
) -> str:
    """Apply the hygiene steps to ``text`` and count the changes into ``report``.

    Order: mojibake repair first (``fix_mojibake``: ftfy undoes UTF-8 read as Windows-1252; it
    needs the text as it was mis-decoded), then BOM/newlines and invisible controls (structural,
    independent of letters), then NFC (tone placement and the Vietnamese-letter test need composed
    letters), then tone marks, then segmentation underscores. ``tone_style`` implies NFC even with ``nfc=False``, because tone placement is
    defined on composed text. Never raises on content (mojibake is checked separately with
    :func:`detect_legacy_encoding`); only an unknown ``tone_style`` raises ``ValueError``.
    """
    original = text
    repaired = False
    if fix_mojibake and _double_encoded_utf8(text):
        text, repaired = _fix_encoding(text), True
    text, newlines, bom = _fix_newlines_counted(text)
    text, invisible = _strip_invisible_counted(text)
    nfc_changed = False
    if nfc or tone_style is not None:
        composed = unicodedata.normalize("NFC", text)
        nfc_changed, text = composed != text, composed
    tone = 0
    if tone_style is not None:
        text, tone = _retone_counted(text, tone_style)
    underscores = 0
    if strip_underscores:
        text, underscores = _strip_underscores_counted(text)
    if report is not None:
        report.texts += 1
        report.changed += text != original
        report.nfc += nfc_changed
        report.tone += tone
        report.underscores += underscores
        report.newlines += newlines
        report.bom += bom
        report.invisible += invisible
        report.mojibake += repaired
    return text
