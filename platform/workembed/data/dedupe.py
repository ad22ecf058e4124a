"""Exact and near-duplicate removal of ads (MinHash LSH, datasketch), and exact dedupe of sentences.

Signatures are computed in parallel (:class:`MinHashSigner`); the index that decides which ad was seen first
(:class:`AdDeduplicator`) and the set of sentence hashes (:class:`SentenceDeduplicator`) live in one actor of
the stream. Their memory grows with the number of distinct ads / sentences. A duplicate ad is quarantined
with the id of the ad it repeats.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

from workembed.data.config import DedupeConfig
from workembed.data.records import is_reject, reject

_WORD = re.compile(r"\w+", re.UNICODE)
_SEED = 1
_SCHEME = "affine32"


def normalized_words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def shingles(text: str, size: int) -> set[bytes]:
    """Word n-grams of the lower-cased text (the whole text when it is shorter than ``size`` words)."""
    words = normalized_words(text)
    if len(words) <= size:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + size]).encode() for i in range(len(words) - size + 1)}


def ad_text(row: dict) -> str:
    return f"{row.get('title') or ''}\n{row.get('description') or ''}"


class MinHashSigner:
    """Sets the ``minhash`` signature of each ad (stateless: runs in parallel)."""

    def __init__(self, config: DedupeConfig):
        self._config = config

    def sign(self, rows: list[dict]) -> None:
        ads = [row for row in rows if not is_reject(row)]
        if self._config.near and ads:
            docs = [shingles(ad_text(row), self._config.shingle_words) for row in ads]
            for row, signature in zip(
                ads, MinHash.bulk(docs, num_perm=self._config.num_perm, seed=_SEED), strict=True
            ):
                row["minhash"] = signature.hashvalues.astype(np.uint64).tolist()


class AdDeduplicator:
    """Keeps the first ad of each exact or near-duplicate group; quarantines the others."""

    def __init__(self, config: DedupeConfig):
        self._config = config
        self._exact: dict[bytes, str] = {}
        self._lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm) if config.near else None

    def check(self, row: dict) -> dict:
        if is_reject(row):
            return row
        key = hashlib.sha1(" ".join(normalized_words(ad_text(row))).encode()).digest()
        first = self._exact.get(key)
        if first is not None:
            return self._duplicate(row, f"duplicate_exact: same text as {first}")
        self._exact[key] = row["ad_id"]
        if self._lsh is not None and row.get("minhash"):
            signature = LeanMinHash(
                seed=_SEED, hashvalues=np.asarray(row["minhash"], dtype=np.uint64), scheme=_SCHEME
            )
            similar = self._lsh.query(signature)
            if similar:
                return self._duplicate(row, f"duplicate_near: similar to {min(similar)}")
            if row["ad_id"] not in self._lsh:
                self._lsh.insert(row["ad_id"], signature)
        row["minhash"] = None
        return row

    @staticmethod
    def _duplicate(row: dict, reason: str) -> dict:
        context = {key: row.get(key) for key in ("source", "path", "record_index", "ad_id")}
        raw = "\n".join(filter(None, [row.get("title"), row.get("description")])).encode()
        return reject("dedupe", reason, raw, **context)


class SentenceDeduplicator:
    """Drops sentences whose normalised text was seen before (in any ad); counts them per ad."""

    def __init__(self) -> None:
        self._seen: set[bytes] = set()

    def dedupe(self, rows: list[dict]) -> None:
        for row in rows:
            if is_reject(row) or not row.get("sentences"):
                continue
            kept = []
            for sentence in row["sentences"]:
                key = hashlib.blake2b(" ".join(normalized_words(sentence)).encode(), digest_size=8).digest()
                if key not in self._seen:
                    self._seen.add(key)
                    kept.append(sentence)
            row["n_sentence_duplicates"] = len(row["sentences"]) - len(kept)
            row["sentences"] = kept
