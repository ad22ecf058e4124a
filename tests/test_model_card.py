"""The model card from hand-built reports (exact target verdicts and table cells), and the reference recipe
skipping every step whose output is already there."""

import json
import logging
from pathlib import Path

import pytest

from workembed.model_card import (
    CARD_FILE,
    CURVES_FILE,
    CardInputs,
    model_card,
    target_checks,
    training_time,
    write_model_card,
)
from workembed.reference import DEV_SETS, ESCO_TASKS, ReferenceConfig, run_reference

ROOT = Path(__file__).resolve().parents[1]
MODEL, ZERO = "runs/models/reference", "minilm"


def report(system: str, values: dict[str, dict[str, float]], bm25: float | None = None) -> dict:
    results = {}
    for dataset, metrics in values.items():
        results[dataset] = {system: metrics}
        if bm25 is not None:
            results[dataset]["bm25"] = {"map": bm25, "mrr": bm25, "rp@5": bm25}
    return {"model": system, "results": results}


MODEL_FIGURES = {
    "job-skill": {"map": 0.20, "mrr": 0.7, "rp@5": 0.5},  # +0.10 over zero-shot: met
    "skill-job": {"map": 0.30, "mrr": 0.5, "rp@5": 0.4},  # +0.03: missed
    "skill-normalization": {"map": 0.90, "mrr": 0.9, "rp@5": 0.9},  # exactly +0.05: met
    "job-normalization": {"map": 0.70, "mrr": 0.7, "rp@5": 0.8},
    "skill-extraction-tech": {"map": 0.5, "mrr": 0.6, "rp@5": 0.61},
    "skill-extraction-house": {
        "map": 0.3,
        "mrr": 0.5,
        "rp@5": 0.49,
    },  # below 0.50: missed; MAP below zero-shot
    "jobbert-titles": {"map": 0.4, "mrr": 0.55, "rp@5": 0.5},
}
ZERO_FIGURES = {
    "job-skill": {"map": 0.10, "mrr": 0.6, "rp@5": 0.3},
    "skill-job": {"map": 0.27, "mrr": 0.5, "rp@5": 0.4},
    "skill-normalization": {"map": 0.85, "mrr": 0.8, "rp@5": 0.9},
    "job-normalization": {"map": 0.60, "mrr": 0.6, "rp@5": 0.7},
    "skill-extraction-tech": {"map": 0.4, "mrr": 0.5, "rp@5": 0.52},
    "skill-extraction-house": {"map": 0.35, "mrr": 0.4, "rp@5": 0.48},
    "jobbert-titles": {"map": 0.3, "mrr": 0.33, "rp@5": 0.4},
}


def inputs(**extra) -> CardInputs:
    return CardInputs(
        name="reference",
        model=MODEL,
        zero_shot=ZERO,
        evaluation=report(MODEL, MODEL_FIGURES, bm25=0.25),
        zero_shot_evaluation=report(ZERO, ZERO_FIGURES),
        **extra,
    )


def test_every_target_is_judged_on_its_figure():
    verdicts = {check["check"]: check["met"] for check in target_checks(inputs())}
    assert verdicts == {
        "skill-extraction-tech rp@5 ≥ 0.6": True,
        "skill-extraction-house rp@5 ≥ 0.5": False,
        "jobbert-titles mrr ≥ 0.55": True,
        "job-skill MAP ≥ zero-shot + 0.05": True,
        "skill-job MAP ≥ zero-shot + 0.05": False,
        "skill-normalization MAP ≥ zero-shot + 0.05": True,
        "job-normalization MAP ≥ zero-shot + 0.05": True,
        "skill-extraction-tech MAP ≥ zero-shot": True,
        "skill-extraction-house MAP ≥ zero-shot": False,
        "jobbert-titles MAP ≥ zero-shot": True,
    }
    missing = inputs()
    del missing.evaluation["results"]["jobbert-titles"]
    assert {c["check"]: c["met"] for c in target_checks(missing)}["jobbert-titles mrr ≥ 0.55"] is False


def test_the_card_holds_the_tables_and_the_curves(tmp_path):
    card = model_card(inputs())
    assert "| skill-job MAP ≥ zero-shot + 0.05 | 0.300 | 0.270 | **no** |" in card
    assert "| skill-extraction-house rp@5 ≥ 0.5 | 0.490 | 0.480 | **no** |" in card
    assert "| job-skill | 0.100 | 0.600 | 0.300 | 0.200 | 0.700 | 0.500 | 0.250 | 0.250 | 0.250 |" in card
    path = write_model_card(
        inputs(curves={"loss": [(1, 3.0), (2, 2.5)], "lr": [(1, 1e-5), (2, 2e-5)]}), tmp_path
    )
    assert path == tmp_path / CARD_FILE
    assert (tmp_path / CURVES_FILE).read_bytes().startswith(b"\x89PNG")
    assert f"![training curves]({CURVES_FILE})" in path.read_text()
    assert not (write_model_card(inputs(), tmp_path / "no-curves").parent / CURVES_FILE).exists()


