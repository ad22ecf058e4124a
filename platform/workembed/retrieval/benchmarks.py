"""Readers of the development sets under ``benchmarks/``: each returns a :class:`RankingDataset` in memory.

Labels are matched exactly first, then case-insensitively with whitespace collapsed (counted apart); labels
matching neither are counted and listed. Query ids number the distinct queries in the order of their first
appearance (``S00001``, ``T00001``); ESCO concepts keep the last path segment of their URI as id.
``workembed eval convert`` (:mod:`workembed.eval.converters`) writes them as dataset folders.

- Skill extraction (house, tech; Decorte et al. 2023): sentence → skill labels; the corpus is exactly the
  lines of ``skills_en_label.txt`` (id ``L<line number>``); spans labelled ``LABEL NOT PRESENT`` or
  ``UNDERSPECIFIED`` carry no label, and sentences without a real label are dropped (the benchmark's
  metrics are over sentences with ≥1 label).
- SkillSkape dev: sentence → ESCO skills of a given taxonomy; ``UNK`` means none.
- JobBERT titles: vacancy title → ESCO occupations of a given taxonomy. Titles have their whitespace
  collapsed (1,778 end or start in a space), then equal titles are merged: the same concept twice is one
  judgement, several concepts are several relevant documents.
- MELO: already TREC-style; read as is.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import pandas as pd

from workembed.errors import DatasetError
from workembed.retrieval.esco_concepts import concept_id, esco_corpus, esco_info, label_key, tidy
from workembed.retrieval.ranking_dataset import RankingDataset, ranking_dataset
from workembed.taxonomy import Taxonomy

NOT_A_LABEL = ("LABEL NOT PRESENT", "UNDERSPECIFIED")
UNKNOWN_SKILL = "UNK"
RELEVANCE = 1

SKILL_EXTRACTION_DIR = "skill_extraction"
SKILL_EXTRACTION_SETS = ("house", "tech")
SKILL_EXTRACTION_LABELS = "skills_en_label.txt"
SKILLSKAPE_DEV = "skillskape/dev.csv"
JOBBERT_TITLES = "job_normalization/jobbert_titles_validation.csv"
MELO_DIR = "melo"


class BenchmarkFormatError(DatasetError):
    """A benchmark file is missing, lacks a column or holds a value that cannot be read."""


# -------------------------------------------------------------------------------------------- helpers


def _read_csv(path: str | Path, columns: Iterable[str]) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise BenchmarkFormatError(f"benchmark file not found: {path}")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise BenchmarkFormatError(f"{path} lacks column(s): {', '.join(missing)}")
    return frame


class _LabelIndex:
    """Finds a label's id: exact text first, then case-insensitively with whitespace collapsed."""

    def __init__(self, labels: Mapping[str, str]):  # id → text
        self.exact: dict[str, str] = {}
        loose: dict[str, set[str]] = {}
        for key, text in labels.items():
            self.exact.setdefault(text, key)
            loose.setdefault(label_key(text), set()).add(key)
        self.loose = {k: next(iter(v)) for k, v in loose.items() if len(v) == 1}
        self.counts: Counter[str] = Counter()
        self.unknown: Counter[str] = Counter()

    def find(self, label: str) -> str | None:
        if label in self.exact:
            self.counts["labels_matched_exactly"] += 1
            return self.exact[label]
        found = self.loose.get(label_key(label))
        if found is not None:
            self.counts["labels_matched_loosely"] += 1
            return found
        self.counts["labels_unknown"] += 1
        self.unknown[label] += 1
        return None


def _numbered(prefix: str, texts: Iterable[str]) -> dict[str, str]:
    """Text → id, numbering distinct texts by first appearance (1-based, 5 digits)."""
    ids: dict[str, str] = {}
    for text in texts:
        if text not in ids:
            ids[text] = f"{prefix}{len(ids) + 1:05d}"
    return ids


def _labelled(
    rows: Iterable[tuple[str, list[str]]], index: _LabelIndex, prefix: str
) -> tuple[dict[str, str], dict[str, dict[str, int]], Counter[str]]:
    """Queries and qrels from (text, labels) rows: equal texts merge, unlabelled texts are dropped."""
    rows = list(rows)
    ids = _numbered(prefix, (text for text, _ in rows))
    found: dict[str, dict[str, int]] = {ids[text]: {} for text, _ in rows}
    labelled: set[str] = set()
    for text, labels in rows:
        qid = ids[text]
        for label in labels:
            labelled.add(qid)
            doc = index.find(label)
            if doc is not None:
                found[qid][doc] = RELEVANCE
    dropped: Counter[str] = Counter()
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for text, qid in ids.items():
        if qid not in labelled:
            dropped["queries_without_label"] += 1
        elif not found[qid]:
            dropped["queries_with_only_unknown_labels"] += 1
        else:
            queries[qid], qrels[qid] = text, found[qid]
    return queries, qrels, dropped


