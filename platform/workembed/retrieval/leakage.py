"""Benchmark texts that no training set may contain.

Every evaluation file under the benchmarks folder contributes the texts it queries with: the sentences of
the skill-extraction validation annotations, SkillSkape dev and test and SkillSpan dev, and the job titles
of the JobBERT validation set and the MELO queries. Texts are compared by :func:`text_key` (case-folded,
letters and digits only), so a benchmark sentence is found again whatever its tokenisation (SkillSpan's
space-separated tokens, a detokenised copy) or punctuation.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from workembed.data.skillspan import read_skillspan
from workembed.errors import DatasetError, NotFoundError

_NOT_ALNUM = re.compile(r"[\W_]+")

SENTENCE_FILES = {
    "skill_extraction/house_validation_annotations.csv": "sentence",
    "skill_extraction/tech_validation_annotations.csv": "sentence",
    "skillskape/dev.csv": "sentence",
    "skillskape/test.csv": "sentence",
}
"""CSV evaluation files of sentences → their sentence column (relative to the benchmarks folder)."""
SKILLSPAN_EVALUATION = "skillspan/dev.json"
TITLE_FILES = {"job_normalization/jobbert_titles_validation.csv": "vacancyTitle"}
"""CSV evaluation files of job titles → their title column."""
MELO_QUERIES = "melo/*/queries.tsv"


def text_key(text: str) -> str:
    """The comparison key of a text: case-folded, everything but letters and digits removed."""
    return _NOT_ALNUM.sub("", text.casefold())


def benchmark_texts(benchmarks: str | Path, titles: bool = True) -> dict[str, frozenset[str]]:
    """The keys of every evaluation text under ``benchmarks`` (the data root's ``benchmarks`` folder), by
    file: the sentence files and, with ``titles``, the job-title files. A missing file is an error (a guard
    that silently checks nothing is worse than none)."""
    root = Path(benchmarks)
    files = {**SENTENCE_FILES, **(TITLE_FILES if titles else {})}
    found = {
        name: {text_key(text) for text in _csv_column(root / name, column)} for name, column in files.items()
    }
    found[SKILLSPAN_EVALUATION] = {text_key(s.text) for s in read_skillspan(root / SKILLSPAN_EVALUATION)}
    if titles:
        melo = sorted(root.glob(MELO_QUERIES))
        if not melo:
            raise NotFoundError(f"no MELO queries ({MELO_QUERIES}) under {root}")
        for path in melo:
            with path.open(encoding="utf-8", newline="") as rows:
                found[str(path.relative_to(root))] = {
                    text_key(row[1]) for row in csv.reader(rows, delimiter="\t") if len(row) > 1
                }
    return {name: frozenset(key for key in keys if key) for name, keys in found.items()}


def every_key(benchmark: Mapping[str, frozenset[str]]) -> frozenset[str]:
    """The keys of all files of ``benchmark`` together."""
    return frozenset().union(*benchmark.values())


def leaked(texts: Iterable[str], benchmark: Mapping[str, frozenset[str]]) -> dict[str, list[str]]:
    """The ``texts`` found in benchmark files, by file (empty when none is)."""
    hits: dict[str, list[str]] = {}
    for text in texts:
        key = text_key(text)
        for name, keys in benchmark.items():
            if key in keys:
                hits.setdefault(name, []).append(text)
    return hits


def _csv_column(path: Path, column: str) -> list[str]:
    if not path.is_file():
        raise NotFoundError(f"benchmark file not found: {path}")
    with path.open(encoding="utf-8", newline="") as rows:
        reader = csv.DictReader(rows)
        if column not in (reader.fieldnames or []):
            raise DatasetError(f"{path} has no '{column}' column")
        return [row[column] or "" for row in reader]
