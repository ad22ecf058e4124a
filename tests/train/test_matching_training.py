"""Malt two-tower training: held-out projects, batches as a pure function of (seed, step), section documents,
and a 2-worker ZeRO-2 run whose section model is evaluated on the held-out projects."""

import hashlib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.data.test_matching import P1, P2, write
from tests.eval.test_matching_eval import INTERACTIONS, PROFILES, PROJECTS
from tests.train.test_trainer import make_config
from workembed.data.matching import held_out_projects
from workembed.eval.matching_eval import MatchingEvalConfig, run_matching_eval
from workembed.models.document_model import (
    DESCRIPTION,
    RESUME,
    SKILLS,
    TITLE,
    DocumentModel,
    profile_document,
    project_document,
)
from workembed.models.heads import HeadConfig
from workembed.retrieval.matching_dataset import Item
from workembed.train.config import MatchingTrainConfig
from workembed.train.loop import batch_digest
from workembed.train.matching import MatchingGraph
from workembed.train.trainer import run_train

SECTION_HEAD = {"name": "section", "num_section_types": 4, "transformer_layers": 1, "attention_heads": 2}


def graph(**settings) -> MatchingGraph:
    return MatchingGraph(PROJECTS, PROFILES, INTERACTIONS, MatchingTrainConfig(held_out=0, **settings))


def test_held_out_projects_are_a_pure_function_of_ids_share_and_seed():
    ids = [f"p{i}" for i in range(100)]
    held = held_out_projects(ids, 0.2, seed=3)
    assert len(held) == 20 and held == held_out_projects(list(reversed(ids)), 0.2, seed=3)
    assert held != held_out_projects(ids, 0.2, seed=4)
    assert held_out_projects(ids, 0.0) == frozenset()
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        held_out_projects(ids, 1.0)


def test_batches_draw_training_projects_with_their_labelled_profiles():
    labelled = graph(positives_per_project=1, negatives_per_project=1)
    # p1..p4 all have a positive; none is held out
    assert sorted(labelled.projects[i].id for i in labelled.train_projects) == ["p1", "p2", "p3", "p4"]
    first = labelled.batch(seed=5, step=3, size=2)
    again = labelled.batch(seed=5, step=3, size=2)
    assert batch_digest(first) == batch_digest(again)
    assert {batch_digest(labelled.batch(5, step, 2)) for step in range(6)} != {batch_digest(first)}
    for project, drawn in zip(first.projects, first.profiles, strict=True):
        labels = [labelled.labels[int(project), int(j)] for j in drawn]
        assert labels[0] == 1 and labels.count(1) == 1 and labels.count(-1) <= 1
    with pytest.raises(ValueError, match="exceeds the 4 training projects"):
        labelled.batch(0, 0, 5)


def test_held_out_projects_never_reach_a_batch():
    config = MatchingTrainConfig(held_out=0.5, split_seed=1)
    split = MatchingGraph(PROJECTS, PROFILES, INTERACTIONS, config)
    held = held_out_projects([p.id for p in PROJECTS], 0.5, 1)
    assert len(held) == 2
    for step in range(20):
        batch = split.batch(0, step, 2)
        assert not {PROJECTS[i].id for i in batch.projects} & held


def test_label_matrix_and_worker_shards():
    labelled = graph()
    p1, p2 = 0, 1  # PROJECTS order; profiles r1 (Data Science), r2 (HR), r3 (Java Developer)
    assert graph(weak_negatives=False).label_matrix([p1, p2], [0, 1, 2]).tolist() == [[1, -1, 0], [0, 1, -1]]
    # unlabelled pairs of incompatible categories are weak negatives: p1 (data) vs r3, p2 (people) vs r1
    assert labelled.label_matrix([p1, p2], [0, 1, 2]).tolist() == [[1, -1, -1], [-1, 1, -1]]
    batch = labelled.batch(0, 0, 4)
    shards = [batch.shard(rank, 2) for rank in range(2)]
    assert [len(projects) for projects, _ in shards] == [2, 2]
    assert sorted(i for projects, _ in shards for i in projects) == sorted(batch.projects.tolist())
    for rank, (_, profiles) in enumerate(shards):
        drawn = {int(j) for k in range(2 * rank, 2 * rank + 2) for j in batch.profiles[k]}
        assert set(profiles) == drawn


