"""Fixtures of the registry tests: hand-built gate and calibration datasets and a registry config on the
real MLflow server.

On the gate datasets minilm ranks every query's one relevant target first (MAP = MRR = 1) and the tiny
random BERT does not; the calibration datasets are skill-extraction sets over five skills.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from workembed.registry import RegistryConfig
from workembed.retrieval.ranking_dataset import write_dataset

JOBS = {
    "nurse": "registered nurse caring for patients in a hospital ward",
    "developer": "software developer writing Python code",
    "driver": "truck driver delivering goods across the country",
    "chef": "chef cooking meals in a restaurant kitchen",
    "accountant": "accountant preparing tax returns and balance sheets",
}
JOB_QUERIES = {
    "q1": ("nursing", "nurse"),
    "q2": ("computer programming", "developer"),
    "q3": ("driving lorries", "driver"),
    "q4": ("preparing food", "chef"),
    "q5": ("bookkeeping and taxes", "accountant"),
}
SKILLS = {
    "python": "Python programming",
    "care": "patient care",
    "trucks": "driving heavy trucks",
    "cook": "cooking",
    "tax": "tax accounting",
}
SKILL_QUERIES = {
    "a1": ("caring for the sick", "care"),
    "a2": ("coding software", "python"),
    "a3": ("lorry driving", "trucks"),
    "a4": ("kitchen work", "cook"),
    "a5": ("financial bookkeeping", "tax"),
}
SENTENCES = {
    "s1": ("We write backend services in Python", "python"),
    "s2": ("You will look after patients on the ward", "care"),
    "s3": ("Must hold a licence to drive heavy trucks", "trucks"),
    "s4": ("Prepare and cook dishes for our guests", "cook"),
    "s5": ("Prepare annual tax returns for clients", "tax"),
    "s6": ("Experience with Python scripting is a plus", "python"),
}
CALIBRATION_SPLITS = {"extract-a": ("s1", "s2", "s3", "s4"), "extract-b": ("s5", "s6", "s2", "s3")}


def write_ranking(folder: Path, queries: dict[str, tuple[str, str]], corpus: dict[str, str]) -> str:
    texts = {qid: text for qid, (text, _) in queries.items()}
    qrels = {qid: {target: 1} for qid, (_, target) in queries.items()}
    return str(write_dataset(folder, texts, corpus, qrels))


@pytest.fixture(scope="session")
def registry_data(tmp_path_factory) -> dict[str, list[str]]:
    """``{"gate": [two ranking datasets], "calibration": [two skill-extraction datasets]}``."""
    root = tmp_path_factory.mktemp("registry-data")
    gate = [
        write_ranking(root / "gate-jobs", JOB_QUERIES, JOBS),
        write_ranking(root / "gate-skills", SKILL_QUERIES, SKILLS),
    ]
    calibration = [
        write_ranking(root / name, {qid: SENTENCES[qid] for qid in ids}, SKILLS)
        for name, ids in CALIBRATION_SPLITS.items()
    ]
    return {"gate": gate, "calibration": calibration}


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    """Registered versions are downloaded into a private cache, not ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORKEMBED_MODEL_CACHE", str(tmp_path_factory.mktemp("model-cache")))
        yield


@pytest.fixture(scope="session")
def make_config(mlflow_server, registry_data, tmp_path_factory):
    """``make_config(**overrides)``: a RegistryConfig on the test server with a fresh model name, the
    hand-built datasets (calibration grid of 20 steps) and a private target cache."""
    cache = tmp_path_factory.mktemp("targets")

    def make(**overrides) -> RegistryConfig:
        values = {
            "tracking_uri": mlflow_server,
            "name": f"wm-{uuid.uuid4().hex[:8]}",
            "cache_dir": str(cache),
            "calibration": {"datasets": registry_data["calibration"], "grid": 20},
            "gate": {"datasets": registry_data["gate"]},
        }
        return RegistryConfig.model_validate(values | overrides)

    return make
