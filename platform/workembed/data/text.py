"""Per-record text functions for job ads: HTML to text, cleaning, sentence splitting, language detection.

Everything here is pure and cheap to pickle, so it can run inside Ray Data ``map_batches``; the lingua
detector is built lazily on first use and never pickled.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

import blingfire
import ftfy
from inscriptis import get_text

from workembed.errors import ConfigError

_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")
_ENTITY = re.compile(r"&(?:[A-Za-z][A-Za-z0-9]{1,31}|#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6});")
_HSPACE = re.compile(r"[^\S\n]+")
_ZERO_WIDTH = re.compile(r"[\u200b\ufeff]")
_BLANK_LINES = re.compile(r"\n{3,}")
# Bullet or enumeration marker at the start of a line: "-", "*", "•", "–", "1.", "1)", "a)", "(a)".
_LEAD_MARKER = re.compile(r"^(?:[-*–—•·◦▪‣●]+\s*|\(?(?:\d{1,2}[.)]|[A-Za-z]\))\s+)")
# Bullets that separate items inside a line; "·" only after whitespace (French "salarié·e·s" stays whole).
_INLINE_BULLET = re.compile(r"\s*(?:[•◦▪‣●]|(?<!\S)·)\s*")
# A period glued to the next sentence ("team.Also"); the callback decides on letter case.
_GLUED = re.compile(r"(?<=\w)\.(?=\w)")


def looks_like_html(text: str) -> bool:
    """Whether ``text`` contains something that looks like an HTML tag or character entity."""
    return bool(_TAG.search(text) or _ENTITY.search(text))


def html_to_text(text: str) -> str:
    """Render HTML to plain text (list items, ``<br>`` and ``<p>`` on their own lines); else unchanged.

    Lines are stripped of the indentation inscriptis adds, so list items read ``* item`` / ``1. item``.
    """
    if not looks_like_html(text):
        return text
    rendered = get_text(text)
    return "\n".join(line.strip() for line in rendered.splitlines()).strip()


def clean_text(text: str) -> str:
    """Repair mojibake (ftfy), NFC-normalise, collapse horizontal whitespace, strip lines, keep newlines."""
    text = unicodedata.normalize("NFC", ftfy.fix_text(text))
    text = _ZERO_WIDTH.sub("", text)
    text = "\n".join(_HSPACE.sub(" ", line).strip() for line in text.splitlines())
    return _BLANK_LINES.sub("\n\n", text).strip()


def _unglue(text: str) -> list[str]:
    """Split at periods glued to a following sentence: lowercase/digit, ".", then a capitalised word."""
    pieces, start = [], 0
    for match in _GLUED.finditer(text):
        i = match.start()
        before, after = text[i - 1], text[i + 1]
        following = text[i + 2] if i + 2 < len(text) else ""
        if (before.islower() or before.isdigit()) and after.isupper() and not following.isupper():
            pieces.append(text[start : i + 1])
            start = i + 1
    pieces.append(text[start:])
    return pieces


def _wrap(text: str, max_chars: int) -> list[str]:
    """Split ``text`` into chunks of at most ``max_chars`` at whitespace; an over-long word stays whole."""
    chunks = []
    while len(text) > max_chars:
        cut = text.rfind(" ", 0, max_chars + 1)
        if cut <= 0:
            cut = text.find(" ", max_chars)
            if cut < 0:
                break
        chunks.append(text[:cut])
        text = text[cut + 1 :]
    chunks.append(text)
    return chunks


def _items(text: str) -> list[str]:
    """Lines and inline bullet items of ``text``, bullet and enumeration markers removed."""
    items = []
    for line in text.splitlines():
        for part in _INLINE_BULLET.split(line.strip()):
            part = _LEAD_MARKER.sub("", part.strip())
            if part:
                items.append(part)
    return items


def split_sentences(text: str, min_chars: int = 12, max_chars: int = 600) -> list[str]:
    """Split a job ad into sentences and list items.

    Lines and bullet items are split first (markers removed), then glued sentences ("team.Also") and
    blingfire sentences. Whitespace inside a sentence is collapsed; sentences longer than ``max_chars``
    are split at the last space before the bound; pieces shorter than ``min_chars`` are dropped.
    """
    sentences = []
    for item in _items(text):
        for piece in _unglue(item):
            for sentence in blingfire.text_to_sentences(piece).split("\n"):
                for chunk in _wrap(" ".join(sentence.split()), max_chars):
                    if len(chunk) >= min_chars:
                        sentences.append(chunk)
    return sentences


DEFAULT_LANGUAGES: tuple[str, ...] = ("en", "fr", "de", "pl", "nl", "es", "it", "pt")


class LanguageDetector:
    """ISO 639-1 language detection with lingua over a fixed set of languages, built lazily."""

    max_chars = 1000
    min_letters = 20

    def __init__(self, languages: Sequence[str] = DEFAULT_LANGUAGES, min_confidence: float = 0.5) -> None:
        from lingua import IsoCode639_1

        codes = []
        for code in languages:
            try:
                codes.append(IsoCode639_1.from_str(code.strip().lower()))
            except ValueError:
                raise ConfigError(f"unknown or unsupported language code: {code!r}") from None
        if len(codes) < 2:
            raise ConfigError("LanguageDetector needs at least two languages")
        self.languages = tuple(code.name.lower() for code in codes)
        self.min_confidence = min_confidence
        self._detector: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"languages": self.languages, "min_confidence": self.min_confidence}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.languages = state["languages"]
        self.min_confidence = state["min_confidence"]
        self._detector = None

    def _lingua(self) -> Any:
        if self._detector is None:
            from lingua import IsoCode639_1, LanguageDetectorBuilder

            codes = [IsoCode639_1.from_str(code) for code in self.languages]
            self._detector = LanguageDetectorBuilder.from_iso_codes_639_1(*codes).build()
        return self._detector

    def _prepare(self, text: str | None) -> str | None:
        """The first ``max_chars`` of ``text``, or None when it has fewer than ``min_letters`` letters."""
        head = (text or "")[: self.max_chars]
        return head if sum(ch.isalpha() for ch in head) >= self.min_letters else None

    def _pick(self, values: Sequence[Any]) -> str | None:
        if not values or values[0].value < self.min_confidence:
            return None
        return values[0].language.iso_code_639_1.name.lower()

    def detect(self, text: str) -> str | None:
        """The ISO 639-1 code of ``text``, or None if it is too short or the detection is not confident."""
        head = self._prepare(text)
        if head is None:
            return None
        return self._pick(self._lingua().compute_language_confidence_values(head))

    def detect_many(self, texts: Iterable[str]) -> list[str | None]:
        """``detect`` for many texts, using lingua's parallel batch API when available."""
        heads = [self._prepare(text) for text in texts]
        todo = [head for head in heads if head is not None]
        if not todo:
            return [None] * len(heads)
        detector = self._lingua()
        batch = getattr(detector, "compute_language_confidence_values_in_parallel", None)
        values = batch(todo) if batch else [detector.compute_language_confidence_values(h) for h in todo]
        results = iter(values)
        return [None if head is None else self._pick(next(results)) for head in heads]