# ----------------------------------------------------------------------------------- skill extraction


def read_label_space(path: str | Path) -> dict[str, str]:
    """The lines of a label file as ``L<line number>`` → text (verbatim; blank lines are skipped)."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkFormatError(f"label file not found: {path}")
    lines = path.read_text(encoding="utf-8").split("\n")
    return {f"L{n:05d}": line.rstrip("\r") for n, line in enumerate(lines, start=1) if line.strip()}


def skill_extraction_dataset(
    annotations: str | Path, labels: str | Path | None = None, name: str | None = None
) -> RankingDataset:
    """Sentences with ≥1 real label → the label space (default: ``skills_en_label.txt`` beside them)."""
    annotations = Path(annotations)
    labels = Path(labels) if labels is not None else annotations.parent / SKILL_EXTRACTION_LABELS
    frame = _read_csv(annotations, ("sentence", "span", "label"))
    corpus = read_label_space(labels)
    index = _LabelIndex(corpus)
    spans = Counter(label if label in NOT_A_LABEL else "labelled" for label in frame["label"])
    per_sentence = [
        (sentence, [] if label in NOT_A_LABEL else [label])
        for sentence, label in zip(frame["sentence"], frame["label"], strict=True)
    ]
    queries, qrels, dropped = _labelled(per_sentence, index, "S")
    subset = annotations.stem.removesuffix("_validation_annotations")
    meta = {
        "language": "en",
        "direction": "sentence -> skill label",
        "source": str(annotations),
        "label_space": str(labels),
        "esco": {"version": "v1.1.0", "note": "labels are ESCO 1.1.0 skill preferred labels"},
        "not_a_label": list(NOT_A_LABEL),
        "metrics": "RP@K and MRR over sentences with at least one label (Decorte et al. 2023)",
        "rows": len(frame),
        "spans": dict(sorted(spans.items())),
        "sentences": len(queries) + sum(dropped.values()),
        "labels": dict(sorted(index.counts.items())),
        "unknown_labels": dict(index.unknown.most_common()),
    }
    return ranking_dataset(name or f"skill-extraction-{subset}", queries, corpus, qrels, meta, dropped)


# ----------------------------------------------------------------------------------------- SkillSkape


def _skill_list(text: str, path: Path, row: int) -> list[str]:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise BenchmarkFormatError(f"{path} row {row}: skills {text[:80]!r} is not a list") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BenchmarkFormatError(f"{path} row {row}: skills {text[:80]!r} is not a list of strings")
    return [v for v in value if v != UNKNOWN_SKILL]


def skillskape_dataset(
    source: str | Path, taxonomy: Taxonomy, name: str = "skillskape-dev"
) -> RankingDataset:
    """SkillSkape sentences → the taxonomy's skill preferred labels; ``UNK``-only sentences are dropped."""
    source = Path(source)
    frame = _read_csv(source, ("sentence", "skills"))
    index = _LabelIndex({concept_id(uri): s.preferred_label for uri, s in taxonomy.skills.items()})
    rows = [
        (sentence, _skill_list(skills, source, n))
        for n, (sentence, skills) in enumerate(zip(frame["sentence"], frame["skills"], strict=True))
    ]
    queries, qrels, dropped = _labelled(rows, index, "S")
    meta = {
        "language": "en",
        "direction": "sentence -> skill",
        "source": str(source),
        "esco": esco_info(taxonomy),
        "rows": len(frame),
        "duplicate_sentences_merged": len(frame) - len(queries) - sum(dropped.values()),
        "labels": dict(sorted(index.counts.items())),
        "unknown_labels": dict(index.unknown.most_common()),
    }
    return ranking_dataset(name, queries, esco_corpus(taxonomy.skills, "skill"), qrels, meta, dropped)


# -------------------------------------------------------------------------------------- JobBERT titles


