"""Grounding sentences to ESCO skills and titles to ESCO occupations.

Lexical: ESCO preferred and alternative labels found in the sentence (:class:`LabelMatcher`). Dense: the
sentence (title) embedding against cached ESCO label embeddings, keeping the top-k above a threshold. Both run
only for languages the encoder supports (``ground.encoder.languages``); other ads pass through with
``grounding = "skipped_language"`` and never become edges.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from workembed.data.config import GroundConfig
from workembed.data.lexical import LabelMatcher
from workembed.data.records import is_reject, to_table
from workembed.taxonomy import Taxonomy

logger = logging.getLogger(__name__)

GROUNDED = "grounded"
SKIPPED_LANGUAGE = "skipped_language"


@dataclass
class LabelSpace:
    """Concept labels and (optionally) their embeddings: row ``i`` of ``vectors`` belongs to ``uris[i]``."""

    uris: list[str]
    labels: list[str]
    kind: str = "skill_name"  # input type of the labels (a projection model's side)
    vectors: np.ndarray | None = None

    def fingerprint(self, model: str) -> str:
        digest = hashlib.sha1(f"{model}\x1f{self.kind}".encode())
        for uri, label in zip(self.uris, self.labels, strict=True):
            digest.update(f"{uri}\x1f{label}\x1e".encode())
        return digest.hexdigest()[:20]


def skill_space(taxonomy: Taxonomy, alt_labels: bool = False) -> LabelSpace:
    skills = sorted(taxonomy.skills.values(), key=lambda s: s.uri)
    pairs = [(s.uri, s.preferred_label) for s in skills]
    if alt_labels:
        pairs += [(s.uri, alt) for s in skills for alt in s.alt_labels]
    return LabelSpace([u for u, _ in pairs], [label for _, label in pairs])


def occupation_space(taxonomy: Taxonomy, alt_labels: bool = True) -> LabelSpace:
    occupations = sorted(taxonomy.occupations.values(), key=lambda o: o.uri)
    pairs = [(o.uri, o.preferred_label) for o in occupations]
    if alt_labels:
        pairs += [(o.uri, alt) for o in occupations for alt in o.alt_labels if alt != o.preferred_label]
    return LabelSpace([u for u, _ in pairs], [label for _, label in pairs], kind="job_title")


def embed_space(space: LabelSpace, config: GroundConfig) -> LabelSpace:
    """Fill ``space.vectors`` from the on-disk cache, or embed the labels once and cache them."""
    from workembed.models import Encoder

    cache = Path(config.cache_dir).expanduser() / f"{space.fingerprint(config.encoder.model)}.npy"
    if cache.is_file():
        space.vectors = np.load(cache)
        return space
    logger.info(
        "embedding %d ESCO labels with %s (cached in %s)", len(space.labels), config.encoder.model, cache
    )
    encoder = Encoder(
        config.encoder.model, batch_size=config.encoder.batch_size, max_length=config.encoder.max_length
    )
    space.vectors = encoder.embed(space.labels, space.kind)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, space.vectors)
    return space


def top_matches(scores: np.ndarray, uris: list[str], k: int, threshold: float) -> list[tuple[str, float]]:
    """Best ``k`` distinct concepts with score ≥ ``threshold`` (a concept's best label counts)."""
    best: dict[str, float] = {}
    for index in np.argsort(-scores)[: k * 8]:
        if scores[index] < threshold:
            break
        uri = uris[index]
        if uri not in best:
            best[uri] = float(scores[index])
            if len(best) == k:
                break
    return list(best.items())


class Grounder:
    """Ray Data callable: adds ``sentence_skills``, ``occupation_uri/score`` and ``grounding`` to ads."""

    def __init__(
        self,
        config: GroundConfig,
        skill_labels: list[tuple[str, str]],
        skills: LabelSpace,
        occupations: LabelSpace,
    ):
        self._config = config
        self._languages = set(config.encoder.languages)
        self._matcher = LabelMatcher(skill_labels, config.min_label_chars) if config.lexical else None
        self._skills = skills
        self._occupations = occupations
        self._encoder = None
        if config.dense:
            from workembed.models import Encoder

            self._encoder = Encoder(
                config.encoder.model,
                batch_size=config.encoder.batch_size,
                max_length=config.encoder.max_length,
                device=config.encoder.device,
            )

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        ads = [row for row in rows if not is_reject(row)]
        for row in ads:
            row["grounding"] = GROUNDED if row["language"] in self._languages else SKIPPED_LANGUAGE
        grounded = [row for row in ads if row["grounding"] == GROUNDED]
        sentences = [s for row in grounded for s in row["sentences"] or []]
        lexical = [self._lexical(s) for s in sentences] if self._matcher else [[] for _ in sentences]
        dense_sentences = self._encoder is not None and self._config.dense_sentences
        dense = self._dense_skills(sentences) if dense_sentences else [[] for _ in sentences]
        titles = self._dense_titles([row["title"] or "" for row in grounded])
        position = 0
        for row, (occupation, score) in zip(grounded, titles, strict=True):
            matches = []
            for _ in row["sentences"] or []:
                matches.append(_merge(lexical[position], dense[position]))
                position += 1
            row["sentence_skills"] = matches
            row["occupation_uri"], row["occupation_score"] = occupation, score
        return to_table(rows)

    def _lexical(self, sentence: str) -> list[tuple[str, float, str]]:
        return [(m.uri, 1.0, "lexical") for m in self._matcher.find(sentence)]

    def _dense_skills(self, sentences: list[str]) -> list[list[tuple[str, float, str]]]:
        if not sentences:
            return []
        scores = self._encoder.embed(sentences, "skill_sentence") @ self._skills.vectors.T
        return [
            [
                (uri, score, "dense")
                for uri, score in top_matches(
                    row, self._skills.uris, self._config.skill_top_k, self._config.skill_threshold
                )
            ]
            for row in scores
        ]

    def _dense_titles(self, titles: list[str]) -> list[tuple[str | None, float | None]]:
        if not self._encoder:
            return [(None, None)] * len(titles)
        present = [i for i, title in enumerate(titles) if title.strip()]
        results: list[tuple[str | None, float | None]] = [(None, None)] * len(titles)
        if present:
            scores = (
                self._encoder.embed([titles[i] for i in present], "job_title") @ self._occupations.vectors.T
            )
            for i, row in zip(present, scores, strict=True):
                best = top_matches(row, self._occupations.uris, 1, self._config.title_threshold)
                if best:
                    results[i] = best[0]
        return results


def _merge(lexical: list, dense: list) -> list[dict]:
    """One entry per skill: a lexical match (score 1) wins over a dense one."""
    merged: dict[str, dict] = {}
    for uri, score, method in [*lexical, *dense]:
        if uri not in merged:
            merged[uri] = {"uri": uri, "score": score, "method": method}
    return list(merged.values())
