"""Multi-task contrastive batches drawn from the training graph.

The graph is every kept ``edges`` row held in memory, sorted, so that a batch is a pure function of
``(seed, step)`` and the data: a resumed run sees exactly the batches an uninterrupted one would, and every
worker computes the same global batch and takes its own slice.

A batch of ``B`` pairs draws its task mix from ``Multinomial(B, weights)`` and, per slot, edges of that
task uniformly (another task's when it has none left), skipping an edge whose left text, right text or right
concept is already on its side of the batch (a duplicate would be a false negative). ``positives[i, j]`` is
true when left ``i`` and right ``j`` are connected by any kept edge of any task, not only on the diagonal.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from workembed.data.graph import EDGE_SCHEMA
from workembed.errors import ConfigError, DatasetError

MAX_DRAWS_PER_SLOT = 64
_SPACES = re.compile(r"\s+")


def text_key(text: str) -> str:
    """The identity of a text for duplicate checks: case-folded, whitespace collapsed."""
    return _SPACES.sub(" ", text).strip().casefold()


def concept_of(edge_id: str) -> str:
    """The concept an edge end belongs to: ``<uri>#alt3`` → ``<uri>``."""
    return edge_id.split("#", 1)[0]


@dataclass(frozen=True)
class Batch:
    """One logical batch: ``B`` (left, right) pairs, their task and row in the graph, and the positives."""

    step: int
    rows: np.ndarray  # [B] graph rows (edge ids), the batch's identity
    tasks: np.ndarray  # [B] task index per pair (into EdgeGraph.tasks)
    left: list[str]
    right: list[str]
    positives: np.ndarray  # [B, B] bool

    def __len__(self) -> int:
        return len(self.rows)

    def shard(self, rank: int, world_size: int) -> slice:
        """The contiguous rows worker ``rank`` of ``world_size`` encodes."""
        if len(self) % world_size:
            raise ConfigError(f"a batch of {len(self)} does not split over {world_size} workers")
        size = len(self) // world_size
        return slice(rank * size, (rank + 1) * size)


@dataclass
class GraphSummary:
    """What the graph kept and dropped, by reason."""

    rows_in: int = 0
    kept: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, count: int) -> None:
        if count:
            self.dropped[reason] = self.dropped.get(reason, 0) + count

    def as_dict(self) -> dict:
        return {"rows_in": self.rows_in, "kept": dict(self.kept), "dropped": dict(self.dropped)}