def jobbert_dataset(source: str | Path, taxonomy: Taxonomy, name: str = "jobbert-titles") -> RankingDataset:
    """Vacancy titles → the taxonomy's occupations; gold concepts the taxonomy lacks are dropped."""
    source = Path(source)
    frame = _read_csv(source, ("vacancyTitle", "conceptUri"))
    titles = [tidy(t) for t in frame["vacancyTitle"]]
    ids = _numbered("T", (t for t in titles if t))
    dropped: Counter[str] = Counter()
    merged = 0
    gold: dict[str, dict[str, int]] = {}
    for title, uri in zip(titles, frame["conceptUri"].str.strip(), strict=True):
        if not title:
            dropped["rows_empty_title"] += 1
            continue
        judged = gold.setdefault(ids[title], {})
        if uri not in taxonomy.occupations:
            dropped["rows_concept_not_in_taxonomy"] += 1
            continue
        if concept_id(uri) in judged:
            merged += 1
        judged[concept_id(uri)] = RELEVANCE
    queries = {qid: title for title, qid in ids.items() if gold[qid]}
    qrels = {qid: gold[qid] for qid in queries}
    dropped["titles_without_concept_in_taxonomy"] = len(ids) - len(queries)
    meta = {
        "language": "en",
        "direction": "job title -> occupation",
        "source": str(source),
        "esco": esco_info(taxonomy),
        "rows": len(frame),
        "titles": len(ids),
        "merged": {
            "rows_same_title": len(frame) - dropped["rows_empty_title"] - len(ids),
            "rows_same_title_and_concept": merged,
            "titles_with_several_concepts": sum(len(d) > 1 for d in qrels.values()),
        },
        "titles_compared": "whitespace collapsed, case kept",
    }
    return ranking_dataset(
        name, queries, esco_corpus(taxonomy.occupations, "occupation"), qrels, meta, dropped
    )


# ----------------------------------------------------------------------------------------------- MELO

_MELO_LANGUAGES = re.compile(r"q_([a-z]+)_c_([a-z]+)")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered non-blank lines, split on newlines only (texts may hold other line separators)."""
    if not path.is_file():
        raise BenchmarkFormatError(f"MELO file not found: {path}")
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if line.strip():
            yield number, line.rstrip("\r")


def _read_pairs(path: Path) -> dict[str, str]:
    rows: dict[str, str] = {}
    for number, line in _lines(path):
        key, sep, text = line.partition("\t")
        if not sep or key in rows:
            raise BenchmarkFormatError(f"{path}:{number}: expected a new 'id<TAB>text', got {line[:80]!r}")
        rows[key] = text
    return rows


def melo_dataset(source: str | Path) -> RankingDataset:
    """A MELO folder (``queries.tsv``, ``corpus_elements.tsv``, ``annotations.tsv``) as a dataset."""
    source = Path(source)
    queries = _read_pairs(source / "queries.tsv")
    corpus = _read_pairs(source / "corpus_elements.tsv")
    path = source / "annotations.tsv"
    qrels: dict[str, dict[str, int]] = {}
    dropped: Counter[str] = Counter()
    for number, line in _lines(path):
        parts = line.split()
        if len(parts) != 4 or not re.fullmatch(r"-?\d+", parts[3]):
            raise BenchmarkFormatError(
                f"{path}:{number}: expected 'qid 0 docid relevance', got {line[:80]!r}"
            )
        qid, _, doc, relevance = parts
        if qid not in queries or doc not in corpus:
            dropped["annotations_unknown_id"] += 1
            continue
        qrels.setdefault(qid, {})[doc] = int(relevance)
    dropped["queries_without_annotation"] = len(queries) - len(qrels)
    queries = {qid: text for qid, text in queries.items() if qid in qrels}
    found = _MELO_LANGUAGES.search(source.name)
    language, corpus_language = found.groups() if found else ("nl", "nl")
    meta = {
        "language": language,
        "corpus_language": corpus_language,
        "direction": "job title -> occupation surface form",
        "source": str(source),
        "concept_mapping": str(source / "concept_mapping.tsv"),
    }
    return ranking_dataset(f"melo-{source.name}", queries, corpus, qrels, meta, dropped)


# ------------------------------------------------------------------------------------------------ all


def benchmark_datasets(data_root: str | Path, taxonomy: Taxonomy) -> dict[str, RankingDataset]:
    """Every development set under ``data_root/benchmarks`` (or ``data_root`` itself), by name."""
    root = Path(data_root)
    if (root / "benchmarks").is_dir():
        root = root / "benchmarks"
    sets = [
        skill_extraction_dataset(root / SKILL_EXTRACTION_DIR / f"{subset}_validation_annotations.csv")
        for subset in SKILL_EXTRACTION_SETS
    ]
    sets.append(skillskape_dataset(root / SKILLSKAPE_DEV, taxonomy))
    sets.append(jobbert_dataset(root / JOBBERT_TITLES, taxonomy))
    melo = sorted(p.parent for p in (root / MELO_DIR).glob("*/queries.tsv"))
    if not melo:
        raise BenchmarkFormatError(f"no MELO folder (*/queries.tsv) under {root / MELO_DIR}")
    sets.extend(melo_dataset(folder) for folder in melo)
    return {dataset.name: dataset for dataset in sets}
