"""Word-boundary-aware, case-insensitive multi-pattern matching of ESCO labels (Aho–Corasick)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import ahocorasick


@dataclass(frozen=True)
class LabelMatch:
    uri: str
    label: str
    start: int
    end: int


class LabelMatcher:
    """Finds every label occurrence in a text; labels of at most ``min_label_chars`` match case-sensitively.

    A match must start and end on a word boundary ("R" does not match in "React", "C++" matches in "C++ and").
    Of overlapping matches, the longest wins ("machine learning" over "learning").
    """

    def __init__(self, labels: Iterable[tuple[str, str]], min_label_chars: int = 3):
        self._automaton = ahocorasick.Automaton()
        self._min = min_label_chars
        entries: dict[str, dict[str, str]] = {}  # lower-cased label → {uri: label as first written}
        for label, uri in labels:
            label = " ".join(label.split())
            if label:
                entries.setdefault(label.lower(), {}).setdefault(uri, label)
        for key, values in entries.items():
            self._automaton.add_word(key, (key, tuple(values.items())))
        self.size = len(entries)
        if self.size:
            self._automaton.make_automaton()

    def find(self, text: str) -> list[LabelMatch]:
        if not self.size:
            return []
        lowered = text.lower()
        if len(lowered) != len(text):  # rare case folding that changes length: offsets would drift
            lowered = "".join(ch.lower() if len(ch.lower()) == 1 else ch for ch in text)
        candidates = []
        for end_index, (key, values) in self._automaton.iter(lowered):
            start, end = end_index - len(key) + 1, end_index + 1
            if not (_boundary(text, start - 1) and _boundary(text, end)):
                continue
            for uri, label in values:
                if len(label) <= self._min and text[start:end] != label:
                    continue
                candidates.append(LabelMatch(uri, label, start, end))
        return _longest_first(candidates)


def _boundary(text: str, index: int) -> bool:
    return index < 0 or index >= len(text) or not (text[index].isalnum() or text[index] == "_")


def _longest_first(matches: list[LabelMatch]) -> list[LabelMatch]:
    chosen: list[LabelMatch] = []
    taken: list[tuple[int, int]] = []
    for match in sorted(matches, key=lambda m: (-(m.end - m.start), m.start, m.uri)):
        span = (match.start, match.end)
        if any(span == t for t in taken) or not any(match.start < e and s < match.end for s, e in taken):
            chosen.append(match)
            taken.append(span)
    return sorted(chosen, key=lambda m: (m.start, m.uri))