class EdgeGraph:
    """The kept training edges, sorted and de-duplicated, with their adjacency."""

    def __init__(
        self,
        table: pa.Table,
        tasks: Mapping[str, float],
        *,
        held_out: Collection[str] = frozenset(),
        origins: Collection[str] | None = None,
        min_weight: float = 0.0,
        excluded_texts: Collection[str] = frozenset(),
    ):
        """``tasks`` maps task name → sampling weight; ``held_out`` holds concept URIs whose edges go, as do
        the edges with a text whose :func:`workembed.retrieval.leakage.text_key` is in ``excluded_texts``
        (benchmark sentences and titles)."""
        if not tasks:
            raise ConfigError("no task to sample from")
        missing = [name for name in EDGE_SCHEMA.names if name not in table.column_names]
        if missing:
            raise DatasetError(f"edges lack column(s) {', '.join(missing)}")
        self.summary = GraphSummary(rows_in=table.num_rows)
        table = self._filter(table.select(EDGE_SCHEMA.names).cast(EDGE_SCHEMA), tasks, origins, min_weight)
        table = self._drop_held_out(table, frozenset(held_out))
        table = self._drop_texts(table, frozenset(excluded_texts))
        table = table.sort_by([(name, "ascending") for name in ("task", "left_id", "right_id", "left_text")])
        self.left_text: list[str] = table.column("left_text").to_pylist()
        self.right_text: list[str] = table.column("right_text").to_pylist()
        self.right_id: list[str] = table.column("right_id").to_pylist()
        task_names = table.column("task").to_pylist()
        self.tasks = [name for name in tasks if name in set(task_names)]
        empty = sorted(set(tasks) - set(self.tasks))
        if empty:
            raise DatasetError(
                f"no training edge left for task(s) {', '.join(empty)} (see the graph summary)"
            )
        index = {name: i for i, name in enumerate(self.tasks)}
        task_of = np.fromiter((index[name] for name in task_names), dtype=np.int64, count=len(task_names))
        self.task_rows = [np.flatnonzero(task_of == i) for i in range(len(self.tasks))]
        self.task_of = task_of
        weights = np.array([tasks[name] for name in self.tasks], dtype=np.float64)
        self.weights = weights / weights.sum()
        self.left_key = [text_key(text) for text in self.left_text]
        self.right_key = [text_key(text) for text in self.right_text]
        self.adjacency: dict[str, set[str]] = {}
        for left, right in zip(self.left_key, self.right_id, strict=True):
            self.adjacency.setdefault(left, set()).add(right)
        self.summary.kept = {name: len(rows) for name, rows in zip(self.tasks, self.task_rows, strict=True)}

    def __len__(self) -> int:
        return len(self.left_text)

    def fingerprint(self) -> str:
        """SHA-256 of the kept edges (task, ids and texts, in graph order): the training data's identity."""
        digest = hashlib.sha256()
        for row in range(len(self)):
            fields = (
                self.tasks[self.task_of[row]],
                self.left_text[row],
                self.right_id[row],
                self.right_text[row],
            )
            digest.update("\x1f".join(fields).encode() + b"\x1e")
        return digest.hexdigest()

    @classmethod
    def from_batches(cls, batches: Iterable[pa.Table], tasks: Mapping[str, float], **kwargs) -> EdgeGraph:
        """Build from record batches / tables (e.g. a Ray Data iterator); the order does not matter."""
        parts = [pa.Table.from_batches([b]) if isinstance(b, pa.RecordBatch) else b for b in batches]
        parts = [part.select(EDGE_SCHEMA.names).cast(EDGE_SCHEMA) for part in parts if part.num_rows]
        return cls(pa.concat_tables(parts) if parts else EDGE_SCHEMA.empty_table(), tasks, **kwargs)

    def _filter(self, table, tasks, origins, min_weight) -> pa.Table:
        keep_task = pc.is_in(table.column("task"), pa.array(list(tasks)))
        self.summary.drop("other_task", table.num_rows - pc.sum(keep_task).as_py())
        table = table.filter(keep_task)
        if origins is not None:
            keep = pc.is_in(table.column("origin"), pa.array(list(origins)))
            self.summary.drop("origin", table.num_rows - (pc.sum(keep).as_py() or 0))
            table = table.filter(keep)
        keep = pc.greater_equal(table.column("weight"), pa.scalar(min_weight, pa.float32()))
        self.summary.drop("below_min_weight", table.num_rows - (pc.sum(keep).as_py() or 0))
        table = table.filter(keep)
        texts_present = pc.and_(
            pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(table.column("left_text"))), 0),
            pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(table.column("right_text"))), 0),
        )
        texts_present = pc.fill_null(texts_present, False)
        self.summary.drop("empty_text", table.num_rows - (pc.sum(texts_present).as_py() or 0))
        table = table.filter(texts_present)
        before = table.num_rows
        keys = ["task", "left_id", "left_text", "right_id", "right_text"]
        grouped = table.group_by(keys, use_threads=False).aggregate([("weight", "max")])
        table = pa.table(
            {**{key: grouped.column(key) for key in keys}, "weight": grouped.column("weight_max")}
        )
        self.summary.drop("duplicate", before - table.num_rows)
        return table

    def _drop_held_out(self, table: pa.Table, held_out: frozenset[str]) -> pa.Table:
        if not held_out:
            return table
        pairs = zip(table.column("left_id").to_pylist(), table.column("right_id").to_pylist(), strict=True)
        touches = [concept_of(left) in held_out or concept_of(right) in held_out for left, right in pairs]
        return self._drop_rows(table, "held_out", touches)

    def _drop_texts(self, table: pa.Table, excluded: frozenset[str]) -> pa.Table:
        if not excluded:
            return table
        from workembed.retrieval.leakage import text_key as benchmark_key

        pairs = zip(
            table.column("left_text").to_pylist(), table.column("right_text").to_pylist(), strict=True
        )
        touches = [
            benchmark_key(left) in excluded or benchmark_key(right) in excluded for left, right in pairs
        ]
        return self._drop_rows(table, "benchmark_text", touches)

    def _drop_rows(self, table: pa.Table, reason: str, drop: list[bool]) -> pa.Table:
        self.summary.drop(reason, sum(drop))
        return table.filter(pa.array([not d for d in drop], pa.bool_()))

    # ------------------------------------------------------------------------------------- sampling

    def batch(self, seed: int, step: int, size: int) -> Batch:
        """The batch of ``step``: deterministic in ``(seed, step, size)`` and the graph."""
        rng = np.random.default_rng(np.random.SeedSequence([seed, step]))
        counts = rng.multinomial(size, self.weights)
        slots = rng.permutation(np.repeat(np.arange(len(self.tasks)), counts))
        seen_left: set[str] = set()
        seen_right: set[str] = set()
        rows = np.empty(size, dtype=np.int64)
        for position, task in enumerate(slots):
            rows[position] = self._draw(rng, int(task), seen_left, seen_right)
        left = [self.left_text[r] for r in rows]
        right = [self.right_text[r] for r in rows]
        return Batch(step, rows, self.task_of[rows], left, right, self.positives(rows))

    def _draw(self, rng: np.random.Generator, task: int, seen_left: set[str], seen_right: set[str]) -> int:
        """A row of ``task`` new to both sides of the batch; when the task has none left, another task's
        (in a random order), so that a small task never stops a run."""
        others = [int(t) for t in rng.permutation(len(self.tasks)) if t != task]
        for candidate_task in (task, *others):
            candidates = self.task_rows[candidate_task]
            for _ in range(MAX_DRAWS_PER_SLOT):
                row = int(candidates[rng.integers(len(candidates))])
                keys = (self.right_key[row], "id:" + self.right_id[row])
                if self.left_key[row] in seen_left or any(key in seen_right for key in keys):
                    continue
                seen_left.add(self.left_key[row])
                seen_right.update(keys)
                return row
        raise DatasetError(
            f"no task gave a pair with texts new to the batch in {MAX_DRAWS_PER_SLOT} draws each: the graph "
            f"has too few distinct texts for this batch_size"
        )

    def positives(self, rows: np.ndarray) -> np.ndarray:
        """``[len(rows), len(rows)]``: left of row i is connected to the right concept of row j."""
        column = {self.right_id[r]: j for j, r in enumerate(rows)}
        mask = np.zeros((len(rows), len(rows)), dtype=bool)
        for i, r in enumerate(rows):
            for right in self.adjacency[self.left_key[r]]:
                j = column.get(right)
                if j is not None:
                    mask[i, j] = True
        return mask