def test_documents_have_the_section_structure():
    project = Item(
        "p", "Data Visualization", frozenset({"python", "sql"}), "Dashboard\n\nBuild it in Tableau."
    )
    assert project_document(project) == [
        (TITLE, "Dashboard"),
        (DESCRIPTION, "Build it in Tableau."),
        (SKILLS, "python, sql"),
    ]
    assert profile_document(PROFILES[0]) == [(RESUME, PROFILES[0].text)]


def test_a_document_model_folder_round_trips(tiny_bert, tmp_path):
    torch.manual_seed(0)
    model = DocumentModel.build(tiny_bert, HeadConfig(**SECTION_HEAD), max_section_length=16)
    documents = [project_document(PROJECTS[0]), profile_document(PROFILES[0])]
    folder = model.save(tmp_path / "model")
    loaded = DocumentModel.load(folder)
    np.testing.assert_allclose(loaded.embed(documents), model.embed(documents), atol=1e-6)
    assert loaded.max_section_length == 16
    from workembed.models import Encoder

    with pytest.raises(ValueError, match="section document model"):
        Encoder(folder)


def test_cached_sections_give_the_same_embeddings_with_one_backbone_pass_per_section(tiny_bert):
    torch.manual_seed(0)
    model = DocumentModel.build(tiny_bert, HeadConfig(**SECTION_HEAD), max_section_length=16).eval()
    documents = [project_document(p) for p in PROJECTS] + [profile_document(p) for p in PROFILES]
    plain = model(documents).detach()
    passes = []
    model.backbone.register_forward_hook(
        lambda module, args, output: passes.append(len(args[0] if args else []))
    )
    model.cache_sections = True
    first = model(documents).detach()
    model(documents[:3])  # sections seen before: no backbone pass
    torch.testing.assert_close(first, plain, atol=1e-5, rtol=1e-5)
    assert len(passes) == 1


@pytest.mark.usefixtures("ray_session")
def test_two_zero2_workers_train_the_section_head_and_the_model_ranks_held_out_projects(tmp_path, tiny_bert):
    folder = write(tmp_path / "matching")  # projects P1 and P2 have positives, P3 none
    matching = {
        "source": {"directory": str(folder)},
        "held_out": 0,
        "positives_per_project": 2,
        "negatives_per_project": 1,
        "max_section_length": 16,
    }
    config = make_config(
        tmp_path,
        tiny_bert,
        "sections",
        steps=2,
        batch_size=2,
        data={"esco": None, "matching": matching},
        model={"head": SECTION_HEAD},
        optim={"lr": 1e-2},
    )
    result = run_train(config)

    trained = load_file(f"{result['model']}/model.safetensors")
    initial = {
        k: v for k, v in load_file(tiny_bert / "model.safetensors").items() if not k.startswith("pooler.")
    }
    assert trained.keys() == initial.keys()
    assert all(torch.equal(trained[k], initial[k]) for k in initial)  # the backbone is frozen
    torch.manual_seed(config.seed)  # the head every worker starts from
    start = DocumentModel.build(tiny_bert, HeadConfig(**SECTION_HEAD), 16).head.state_dict()
    head = load_file(f"{result['model']}/head.safetensors")
    assert any(not torch.allclose(head[k], start[k]) for k in start)  # the head learned
    assert np.isfinite(result["metrics"]["loss"])

    split = MatchingGraph.from_folder(folder, config.data.matching)
    assert sorted(split.projects[i].id for i in split.train_projects) == sorted([P1, P2])
    expected = [batch_digest(split.batch(config.seed, step, 2)) for step in range(2)]
    assert result["state"]["batches_digest"] == hashlib.sha256("\n".join(expected).encode()).hexdigest()

    # evaluation on the projects a run with held_out 0.5 would hold apart, ranked by the section model
    held = held_out_projects([p.id for p in split.projects], 0.5, 0)
    evaluation = MatchingEvalConfig(model=result["model"], data=str(folder), ks=[1, 5], held_out=0.5)
    report = run_matching_eval(evaluation)
    assert report["dataset"]["projects"] == len(held) == 2
    metrics = report["results"][result["model"]]
    assert metrics["valid_recall_all@5"] == 1.0  # all 5 profiles ranked: every positive is found