def test_training_time_is_the_logged_steps_mean_time_times_the_steps():
    # logged steps of 100 pairs at 50, 25 (logged twice: resumed, the last value counts) and 100 pairs/s:
    # 2, 4 and 1 s, a mean of 7/3 s per step; 30 steps take 70 s
    curves = {"pairs_per_s": [(5, 50.0), (10, 10.0), (10, 25.0), (15, 100.0)]}
    timing = training_time(curves, 100, 30)
    assert timing == {"steps": 30, "logged": 3, "minutes": 70 / 60, "pairs_per_s": 300 / 7}
    assert training_time({}, 100, 30) is None and training_time(curves, None, 30) is None
    card = model_card(inputs(curves=curves, training={"config": {"batch_size": 100, "steps": 30}}))
    assert (
        "30 steps in 1.2 minutes of training steps (42.9 pairs/s: the mean measured time of the 3 logged"
        in card
    )


def test_the_recipe_skips_every_step_whose_output_exists(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    tasks = tmp_path / "eval-tasks"
    (tasks / "esco").mkdir(parents=True)
    (tasks / "esco" / "split.json").write_text("{}")
    for name in DEV_SETS:
        (tasks / "benchmarks" / name).mkdir(parents=True)
    (tmp_path / "runs" / "ingest" / "reference").mkdir(parents=True)
    (tmp_path / "runs" / "ingest" / "reference" / "summary.json").write_text("{}")
    model = tmp_path / "runs" / "models" / "reference"
    model.mkdir(parents=True)
    (model / "workembed.json").write_text("{}")
    (model / "skill_filter.json").write_text("{}")
    filter_report = {
        "train": {"used": 10, "benchmark_sentences_dropped": 2},
        "dev": {"sentences": 4, "with_skill": 2, "precision": 0.5, "recall": 1.0, "dropped": 0.0},
    }
    (model / "skill_filter_report.json").write_text(json.dumps(filter_report))
    out = tmp_path / "reports"
    out.mkdir()
    (out / "model.json").write_text(json.dumps(report(str(model), MODEL_FIGURES, bm25=0.2)))
    (out / "zero-shot.json").write_text(json.dumps(report(ZERO, ZERO_FIGURES)))
    for name in ("model-extraction", "zero-shot-extraction"):
        (out / f"{name}.json").write_text(json.dumps({"results": {}}))
    (out / "heads").mkdir()
    for head, value in (("mean", 0.2), ("late-interaction", 0.3)):
        system = f"runs/models/reference-{head}"
        figures = {"job-skill": {"map": value}, "skillskape-dev": {"map": value + 0.1}}
        (out / "heads" / f"{head}.json").write_text(json.dumps(report(system, figures)))
    registry = {
        "tracking_uri": "sqlite:///runs/reference/mlflow.db",
        "name": "workembed-reference",
        "version": "3",
        "alias": "champion",
        "threshold": 0.41,
        "holder": "workembed-reference version 2",
        "decision": "refused",
        "reasons": ["1 gate metric(s) dropped by more than 0.005"],
        "gate": [
            {
                "dataset": "job-skill",
                "metric": "map",
                "holder": 0.3,
                "candidate": 0.29,
                "diff": -0.01,
                "verdict": "regressed",
            }
        ],
    }
    (out / "registry.json").write_text(json.dumps(registry))
    config = ReferenceConfig(
        train=str(ROOT / "jobs/configs/train_reference.yaml"),
        ingest=str(ROOT / "jobs/configs/ingest.yaml"),
        filter=str(ROOT / "jobs/configs/filter.yaml"),
        tasks=str(tasks),
        out=str(out),
    )
    caplog.set_level(logging.INFO, logger="workembed")
    result = run_reference(config)
    said = [record.getMessage() for record in caplog.records if record.name == "workembed.reference"]
    assert said == [f"model card: {out / CARD_FILE}"]  # nothing but the card was made
    card = (out / CARD_FILE).read_text()
    assert "precision 0.500, recall 1.000" in card
    assert "## Head comparison (MAP, 60 training steps each)" in card
    assert "| late-interaction | 0.300 | 0.400 |" in card
    assert "version 3 (sqlite:///runs/reference/mlflow.db); extraction threshold 0.410" in card
    assert "against workembed-reference version 2: **refused** (1 gate metric(s) dropped" in card
    assert "| job-skill | map | 0.300 | 0.290 | -0.010 | regressed |" in card
    assert '"steps": 280' in card and "MODEL_CARD" not in result["model"]
    assert set(ESCO_TASKS) <= set(json.loads((out / "model.json").read_text())["results"])


def test_the_recipe_trains_with_the_guards_the_issue_asks_for():
    from workembed.config import load_config
    from workembed.train.config import TrainConfig

    recipe = load_config(TrainConfig, ROOT / "jobs/configs/train_reference.yaml")
    assert recipe.batch_size >= 1024 and recipe.grad_cache
    assert recipe.data.benchmarks is not None and recipe.data.split is not None
    assert recipe.data.skillskape is not None and "skill-sentence" in recipe.data.tasks
    with pytest.raises(Exception, match="give an `esco` export"):
        load_config(
            TrainConfig, ROOT / "jobs/configs/train_reference.yaml", ["data.esco=null", "data.edges=[x]"]
        )
