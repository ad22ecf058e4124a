"""WorkRB compatibility: evaluate a workembed encoder with WorkRB's own runner, on WorkRB-shaped tasks.

WorkRB (``workrb`` 0.6) evaluates a ``workrb.models.base.ModelInterface``: ``name``, ``description``,
``_compute_rankings(queries, targets, query_input_type, target_input_type)`` returning the score matrix
``[n_queries, n_targets]`` (higher ranks first), ``_compute_classification(texts, targets, input_type,
target_input_type)`` and ``classification_label_space``. Its runner ``workrb.run.evaluate(model, tasks,
output_folder, metrics=...)`` calls ``RankingTask.evaluate``, which argsorts each row of the score matrix and
computes MAP, MRR, RP@K, Recall@K, Hit@K and nDCG@K over the full ranking.

- :class:`WorkembedModel` implements that interface with workembed's scorers (``cosine`` on pooled
  embeddings, or ``late-interaction``), the target-embedding cache and optional Ray embedding. The encoder
  is symmetric: WorkRB's input types (job title, skill name, ...) do not change how a text is embedded.
- :class:`WorkembedRankingTask` is a WorkRB ranking task over workembed :class:`RankingDataset` s (one WorkRB
  dataset each, id = the dataset name), so WorkRB's runner evaluates offline (its own tasks download from
  the Hugging Face hub). Only queries with a positive judgement are kept, grade > 0 is relevant.

Both classes are built on first access (``from workembed.eval.workrb_adapter import WorkembedModel``), so
workembed imports without WorkRB. With every query's full ranking, WorkRB's map, mrr, rp@K and recall@K
equal :mod:`workembed.eval.metrics`; its nDCG gain is 2^x − 1 for a relevance x, so the task passes
x = log2(1 + g) by default (``gain="linear"``), which makes the gain g and nDCG equal to workembed's too;
``gain="exponential"`` passes x = g (WorkRB's own graded nDCG). Binary judgements give the same either way.

WorkRB is installed without its dependencies (their pins would pull a second ML stack). Its package
``__init__`` imports its data loaders and lexical baselines, which need ``appdirs``, ``datasets``,
``rank-bm25`` and ``rapidfuzz``; then :func:`import_workrb` registers the packages ``workrb``,
``workrb.models`` and ``workrb.tasks`` without running their ``__init__`` and loads the modules the runner
needs (types, model interface, task bases, metrics, results, config, run), whose dependencies (torch, numpy,
pandas, scipy, scikit-learn, pydantic, PyYAML) workembed has.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Literal

import numpy as np

from workembed.errors import ConfigError, DatasetError
from workembed.retrieval.embedding import pooled_embeddings, query_token_vectors, target_embeddings
from workembed.retrieval.ranking import SCORERS, Scorer
from workembed.retrieval.ranking_dataset import RankingDataset, check_distinct_names
from workembed.retrieval.scoring import late_interaction_scores

if TYPE_CHECKING:
    from workembed.models import Encoder
    from workembed.retrieval.ray_embedding import RayEmbedding

Gain = Literal["linear", "exponential"]
PACKAGES_WITH_HEAVY_INIT = ("workrb", "workrb.models", "workrb.tasks")


def missing_dependencies() -> list[str]:
    """WorkRB's declared requirements that are not installed (distribution names)."""
    missing = []
    for requirement in importlib.metadata.requires("workrb") or []:
        if "extra ==" in requirement:
            continue
        name = re.split(r"[^A-Za-z0-9._-]", requirement.strip(), maxsplit=1)[0]
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    return missing


@functools.cache
def import_workrb() -> SimpleNamespace:
    """WorkRB's model interface, ranking task base, types and runner (``evaluate``); see the module
    docstring for an install without WorkRB's dependencies."""
    if importlib.util.find_spec("workrb") is None:
        raise ImportError(
            "WorkRB compatibility needs the workrb package: pip install --no-deps workrb==0.6.0"
        )
    try:
        importlib.import_module("workrb")
    except ImportError:
        _register_packages_without_init()
    try:
        types = importlib.import_module("workrb.types")
        base = importlib.import_module("workrb.models.base")
        ranking = importlib.import_module("workrb.tasks.abstract.ranking_base")
        run = importlib.import_module("workrb.run")
    except ImportError as err:
        missing = ", ".join(missing_dependencies()) or "none"
        raise ImportError(
            f"WorkRB's runner cannot be loaded: {err} (missing WorkRB dependencies: {missing})"
        ) from err
    return SimpleNamespace(
        ModelInterface=base.ModelInterface,
        ModelInputType=types.ModelInputType,
        Language=types.Language,
        DatasetLanguages=types.DatasetLanguages,
        LabelType=types.LabelType,
        LanguageAggregationMode=types.LanguageAggregationMode,
        RankingTask=ranking.RankingTask,
        RankingTaskGroup=ranking.RankingTaskGroup,
        RankingDataset=ranking.RankingDataset,
        DuplicateStrategy=ranking.DuplicateStrategy,
        evaluate=run.evaluate,
    )


