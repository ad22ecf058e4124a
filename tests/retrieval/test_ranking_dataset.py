"""The ranking dataset format: write → read round trip, and a clear error for every malformed input."""

from __future__ import annotations

import json

import pytest

from workembed.retrieval.ranking_dataset import DatasetError, RankingDataset, read_dataset, write_dataset

QUERIES = {"q1": "Python programming", "q2": "tabs\there and\nnew lines\r\nand ünïcode", "q3": "no answer"}
CORPUS = {"d1": "Python (computer programming)", "d2": "bake bread", "d3": "x"}
QRELS = {"q1": {"d1": 2, "d2": 0}, "q2": {"d2": 1, "d3": 1}, "q3": {"d3": 0}}


@pytest.fixture
def folder(tmp_path):
    return write_dataset(tmp_path / "tiny", QUERIES, CORPUS, QRELS, {"language": "en", "direction": "q2d"})


def test_round_trip(folder):
    dataset = read_dataset(folder)
    assert isinstance(dataset, RankingDataset)
    assert dataset.name == "tiny"
    assert dataset.queries["q1"] == "Python programming"
    assert dataset.queries["q2"] == "tabs here and new lines  and ünïcode"  # separators become spaces
    assert dataset.corpus == CORPUS
    assert dataset.qrels == QRELS
    assert dataset.meta == {"name": "tiny", "language": "en", "direction": "q2d"}
    assert dataset.evaluable_queries() == ["q1", "q2"]
    assert dataset.queries_without_positives == 1
    assert dataset.positives("q1") == {"d1": 2}
    # written again from what was read, the files are byte-identical
    again = write_dataset(
        folder.parent / "again", dataset.queries, dataset.corpus, dataset.qrels, dataset.meta
    )
    for name in ("queries.tsv", "corpus.tsv", "qrels.tsv", "meta.json"):
        assert (again / name).read_bytes() == (folder / name).read_bytes()
    assert (folder / "qrels.tsv").read_text().splitlines()[0] == "q1 0 d1 2"


def test_meta_is_optional_and_its_name_wins(folder):
    (folder / "meta.json").unlink()
    assert read_dataset(folder).name == "tiny" and read_dataset(folder).meta == {}
    (folder / "meta.json").write_text(json.dumps({"name": "renamed", "extra": [1]}))
    assert read_dataset(folder).name == "renamed"


def _write(folder, name, text):
    (folder / name).write_text(text, encoding="utf-8")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("queries.tsv", "", r"queries\.tsv: file is empty"),
        ("corpus.tsv", "\n\n", r"corpus\.tsv: file is empty"),
        ("qrels.tsv", "", r"qrels\.tsv: file is empty"),
        ("queries.tsv", "q1\tone\nq1\tagain\n", r"queries\.tsv:2: duplicate id 'q1'"),
        ("corpus.tsv", "d1\tok\nd2 no tab\n", r"corpus\.tsv:2: expected 'id<TAB>text'"),
        ("corpus.tsv", "d1\tok\td2\n", r"corpus\.tsv:1: expected 'id<TAB>text'"),
        ("queries.tsv", "\tno id\n", r"queries\.tsv:1: id '' is empty"),
        ("qrels.tsv", "q1 0 d1 1\nq1 0 d2\n", r"qrels\.tsv:2: expected 'qid 0 docid relevance'"),
        ("qrels.tsv", "q1 0 d1 high\n", r"qrels\.tsv:1: relevance 'high' is not an integer"),
        ("qrels.tsv", "q1 0 d1 1.5\n", r"qrels\.tsv:1: relevance '1\.5' is not an integer"),
        ("qrels.tsv", "q9 0 d1 1\n", r"qrels\.tsv:1: unknown query id 'q9'"),
        ("qrels.tsv", "q1 0 d1 1\nq1 0 d9 1\n", r"qrels\.tsv:2: unknown document id 'd9'"),
        ("qrels.tsv", "q1 0 d1 1\nq1 0 d1 2\n", r"qrels\.tsv:2: duplicate judgement"),
        ("meta.json", "{not json", r"meta\.json: not valid JSON"),
        ("meta.json", "[1, 2]", r"meta\.json: must hold a JSON object"),
    ],
)
def test_format_errors_name_the_file_and_line(folder, name, text, message):
    _write(folder, name, text)
    with pytest.raises(DatasetError, match=message):
        read_dataset(folder)


@pytest.mark.parametrize("name", ["queries.tsv", "corpus.tsv", "qrels.tsv"])
def test_missing_file(folder, name):
    (folder / name).unlink()
    with pytest.raises(DatasetError, match=rf"{name}: file not found"):
        read_dataset(folder)


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="dataset folder not found"):
        read_dataset(tmp_path / "absent")
    assert issubclass(DatasetError, ValueError)


@pytest.mark.parametrize(
    ("queries", "corpus", "qrels", "message"),
    [
        ({"q1": "a"}, {"d1": "b"}, {"q2": {"d1": 1}}, "unknown query id 'q2'"),
        ({"q1": "a"}, {"d1": "b"}, {"q1": {"d2": 1}}, "unknown document id 'd2'"),
        ({"q1": "a"}, {"d1": "b"}, {"q1": {"d1": 1.0}}, "is not an int"),
        ({"q 1": "a"}, {"d1": "b"}, {}, "contains whitespace"),
        ({}, {"d1": "b"}, {}, "no queries"),
        ({"q1": "a"}, {}, {}, "no corpus"),
    ],
)
def test_write_rejects_what_could_not_be_read_back(tmp_path, queries, corpus, qrels, message):
    with pytest.raises(DatasetError, match=message):
        write_dataset(tmp_path / "bad", queries, corpus, qrels)
