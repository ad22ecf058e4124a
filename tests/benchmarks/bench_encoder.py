"""Encoder throughput: workembed's batched MiniLM encoder versus sentence-transformers on the same texts.

Texts are the labels and descriptions of the built-in ESCO sample (short and long inputs). Both run the same
weights on the CPU with the same batch size and sequence limit; the figure is texts per second (best of 3).
"""

from __future__ import annotations

import time

import numpy as np

from workembed.models import Encoder
from workembed.taxonomy import BUILTIN, load_esco

BATCH_SIZE = 64
MAX_LENGTH = 128
REPEATS = 3


def _best_rate(fn, n_texts: int) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n_texts / best


def run() -> dict[str, object]:
    from sentence_transformers import SentenceTransformer

    taxonomy = load_esco(BUILTIN)
    skills = sorted(taxonomy.skills.values(), key=lambda s: s.uri)
    labels = [s.preferred_label for s in skills]
    descriptions = [s.description for s in skills if s.description][:512]

    ours = Encoder("minilm", batch_size=BATCH_SIZE, max_length=MAX_LENGTH)
    reference = SentenceTransformer(str(ours.path), device="cpu")
    reference.max_seq_length = MAX_LENGTH

    figures: dict[str, object] = {"batch_size": BATCH_SIZE, "max_length": MAX_LENGTH}
    for name, texts in (("labels", labels), ("descriptions", descriptions)):
        ours_rate = _best_rate(lambda t=texts: ours.embed(t), len(texts))
        ref_rate = _best_rate(
            lambda t=texts: reference.encode(t, batch_size=BATCH_SIZE, normalize_embeddings=True), len(texts)
        )
        diff = float(
            np.abs(ours.embed(texts[:64]) - reference.encode(texts[:64], normalize_embeddings=True)).max()
        )
        figures[name] = {
            "texts": len(texts),
            "workembed_texts_per_s": round(ours_rate, 1),
            "sentence_transformers_texts_per_s": round(ref_rate, 1),
            "ratio": round(ours_rate / ref_rate, 3),
            "max_abs_diff": diff,
        }
    return figures