def _register_packages_without_init() -> None:
    """Put WorkRB's packages whose ``__init__`` needs missing dependencies in ``sys.modules`` unexecuted."""
    for name in PACKAGES_WITH_HEAVY_INIT:
        if name in sys.modules:
            continue
        module = importlib.util.module_from_spec(importlib.util.find_spec(name))
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)


def __getattr__(name: str) -> type:
    """``WorkembedModel`` and ``WorkembedRankingTask``, built on first access (WorkRB subclasses)."""
    if name == "WorkembedModel":
        return _model_class()
    if name == "WorkembedRankingTask":
        return _task_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------------------------------------ model


@functools.cache
def _model_class() -> type:
    from workembed.models import Encoder

    api = import_workrb()

    class WorkembedModel(api.ModelInterface):
        """A workembed encoder as a WorkRB model: ``scores[i, j]`` is the workembed score of target ``j`` for
        query ``i`` (``cosine`` or ``late-interaction`` with ``temperature``)."""

        def __init__(
            self,
            model: str | Path | Encoder = "minilm",
            *,
            scorer: Scorer = "cosine",
            temperature: float = 0.05,
            batch_size: int = 64,
            max_length: int = 256,
            device: str = "cpu",
            block_size: int = 1024,
            cache_dir: str | Path | None = None,
            ray: RayEmbedding | None = None,
            name: str | None = None,
        ):
            if scorer not in SCORERS:
                raise ConfigError(f"unknown scorer '{scorer}' (known: {', '.join(SCORERS)})")
            if temperature <= 0 or block_size < 1:
                raise ConfigError("temperature must be positive and block_size at least 1")
            self.encoder = (
                model
                if isinstance(model, Encoder)
                else Encoder(model, max_length=max_length, batch_size=batch_size, device=device)
            )
            self.scorer = scorer
            self.temperature = temperature
            self.block_size = block_size
            self.cache_dir = cache_dir
            self.ray = ray
            suffix = "" if scorer == "cosine" else f"-{scorer}"
            self._name = name or f"workembed-{Path(self.encoder.name).name}{suffix}"

        @property
        def name(self) -> str:
            return self._name

        @property
        def description(self) -> str:
            return f"workembed encoder {self.encoder.name} ({self.scorer} scoring)"

        @property
        def classification_label_space(self) -> list[str] | None:
            return None  # no classification head: classification ranks the label texts

        def scores(
            self,
            queries: Sequence[str],
            targets: Sequence[str],
            query_kind: str | None = None,
            target_kind: str | None = None,
        ) -> np.ndarray:
            """``[len(queries), len(targets)]`` float32 scores; the kinds (WorkRB input types) pick a
            projection model's side for queries and targets."""
            corpus = {str(position): text for position, text in enumerate(targets)}
            pooled_targets = target_embeddings(
                self.encoder, corpus, self.cache_dir, ray=self.ray, kind=target_kind
            )
            if self.scorer == "cosine":
                queries = list(queries)
                return pooled_embeddings(self.encoder, queries, self.ray, query_kind) @ pooled_targets.T
            out = np.empty((len(queries), len(targets)), dtype=np.float32)
            for start in range(0, len(queries), self.block_size):
                stop = min(start + self.block_size, len(queries))
                tokens = query_token_vectors(self.encoder, list(queries[start:stop]))
                out[start:stop] = late_interaction_scores(tokens, pooled_targets, self.temperature)
            return out

        def _compute_rankings(self, queries, targets, query_input_type=None, target_input_type=None):
            import torch

            return torch.from_numpy(
                self.scores(queries, targets, _kind(query_input_type), _kind(target_input_type))
            )

        def _compute_classification(self, texts, targets, input_type=None, target_input_type=None):
            return self._compute_rankings(texts, targets, input_type, target_input_type)

    WorkembedModel.__module__ = __name__
    return WorkembedModel


def _kind(input_type) -> str | None:
    """The value of a WorkRB ``ModelInputType`` (or None)."""
    return None if input_type is None else str(getattr(input_type, "value", input_type))


