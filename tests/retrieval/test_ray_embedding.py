"""Embedding through Ray Data actors equals local embedding, in input order; scoring uses it transparently."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
from pydantic import ValidationError

from workembed.models import Encoder
from workembed.retrieval.embedding import pooled_embeddings, target_cache_path
from workembed.retrieval.ranking import encoder_ranking
from workembed.retrieval.ray_embedding import (
    RayEmbedding,
    collect_in_order,
    embed_dataset,
    embed_with_ray,
    text_dataset,
)

WORDS = (
    "manage team budget python software develop sales customer nurse patient care drive truck cook kitchen "
    "teach school data analysis accounting law contract design build repair engine clean office plan project "
    "market research write report"
).split()


def distinct_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct texts of 1 to 15 words (so batches pad to different lengths)."""
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    while len(texts) < n:
        text = " ".join(rng.choice(WORDS, size=rng.integers(1, 16)))
        if text not in texts:
            texts.append(text)
    return texts


TEXTS = distinct_texts(240)


@pytest.fixture(scope="module")
def tiny(tiny_bert):
    return Encoder(tiny_bert, batch_size=16)


# ------------------------------------------------------------------------------------------ embed_with_ray


def messages(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name.startswith("workembed")]


def test_ray_embeddings_equal_local_ones_in_input_order(ray_session, tiny, tiny_bert, caplog):
    texts = TEXTS[:200]
    local = tiny.embed(texts)
    # 37 rows a block: 5 full blocks and one of 15, spread over two actors
    caplog.set_level(logging.INFO, logger="workembed")
    embedded = embed_with_ray(str(tiny_bert), texts, batch_size=16, num_actors=2, rows_per_block=37)
    assert embedded.shape == (200, 32) and embedded.dtype == np.float32
    np.testing.assert_allclose(embedded, local, atol=1e-5, rtol=0)
    assert not np.allclose(embedded[::-1], local, atol=1e-3)  # rows differ: the order is what matched
    np.testing.assert_allclose(np.linalg.norm(embedded, axis=1), 1.0, atol=1e-6)
    assert messages(caplog) == [f"embedding 200 texts with {tiny_bert} on 2 Ray actor(s)"]


def test_order_is_restored_when_blocks_come_back_shuffled(ray_session, tiny, tiny_bert):
    texts = TEXTS[:120]
    shuffled = text_dataset(texts, rows_per_block=23).random_shuffle(seed=3).materialize()
    assert shuffled.take_batch(10)["index"].tolist() != list(range(10))
    embedded = embed_dataset(
        shuffled, str(tiny_bert), batch_size=16, max_length=256, device="cpu", num_actors=1
    )
    np.testing.assert_allclose(collect_in_order(embedded, len(texts)), tiny.embed(texts), atol=1e-5, rtol=0)


def test_collect_places_rows_by_index_and_rejects_gaps(ray_session):
    import ray.data

    rows = [{"index": i, "embedding": np.full(3, i, dtype=np.float32)} for i in range(10)]
    uneven = ray.data.from_items(rows[7:] + rows[:2], override_num_blocks=2).union(
        ray.data.from_items(rows[2:7], override_num_blocks=3)
    )
    np.testing.assert_array_equal(collect_in_order(uneven, 10), np.repeat(np.arange(10.0), 3).reshape(10, 3))
    with pytest.raises(RuntimeError, match="returned 9 of 10 rows"):
        collect_in_order(ray.data.from_items(rows[1:]), 10)
    with pytest.raises(RuntimeError, match="out of range or twice"):
        collect_in_order(ray.data.from_items(rows + rows[:1]), 10)


