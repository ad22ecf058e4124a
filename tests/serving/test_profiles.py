"""The Qdrant profile index in local mode: exact order, scores and hard filters on hand-made vectors."""

import hashlib
import uuid

import numpy as np
import pytest

from workembed.serving.config import ProfileIndexConfig
from workembed.serving.profiles import ProfileIndex, check_filters, collection_name, point_id

PROFILES = [
    {"id": "ana", "text": "data engineer", "category": "data", "language": "en", "location": "Berlin",
     "payload": {"seniority": "senior", "remote": True, "years": 8}},
    {"id": "ben", "text": "ml engineer", "category": "data", "language": "de", "location": "Munich",
     "payload": {"seniority": "junior", "remote": False, "years": 2}},
    {"id": "cleo", "text": "web developer", "category": "web", "language": "en", "location": "Paris",
     "payload": {"seniority": "senior", "remote": False, "years": 5}},
    {"id": "dan", "text": "nurse", "category": "care", "language": "fr", "location": "Paris", "payload": {}},
]  # fmt: skip
VECTORS = np.array([[1, 0, 0], [0.8, 0.6, 0], [0.6, 0, 0.8], [0, 0, 1]], dtype=np.float32)
QUERY = np.array([1, 0, 0], dtype=np.float32)  # cosines: ana 1.0, ben 0.8, cleo 0.6, dan 0.0


@pytest.fixture
def index(tmp_path):
    profiles = ProfileIndex(
        ProfileIndexConfig(qdrant_path=str(tmp_path / "qdrant")), dim=3, version="models:/w/1"
    )
    profiles.upsert(PROFILES, VECTORS)
    yield profiles
    profiles.close()


def ids(hits):
    return [hit["id"] for hit in hits]


def test_search_returns_profiles_by_cosine(index):
    hits = index.search(QUERY, k=10, filters={})
    assert ids(hits) == ["ana", "ben", "cleo", "dan"]
    assert [hit["score"] for hit in hits] == pytest.approx([1.0, 0.8, 0.6, 0.0], abs=1e-6)
    assert hits[0] == {
        "id": "ana",
        "score": pytest.approx(1.0),
        "category": "data",
        "language": "en",
        "location": "Berlin",
        "payload": {"seniority": "senior", "remote": True, "years": 8},
    }
    assert ids(index.search(QUERY * 3, k=2, filters={})) == [
        "ana",
        "ben",
    ]  # cosine: the scale does not matter


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"category": "data"}, ["ana", "ben"]),
        ({"category": ["web", "care"]}, ["cleo", "dan"]),
        ({"language": "en", "location": "Paris"}, ["cleo"]),
        ({"payload.seniority": "senior"}, ["ana", "cleo"]),
        ({"payload.remote": False}, ["ben", "cleo"]),
        ({"payload.years": [2, 8]}, ["ana", "ben"]),
        ({"category": "data", "payload.seniority": "junior"}, ["ben"]),
        ({"location": "Tokyo"}, []),
    ],
)
def test_filters_must_all_hold(index, filters, expected):
    assert ids(index.search(QUERY, k=10, filters=filters)) == expected


def test_upsert_replaces_by_id_and_the_index_persists(tmp_path):
    config = ProfileIndexConfig(qdrant_path=str(tmp_path / "qdrant"))
    index = ProfileIndex(config, dim=3, version="models:/w/1")
    assert index.upsert(PROFILES, VECTORS) == 4
    moved = {**PROFILES[3], "category": "data"}
    assert index.upsert([moved], np.array([[0.9, 0, 0.43589]], dtype=np.float32)) == 1
    assert index.count() == 4
    hits = index.search(QUERY, k=3, filters={"category": "data"})
    assert ids(hits) == ["ana", "dan", "ben"]
    assert hits[1]["score"] == pytest.approx(0.9, abs=1e-4)
    index.close()

    reopened = ProfileIndex(config, dim=3, version="models:/w/1")
    assert reopened.count() == 4
    reopened.close()
    second = ProfileIndex(config, dim=3, version="models:/w/2")  # another version: its own collection
    assert second.count() == 0
    assert second.collection == "profiles-" + hashlib.sha256(b"models:/w/2").hexdigest()[:12]
    second.close()


def test_ids_names_and_errors(tmp_path):
    assert collection_name("p", "minilm") == "p-" + hashlib.sha256(b"minilm").hexdigest()[:12]
    assert point_id("ana") == point_id("ana") != point_id("ben")
    assert uuid.UUID(point_id("ana")).version == 5
    config = ProfileIndexConfig(qdrant_path=str(tmp_path / "qdrant"))
    index = ProfileIndex(config, dim=3, version="v")
    with pytest.raises(ValueError, match=r"vectors of shape \(1, 3\) for 2 profiles"):
        index.upsert(PROFILES[:2], VECTORS[:1])
    with pytest.raises(ValueError, match=r"profiles\[0\].id must be a non-empty string"):
        index.upsert([{"id": ""}], VECTORS[:1])
    with pytest.raises(ValueError, match="unknown filter 'seniority'"):
        index.search(QUERY, k=1, filters={"seniority": "senior"})
    with pytest.raises(ValueError, match=r"query vector of shape \(2,\)"):
        index.search(QUERY[:2], k=1, filters={})
    index.close()
    with pytest.raises(ValueError, match="holds 3-dimensional vectors, the model gives 4"):
        ProfileIndex(config, dim=4, version="v")


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"payload.": "x"}, "unknown filter 'payload.'"),
        ({"colour": "red"}, "unknown filter 'colour'"),
        ({"category": []}, "filter 'category': the list of values is empty"),
        ({"category": ["a", 1]}, "only strings or only integers"),
        ({"payload.score": 0.5}, "expected a string, integer, boolean or a list, got float"),
    ],
)
def test_bad_filters_name_the_key(filters, message):
    with pytest.raises(ValueError, match=message):
        check_filters(filters)
