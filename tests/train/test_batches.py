"""The multi-task sampler: deterministic batches, no duplicate texts per side, graph positives, held-out."""

import numpy as np
import pyarrow as pa
import pytest

from workembed.data.graph import EDGE_SCHEMA
from workembed.train.batches import EdgeGraph


def edges(rows):
    names = EDGE_SCHEMA.names
    return pa.Table.from_pylist([dict(zip(names, row, strict=True)) for row in rows], schema=EDGE_SCHEMA)


def skill_alt(skill, index, alt, label, origin="esco"):
    return ("skill-alt", f"{skill}#alt{index}", alt, skill, label, 1.0, origin)


def skill_job(job, job_label, skill, label, weight=1.0):
    return ("skill-job", job, job_label, skill, label, weight, "esco")


GRAPH = edges(
    [
        skill_alt("s:py", 0, "python coding", "Python"),
        skill_alt("s:py", 1, "Python programming", "Python"),
        skill_alt("s:sql", 0, "structured query language", "SQL"),
        skill_alt("s:java", 0, "java coding", "Java"),
        skill_alt("s:excel", 0, "spreadsheets", "Excel"),
        skill_job("o:dev", "software developer", "s:py", "Python"),
        skill_job("o:dev", "software developer", "s:sql", "SQL", 0.5),
        skill_job("o:dev", "software developer", "s:java", "Java"),
        skill_job("o:dba", "database administrator", "s:sql", "SQL"),
        skill_job("o:acc", "accountant", "s:excel", "Excel"),
        ("project-profile", "p:1", "build a site", "r:1", "web developer", -1.0, "vacancy"),
        ("job-alt", "o:dev#alt0", "coder", "o:dev", "software developer", 1.0, "esco"),
    ]
)
TASKS = {"skill-alt": 1.0, "skill-job": 1.0}


def test_batches_are_a_pure_function_of_seed_and_step_whatever_the_row_order():
    graph = EdgeGraph(GRAPH, TASKS)
    shuffled = EdgeGraph.from_batches([GRAPH.slice(6), GRAPH.slice(0, 6)], TASKS)
    for step in range(5):
        a, b = graph.batch(seed=3, step=step, size=3), shuffled.batch(seed=3, step=step, size=3)
        assert a.rows.tolist() == b.rows.tolist()
        assert a.left == b.left and a.right == b.right
    assert any(graph.batch(3, s, 3).rows.tolist() != graph.batch(3, 0, 3).rows.tolist() for s in range(1, 5))
    assert any(graph.batch(4, s, 3).rows.tolist() != graph.batch(3, s, 3).rows.tolist() for s in range(5))


def test_no_two_items_with_the_same_text_or_concept_on_one_side():
    graph = EdgeGraph(GRAPH, TASKS)
    for step in range(50):
        batch = graph.batch(seed=0, step=step, size=4)
        assert len({t.casefold() for t in batch.left}) == 4
        assert len({t.casefold() for t in batch.right}) == 4
        assert len({graph.right_id[r] for r in batch.rows}) == 4


def test_positive_mask_comes_from_the_graph_not_the_diagonal():
    graph = EdgeGraph(GRAPH, TASKS)

    def row(left, right_id):
        return next(
            i for i in range(len(graph)) if (graph.left_text[i], graph.right_id[i]) == (left, right_id)
        )

    rows = np.array(
        [
            row("software developer", "s:py"),
            row("structured query language", "s:sql"),
            row("java coding", "s:java"),
            row("accountant", "s:excel"),
        ]
    )
    expected = np.array(
        [
            [1, 1, 1, 0],  # software developer requires Python, SQL and Java
            [0, 1, 0, 0],
            [0, 0, 1, 0],
            [0, 0, 0, 1],
        ],
        dtype=bool,
    )
    assert (graph.positives(rows) == expected).all()


def test_filters_and_held_out_concepts_drop_every_touching_edge():
    with pytest.raises(ValueError, match="project-profile"):
        EdgeGraph(GRAPH, {"skill-alt": 1.0, "project-profile": 1.0})  # its only edge is a -1 negative
    graph = EdgeGraph(GRAPH, TASKS, held_out={"o:dev", "s:java"})
    assert graph.summary.kept == {"skill-alt": 4, "skill-job": 2}
    assert graph.summary.dropped == {"other_task": 2, "held_out": 4}
    assert graph.summary.rows_in == 12
    assert not {"o:dev", "s:java"} & set(graph.right_id)
    assert "software developer" not in graph.left_text


def test_edges_with_a_benchmark_text_are_dropped_whichever_side_holds_it():
    from workembed.retrieval.leakage import text_key

    excluded = {text_key("Python!"), text_key("Database Administrator")}
    graph = EdgeGraph(GRAPH, TASKS, excluded_texts=excluded)
    # the 3 edges into skill "Python" (right text) and the one from "database administrator" (left text)
    assert graph.summary.dropped == {"other_task": 2, "benchmark_text": 4}
    assert "Python" not in graph.right_text and "database administrator" not in graph.left_text


def test_a_task_too_small_for_the_batch_is_a_clear_error():
    graph = EdgeGraph(GRAPH, {"skill-job": 1.0})
    with pytest.raises(ValueError, match="too few distinct texts"):
        graph.batch(seed=0, step=0, size=5)  # only 4 distinct skills exist on the right


def test_shards_split_the_global_batch():
    batch = EdgeGraph(GRAPH, TASKS).batch(seed=1, step=0, size=4)
    assert [batch.shard(r, 2) for r in range(2)] == [slice(0, 2), slice(2, 4)]
    with pytest.raises(ValueError):
        batch.shard(0, 3)
