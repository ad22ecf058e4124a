"""The generic ranking dataset: every evaluation task is "rank a target space for a query".

A dataset is a folder holding

- ``queries.tsv``: ``id<TAB>text``, one query a line;
- ``corpus.tsv``: ``id<TAB>text``, one target (document) a line;
- ``qrels.tsv``: TREC relevance judgements ``qid 0 docid relevance`` (whitespace-separated, integer
  relevance; > 0 is relevant, higher is more relevant);
- ``meta.json`` (optional): ``name``, ``language``, ``direction`` and any free extra keys.

Tabs and newlines inside texts are written as spaces, so a text read back equals the text written after
that replacement (and exactly, when it had none). Queries without a positive judgement are kept in
``queries`` but are not evaluated; :meth:`RankingDataset.evaluable_queries` lists those that are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path

from workembed.errors import DatasetError

QUERIES_FILE = "queries.tsv"
CORPUS_FILE = "corpus.tsv"
QRELS_FILE = "qrels.tsv"
META_FILE = "meta.json"

_UNSAFE = re.compile(r"[\t\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


@dataclass(frozen=True)
class RankingDataset:
    """Queries, a target corpus and graded relevance judgements ``qrels[qid][docid] = relevance``."""

    name: str
    queries: dict[str, str]
    corpus: dict[str, str]
    qrels: dict[str, dict[str, int]]
    meta: dict = field(default_factory=dict)

    def positives(self, qid: str) -> dict[str, int]:
        """The judged-relevant documents of one query (relevance > 0)."""
        return {doc: rel for doc, rel in self.qrels.get(qid, {}).items() if rel > 0}

    def evaluable_queries(self) -> list[str]:
        """Query ids (in file order) that have at least one positive judgement."""
        return [qid for qid in self.queries if self.positives(qid)]

    @property
    def queries_without_positives(self) -> int:
        """How many queries have no positive judgement (they are not evaluated)."""
        return len(self.queries) - len(self.evaluable_queries())


def clean_text(text: str) -> str:
    """Replace tabs and line breaks (which would break the TSV format) with spaces."""
    return _UNSAFE.sub(" ", str(text))


def _clean_id(value: object, what: str) -> str:
    text = str(value)
    if not text or text != text.strip() or any(ch.isspace() for ch in text):
        raise DatasetError(f"{what} id {text!r} is empty or contains whitespace")
    return text


def ranking_dataset(
    name: str,
    queries: dict[str, str],
    corpus: dict[str, str],
    qrels: dict[str, dict[str, int]],
    meta: Mapping,
    dropped: Mapping[str, int],
) -> RankingDataset:
    """A dataset whose meta holds its name, ``meta``, its counts and what was dropped (by reason)."""
    counts = {"queries": len(queries), "corpus": len(corpus), "qrels": sum(map(len, qrels.values()))}
    info = {"name": name, **meta, "counts": counts, "dropped": dict(dropped)}
    return RankingDataset(name=name, queries=queries, corpus=corpus, qrels=qrels, meta=info)


# --------------------------------------------------------------------------------------------- write


def write_dataset(
    path: str | Path,
    queries: Mapping[str, str],
    corpus: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    meta: Mapping | None = None,
) -> Path:
    """Write a dataset folder (created if needed) and return its path.

    Ids must be non-empty and without whitespace; qrels must name known query and document ids and hold
    integer relevance. The folder name is the default ``meta['name']``.
    """
    folder = Path(path)
    for qid, docs in qrels.items():
        if qid not in queries:
            raise DatasetError(f"qrels name unknown query id {qid!r}")
        for doc, rel in docs.items():
            if doc not in corpus:
                raise DatasetError(f"qrels of query {qid!r} name unknown document id {doc!r}")
            if isinstance(rel, bool) or not isinstance(rel, Integral):
                raise DatasetError(
                    f"qrels of query {qid!r}, document {doc!r}: relevance {rel!r} is not an int"
                )
    if not queries:
        raise DatasetError("no queries to write")
    if not corpus:
        raise DatasetError("no corpus documents to write")
    folder.mkdir(parents=True, exist_ok=True)
    _write_tsv(folder / QUERIES_FILE, queries, "query")
    _write_tsv(folder / CORPUS_FILE, corpus, "document")
    with (folder / QRELS_FILE).open("w", encoding="utf-8", newline="\n") as out:
        for qid, docs in qrels.items():
            for doc, rel in docs.items():
                out.write(f"{_clean_id(qid, 'query')} 0 {_clean_id(doc, 'document')} {int(rel)}\n")
    info = {"name": folder.name, **dict(meta or {})}
    (folder / META_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return folder


def _write_tsv(path: Path, rows: Mapping[str, str], what: str) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as out:
        for key, text in rows.items():
            out.write(f"{_clean_id(key, what)}\t{clean_text(text)}\n")


# ---------------------------------------------------------------------------------------------- read


def read_dataset(path: str | Path) -> RankingDataset:
    """Read and validate a dataset folder; raises :class:`DatasetError` naming the file and line."""
    folder = Path(path)
    if not folder.is_dir():
        raise DatasetError(f"dataset folder not found: {folder}")
    meta = _read_meta(folder / META_FILE)
    queries = _read_tsv(folder / QUERIES_FILE)
    corpus = _read_tsv(folder / CORPUS_FILE)
    qrels = _read_qrels(folder / QRELS_FILE, queries, corpus)
    name = str(meta.get("name") or folder.name)
    return RankingDataset(name=name, queries=queries, corpus=corpus, qrels=qrels, meta=meta)


def check_distinct_names(datasets: Sequence[RankingDataset]) -> None:
    """Raise DatasetError when two of ``datasets`` share a name: reports and WorkRB tasks key datasets by
    it."""
    names = [dataset.name for dataset in datasets]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DatasetError(f"several datasets are named {', '.join(repeated)}: give them distinct meta names")


def _lines(path: Path):
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    with path.open(encoding="utf-8", newline="\n") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.rstrip("\n").rstrip("\r")
            if line.strip():
                yield number, line


def _read_tsv(path: Path) -> dict[str, str]:
    rows: dict[str, str] = {}
    for number, line in _lines(path):
        key, sep, text = line.partition("\t")
        if not sep or "\t" in text:
            raise DatasetError(f"{path}:{number}: expected 'id<TAB>text', got {line[:80]!r}")
        if not key or key != key.strip() or any(ch.isspace() for ch in key):
            raise DatasetError(f"{path}:{number}: id {key!r} is empty or contains whitespace")
        if key in rows:
            raise DatasetError(f"{path}:{number}: duplicate id {key!r}")
        rows[key] = text
    if not rows:
        raise DatasetError(f"{path}: file is empty")
    return rows


def _read_qrels(
    path: Path, queries: Mapping[str, str], corpus: Mapping[str, str]
) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for number, line in _lines(path):
        parts = line.split()
        if len(parts) != 4:
            raise DatasetError(f"{path}:{number}: expected 'qid 0 docid relevance', got {line[:80]!r}")
        qid, _, doc, rel_text = parts
        try:
            rel = int(rel_text)
        except ValueError:
            raise DatasetError(f"{path}:{number}: relevance {rel_text!r} is not an integer") from None
        if qid not in queries:
            raise DatasetError(f"{path}:{number}: unknown query id {qid!r}")
        if doc not in corpus:
            raise DatasetError(f"{path}:{number}: unknown document id {doc!r}")
        judged = qrels.setdefault(qid, {})
        if doc in judged:
            raise DatasetError(f"{path}:{number}: duplicate judgement for query {qid!r}, document {doc!r}")
        judged[doc] = rel
    if not qrels:
        raise DatasetError(f"{path}: file is empty")
    return qrels


def _read_meta(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: must hold a JSON object, got {type(meta).__name__}")
    return meta
