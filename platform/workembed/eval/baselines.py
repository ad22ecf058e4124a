"""Lexical baselines that rank a target space like an encoder does (same :class:`Ranking` out).

- ``bm25``: Okapi BM25 from ``bm25s`` (Lucene variant, k1 = 1.5, b = 0.75) over lower-cased word tokens
  (``\\w+``), no stemming, no stop words.
- ``tfidf``: character n-grams within word boundaries (``TfidfVectorizer(analyzer="char_wb",
  ngram_range=(3, 5))``, fitted on the corpus), cosine similarity of the L2-normalised TF-IDF vectors.

Both score blocks of queries against all targets and keep the top ``k`` (see
:func:`workembed.retrieval.scoring.blocked_top_k`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import numpy as np

from workembed.retrieval.ranking import Ranking
from workembed.retrieval.scoring import blocked_top_k

_WORD = re.compile(r"\w+")


def word_tokens(text: str) -> list[str]:
    """Lower-cased word tokens: ``"Python (programming)"`` → ``["python", "programming"]``."""
    return _WORD.findall(text.lower())


def bm25_ranking(
    queries: Mapping[str, str], corpus: Mapping[str, str], *, k: int = 100, block_size: int = 1024
) -> Ranking:
    """Rank the corpus for every query with BM25."""
    import bm25s

    index = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    index.index([word_tokens(text) for text in corpus.values()], show_progress=False)
    tokens = [word_tokens(text) for text in queries.values()]
    n_targets = len(corpus)

    def score_block(start: int, stop: int) -> np.ndarray:
        block = np.zeros((stop - start, n_targets), dtype=np.float32)
        for row, query in enumerate(tokens[start:stop]):
            if query:
                block[row] = index.get_scores(query)
        return block

    return _ranking(queries, corpus, score_block, k, block_size)


def tfidf_ranking(
    queries: Mapping[str, str], corpus: Mapping[str, str], *, k: int = 100, block_size: int = 1024
) -> Ranking:
    """Rank the corpus for every query by cosine of character 3-5-gram TF-IDF vectors."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), lowercase=True, dtype=np.float32)
    targets = vectorizer.fit_transform(list(corpus.values())).T.tocsr()  # [n_features, n_targets]
    vectors = vectorizer.transform(list(queries.values()))  # [n_queries, n_features], L2-normalised rows

    def score_block(start: int, stop: int) -> np.ndarray:
        return np.asarray((vectors[start:stop] @ targets).todense(), dtype=np.float32)

    return _ranking(queries, corpus, score_block, k, block_size)


BASELINES: dict[str, Callable[..., Ranking]] = {"bm25": bm25_ranking, "tfidf": tfidf_ranking}


def _ranking(
    queries: Mapping[str, str],
    corpus: Mapping[str, str],
    score_block: Callable[[int, int], np.ndarray],
    k: int,
    block_size: int,
) -> Ranking:
    indices, scores = blocked_top_k(score_block, len(queries), k, block_size)
    return Ranking(list(queries), list(corpus), indices, scores)