def test_bad_input_is_rejected_before_connecting():
    with pytest.raises(TypeError, match="not a single string"):
        embed_with_ray("minilm", "one text")
    with pytest.raises(ValueError, match="texts is empty"):
        embed_with_ray("minilm", [])
    with pytest.raises(ValueError, match="rows_per_block"):
        embed_with_ray("minilm", ["a"], rows_per_block=0)
    with pytest.raises(ValueError, match="'local' would start a new Ray instance"):
        embed_with_ray("minilm", ["a"], ray_address="local")


def test_without_a_ray_connection_the_error_says_what_to_do():
    """A fresh process with no Ray connection and no address: a clear error, and no cluster is started."""
    code = (
        "import ray\n"
        "from workembed.retrieval.ray_embedding import embed_with_ray\n"
        "try:\n"
        "    embed_with_ray('minilm', ['a text'], ray_address=None)\n"
        "except RuntimeError as err:\n"
        "    print(err)\n"
        "print('initialized', ray.is_initialized())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "needs a Ray connection: call ray.init(...) first" in done.stdout
    assert done.stdout.strip().endswith("initialized False")


# ------------------------------------------------------------------------------------------- settings


def test_settings_validate_and_pick_the_actor_device():
    assert RayEmbedding().address == "auto"
    assert RayEmbedding(num_gpus=1).device("cpu") == "cuda"
    assert RayEmbedding(num_gpus=0).device("cuda:1") == "cuda:1"
    with pytest.raises(ValidationError, match="num_actors"):
        RayEmbedding(num_actors=0)
    with pytest.raises(ValidationError, match="min_texts"):
        RayEmbedding(min_texts=-1)
    with pytest.raises(ValidationError, match="never starts one"):
        RayEmbedding(address="local")


def test_sets_below_min_texts_are_embedded_locally(tiny, caplog):
    caplog.set_level(logging.INFO, logger="workembed")
    settings = RayEmbedding(address=None, min_texts=50)
    vectors = pooled_embeddings(tiny, TEXTS[:49], settings)
    np.testing.assert_array_equal(vectors, pooled_embeddings(tiny, TEXTS[:49]))
    assert messages(caplog) == []


# -------------------------------------------------------------------------------------------- scoring


def test_ranking_with_ray_equals_local_ranking_and_shares_the_cache(ray_session, minilm, tmp_path, caplog):
    queries = {f"q{i}": text for i, text in enumerate(TEXTS[:40])}
    corpus = {f"d{i}": text for i, text in enumerate(TEXTS[40:])}
    local = encoder_ranking(minilm, queries, corpus, k=10)
    # the premise of an exact comparison: no two of the top 11 scores of a query are within 1e-5
    targets = pooled_embeddings(minilm, list(corpus.values()))
    full = pooled_embeddings(minilm, list(queries.values())) @ targets.T
    assert np.diff(np.sort(full, axis=1)[:, -11:], axis=1).min() > 1e-5

    settings = RayEmbedding(address=None, num_actors=1, min_texts=0)
    caplog.set_level(logging.INFO, logger="workembed")
    with_ray = encoder_ranking(minilm, queries, corpus, k=10, cache_dir=tmp_path, ray=settings)
    np.testing.assert_array_equal(with_ray.indices, local.indices)
    np.testing.assert_allclose(with_ray.scores, local.scores, atol=1e-5, rtol=0)
    assert "embedding 200 texts with minilm on 1 Ray actor(s)" in messages(caplog)
    assert "embedding 40 texts with minilm on 1 Ray actor(s)" in messages(caplog)

    # the Ray run wrote the same cache file a local run reads (same path, same key)
    path = target_cache_path(minilm, corpus, tmp_path)
    assert [p.name for p in tmp_path.rglob("*.npy")] == [path.name]
    np.testing.assert_allclose(np.load(path), targets, atol=1e-5, rtol=0)
    caplog.clear()
    cached = encoder_ranking(minilm, queries, corpus, k=10, cache_dir=tmp_path)
    assert f"target embeddings from cache {path}" in messages(caplog)
    np.testing.assert_array_equal(cached.indices, local.indices)
