"""Bytes of a data file to text: UTF-8 (with or without BOM), UTF-16/UTF-32, or a named codec.

A file that is none of these is an error naming the file, the line of the first bad byte, the
encoding it most likely is and the fix (a config line, or the iconv command that converts it),
never Python's bare "'utf-8' codec can't decode byte …".
"""

from __future__ import annotations

import codecs
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from legaltune.errors import UserError
from legaltune.text import vietnamese as vn

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),  # before UTF-16 LE, whose BOM is its prefix
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


class EncodingError(UserError, ValueError):
    """A data file that cannot be read as text in the expected encoding."""


@dataclass(frozen=True)
class Guess:
    name: str  # what to tell the user
    codec: str | None  # a Python codec that reads it (data.encoding), if one does
    iconv: str | None  # iconv's name for it, if iconv converts it


_CP1258 = Guess("Windows-1258 (Vietnamese)", "cp1258", "WINDOWS-1258")
_CP1252 = Guess("Windows-1252 / Latin-1", "cp1252", "WINDOWS-1252")
_LEGACY = {
    "VNI": Guess("VNI-Windows (a legacy Vietnamese font encoding)", None, None),
    "TCVN3": Guess("TCVN3 / ABC (a legacy Vietnamese font encoding)", None, None),
}


def _utf16_without_bom(raw: bytes) -> str | None:
    """'utf-16-le'/'utf-16-be' when every other byte is mostly NUL (ASCII-heavy UTF-16), else None."""
    sample = raw[:4096]
    if len(sample) < 4:
        return None
    even, odd = sample[0::2], sample[1::2]
    zeros_even, zeros_odd = even.count(0) / len(even), odd.count(0) / len(odd)
    if zeros_odd > 0.3 and zeros_even < 0.05:
        return "utf-16-le"
    if zeros_even > 0.3 and zeros_odd < 0.05:
        return "utf-16-be"
    return None


def _vietnamese_share(text: str) -> float:
    """Of the words with a non-ASCII letter, the share that are Vietnamese syllables."""
    words = [w for w in text.split() if any(not ch.isascii() and ch.isalpha() for ch in w)]
    if not words:
        return 0.0
    letters = ["".join(ch for ch in w if ch.isalpha()) for w in words]
    return sum(vn.is_vietnamese_word(w) for w in letters) / len(words)


def guess_encoding(raw: bytes) -> Guess:
    """The most likely encoding of bytes that are not UTF-8, for the error message."""
    as_1252 = raw.decode("cp1252", errors="replace")
    legacy = vn.detect_legacy_encoding(as_1252)
    if legacy in _LEGACY:
        return _LEGACY[legacy]
    as_1258 = unicodedata.normalize("NFC", raw.decode("cp1258", errors="replace"))
    if _vietnamese_share(as_1258) >= 0.8:
        return _CP1258
    return _CP1252


def decode_data(raw: bytes, path: str | Path, encoding: str = "auto") -> str:
    """Text of a data file. ``encoding`` auto: a BOM decides (UTF-8/16/32), else UTF-16 by its NUL
    bytes, else UTF-8; any other value is a Python codec name (data.encoding)."""
    if encoding != "auto":
        return _decode(raw, path, encoding, named=True)
    for bom, codec in _BOMS:
        if raw.startswith(bom):
            return _decode(raw[len(bom) :], path, codec)
    codec = _utf16_without_bom(raw)
    return _decode(raw, path, codec or "utf-8")


def _line_of(raw: bytes, offset: int) -> int:
    return raw.count(b"\n", 0, offset) + 1


def _decode(raw: bytes, path: str | Path, codec: str, named: bool = False) -> str:
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError as exc:
        line = _line_of(raw, exc.start)
        if named:
            raise EncodingError(
                f"{path}:{line}: not valid {codec} (byte 0x{raw[exc.start]:02x}); "
                "check data.encoding (auto reads UTF-8, UTF-16 and UTF-32)"
            ) from None
        if codec != "utf-8":
            raise EncodingError(
                f"{path}:{line}: not valid {codec} text (byte 0x{raw[exc.start]:02x})"
            ) from None
        raise EncodingError(_not_utf8_message(raw, path, line, raw[exc.start])) from None
    return text.removeprefix("\ufeff")  # a BOM a named codec (e.g. utf-16) left in


def _not_utf8_message(raw: bytes, path: str | Path, line: int, byte: int) -> str:
    guess = guess_encoding(raw)
    head = f"{path}:{line}: not UTF-8 (byte 0x{byte:02x}); it looks like {guess.name}"
    if guess.codec is None:
        return f"{head}; convert it to Unicode UTF-8 (e.g. with UniKey's converter) before training"
    out = Path(path).with_suffix(".utf8" + Path(path).suffix)
    return (
        f"{head}; set data.encoding: {guess.codec} to read it as that, "
        f"or convert it: iconv -f {guess.iconv} -t UTF-8 {path} -o {out}"
    )
