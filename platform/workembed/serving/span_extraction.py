"""Skill extraction with the matched text spans, and job-ad segmentation.

Per sentence with content tokens ``x_1..x_n`` (special tokens excluded, L2-normalised) and skill vectors
``y_1..y_S`` (L2-normalised), as in :mod:`workembed.retrieval.skill_extraction`:

- cosines ``C[i, j] = x_i · y_j``; match score ``score_j = Σ_i softmax_i(C[i, j] / τ) · C[i, j]``;
- candidates ``P = {j : score_j ≥ t}`` (``t`` the calibrated threshold);
- each token's best skill ``b_i = argmax_j C[i, j]`` with ``j`` over all skills (``among="all"``) or over
  ``P`` (``among="candidates"``); the redundancy filter keeps ``{j ∈ P : j = b_i for some i}``;
- the spans of a kept skill ``j``: the maximal runs of consecutive tokens with ``b_i = j``, each from its
  first token's start offset to its last token's end offset, widened to whole words (a span never starts
  or ends inside a run of letters and digits, so word pieces merge into their word); overlapping or
  touching spans of one skill merge.

Sentences are scored in blocks of at most :data:`TOKEN_BLOCK` tokens: one ``[tokens, S]`` matrix product
per block.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from workembed.retrieval.scoring import l2_normalize
from workembed.retrieval.skill_extraction import redundancy_filter, token_attention_scores

if TYPE_CHECKING:
    from workembed.models import TokenEmbeddings
    from workembed.models.extraction_settings import ExtractionSettings
    from workembed.serving.spaces import TargetSpace

TOKEN_BLOCK = 1024
"""Most tokens (summed over sentences) whose cosines against all skills are held at once."""


# ------------------------------------------------------------------------------------ job ads


def segment_ad(text: str) -> list[str]:
    """The sentences and list items of a job ad (HTML rendered, text cleaned, then split)."""
    from workembed.data.text import clean_text, html_to_text, split_sentences

    return split_sentences(clean_text(html_to_text(text)))


def locate_sentences(text: str, sentences: Sequence[str]) -> list[tuple[int, int] | None]:
    """Where each sentence lies in ``text`` (``(start, end)``; whitespace may differ), searched in order
    from the end of the previous match; None for a sentence that is not there verbatim (e.g. repaired or
    rendered from HTML)."""
    located: list[tuple[int, int] | None] = []
    cursor = 0
    for sentence in sentences:
        words = sentence.split()
        match = re.compile(r"\s+".join(map(re.escape, words))).search(text, cursor) if words else None
        if match is None:
            located.append(None)
        else:
            located.append((match.start(), match.end()))
            cursor = match.end()
    return located


# ---------------------------------------------------------------------------------------- spans


def word_span(sentence: str, start: int, end: int) -> tuple[int, int]:
    """``[start, end)`` widened so that it neither starts nor ends inside a run of letters and digits."""
    while 0 < start < len(sentence) and sentence[start - 1].isalnum() and sentence[start].isalnum():
        start -= 1
    while 0 < end < len(sentence) and sentence[end - 1].isalnum() and sentence[end].isalnum():
        end += 1
    return start, end


def token_runs(best: np.ndarray, skill: int) -> list[tuple[int, int]]:
    """Maximal runs ``[first, last]`` (inclusive token positions) where ``best == skill``."""
    positions = np.flatnonzero(best == skill)
    if positions.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(positions) > 1)
    starts = np.concatenate(([positions[0]], positions[breaks + 1]))
    ends = np.concatenate((positions[breaks], [positions[-1]]))
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


def skill_spans(
    sentence: str, offsets: Sequence[tuple[int, int]], best: np.ndarray, skill: int
) -> list[dict[str, Any]]:
    """The character spans of ``sentence`` covered by the runs of tokens whose best skill is ``skill``
    (``offsets[i]`` is content token ``i``'s span), widened to words and merged; in text order."""
    merged: list[list[int]] = []
    for first, last in token_runs(best, skill):
        start, end = word_span(sentence, offsets[first][0], offsets[last][1])
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [{"start": start, "end": end, "text": sentence[start:end]} for start, end in merged]


# ----------------------------------------------------------------------------------- extraction


def sentence_skills(
    sentence: str,
    offsets: Sequence[tuple[int, int]],
    cosines: np.ndarray,
    space: TargetSpace,
    settings: ExtractionSettings,
) -> list[dict[str, Any]]:
    """The kept skills of one sentence, best score first: ``{"id", "label", "score", "spans"}``.

    ``cosines`` is ``[n_content_tokens, len(space)]`` and ``offsets`` the content tokens' spans.
    """
    if cosines.shape[0] == 0:
        return []
    scores = token_attention_scores(cosines, settings.temperature)
    candidates = np.flatnonzero(scores >= settings.threshold)
    kept = redundancy_filter(cosines, candidates, settings.among)
    if kept.size == 0:
        return []
    if settings.among == "all":
        best = cosines.argmax(axis=1)
    else:
        best = candidates[cosines[:, candidates].argmax(axis=1)]
    order = kept[np.lexsort((kept, -scores[kept]))]
    return [
        {
            "id": space.ids[j],
            "label": space.labels[j],
            "score": float(scores[j]),
            "spans": skill_spans(sentence, offsets, best, int(j)),
        }
        for j in order
    ]


def extract_with_spans(
    sentences: Sequence[str],
    tokens: Sequence[TokenEmbeddings],
    skill_vectors: np.ndarray,
    space: TargetSpace,
    settings: ExtractionSettings,
    token_block: int = TOKEN_BLOCK,
) -> list[list[dict[str, Any]]]:
    """:func:`sentence_skills` of every sentence (``tokens[s]`` its encoder output, ``skill_vectors``
    ``[len(space), dim]`` L2-normalised), scoring blocks of sentences of at most ``token_block`` tokens
    with one matrix product each."""
    if len(tokens) != len(sentences):
        raise ValueError(f"{len(tokens)} token outputs for {len(sentences)} sentences")
    content = [[i for i, special in enumerate(t.special) if not special] for t in tokens]
    results: list[list[dict[str, Any]]] = []
    start = 0
    while start < len(sentences):
        stop, size = start + 1, len(content[start])
        while stop < len(sentences) and size + len(content[stop]) <= token_block:
            size += len(content[stop])
            stop += 1
        block = [tokens[s].vectors[content[s]] for s in range(start, stop)]
        cosines = l2_normalize(np.concatenate(block)) @ skill_vectors.T if size else None
        row = 0
        for s in range(start, stop):
            n = len(content[s])
            offsets = [tokens[s].offsets[i] for i in content[s]]
            matrix = cosines[row : row + n] if n else np.zeros((0, len(space)), dtype=np.float32)
            results.append(sentence_skills(sentences[s], offsets, matrix, space, settings))
            row += n
        start = stop
    return results