# ------------------------------------------------------------------------------------------------- task


def workrb_relevance(grade: int, gain: Gain) -> float:
    """The relevance WorkRB receives for a workembed grade: log2(1 + g) (its gain 2^x − 1 is then g) or g."""
    return math.log2(1 + grade) if gain == "linear" else float(grade)


@functools.cache
def _task_class() -> type:
    api = import_workrb()

    class WorkembedRankingTask(api.RankingTask):
        """WorkRB ranking task over workembed ranking datasets; ``meta.json``'s ``language`` (queries) and
        ``corpus_language`` (targets; default: ``language``) give each dataset's languages (default ``en``).
        Every split reads the same datasets."""

        def __init__(
            self,
            datasets: Sequence[RankingDataset],
            *,
            name: str = "workembed",
            task_group: str = "rank_skill_extraction",
            query_input_type: str = "skill_sentence",
            target_input_type: str = "skill_name",
            gain: Gain = "linear",
            languages: list[str] | None = None,
            split: str = "test",
        ):
            if not datasets:
                raise ConfigError("datasets is empty: give at least one ranking dataset")
            check_distinct_names(datasets)
            if gain not in ("linear", "exponential"):
                raise ConfigError(f"gain must be 'linear' or 'exponential', got {gain!r}")
            self._sources = {dataset.name: dataset for dataset in datasets}
            self._languages = {dataset.name: _dataset_languages(api, dataset) for dataset in datasets}
            self._name = name
            self._task_group = api.RankingTaskGroup(task_group)
            self._query_input_type = api.ModelInputType(query_input_type)
            self._target_input_type = api.ModelInputType(target_input_type)
            self._gain = gain
            super().__init__(languages=languages, split=split)

        @property
        def name(self) -> str:
            return self._name

        @property
        def description(self) -> str:
            return f"workembed ranking datasets: {', '.join(self._sources)}"

        @property
        def supported_query_languages(self):
            return sorted({code for pair in self._languages.values() for code in pair.input_languages})

        @property
        def supported_target_languages(self):
            return sorted({code for pair in self._languages.values() for code in pair.output_languages})

        @property
        def task_group(self):
            return self._task_group

        @property
        def label_type(self):
            return api.LabelType.MULTI_LABEL

        @property
        def query_input_type(self):
            return self._query_input_type

        @property
        def target_input_type(self):
            return self._target_input_type

        def languages_to_dataset_ids(self, languages) -> list[str]:
            wanted = set(languages)
            return [
                name
                for name, pair in self._languages.items()
                if pair.input_languages <= wanted and pair.output_languages <= wanted
            ]

        def get_dataset_languages(self, dataset_id: str):
            return self._languages[dataset_id]

        def load_dataset(self, dataset_id: str, split):
            return to_workrb_dataset(self._sources[dataset_id], self._gain)

    WorkembedRankingTask.__module__ = __name__
    return WorkembedRankingTask


def to_workrb_dataset(dataset: RankingDataset, gain: Gain = "linear"):
    """The WorkRB ``RankingDataset`` of ``dataset``: its evaluable queries, the corpus in order (duplicates
    kept, so positions stay ids), positives with relevance :func:`workrb_relevance`."""
    api = import_workrb()
    position = {doc: index for index, doc in enumerate(dataset.corpus)}
    queries = dataset.evaluable_queries()
    positives = [dataset.positives(qid) for qid in queries]
    return api.RankingDataset(
        query_texts=[dataset.queries[qid] for qid in queries],
        target_indices=[[position[doc] for doc in docs] for docs in positives],
        target_space=list(dataset.corpus.values()),
        dataset_id=dataset.name,
        target_relevance=[[workrb_relevance(grade, gain) for grade in docs.values()] for docs in positives],
        duplicate_query_strategy=api.DuplicateStrategy.ALLOW,
        duplicate_target_strategy=api.DuplicateStrategy.ALLOW,
    )


def _dataset_languages(api: SimpleNamespace, dataset: RankingDataset):
    query_code = str(dataset.meta.get("language", "en"))
    target_code = str(dataset.meta.get("corpus_language", query_code))
    try:
        query_language, target_language = api.Language(query_code), api.Language(target_code)
    except ValueError:
        known = ", ".join(language.value for language in api.Language)
        raise DatasetError(
            f"dataset {dataset.name}: meta.json language {query_code!r} / corpus_language {target_code!r} "
            f"is not a WorkRB language ({known})"
        ) from None
    return api.DatasetLanguages(frozenset({query_language}), frozenset({target_language}))
