"""`workembed pipeline run` submits stages as Ray jobs to a real local Ray head, stops at the first failure,
resumes a run without re-running finished stages, and addresses outputs by run id."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import environ, free_port
from workembed import services
from workembed.job_runner import PipelineConfig, PipelineError, read_state, run_pipeline, stages_to_run
from workembed.logs import JOB_LINE_PREFIX

ADS = [
    {"id": "p1", "title": "Python developer", "body": "You write clean Python code daily."},
    {"id": "p2", "title": "Database administrator", "body": "You maintain PostgreSQL databases."},
]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A real Ray head (Jobs API on 127.0.0.1) started and stopped by `workembed services`."""
    state = tmp_path_factory.mktemp("pipeline-ray")
    config = services.ServicesConfig.model_validate(
        {
            "state_dir": str(state),
            "mlflow": {"enabled": False},
            "s3": {"enabled": False},
            "ray": {
                "port": free_port(),
                "dashboard_port": free_port(),
                "client_port": free_port(),
                "agent_port": free_port(),
                "num_cpus": 6,
            },
        }
    )
    urls = services.up(config)
    with environ(services.ray_auth_env(config)):
        yield urls["ray"]
    services.down(config)


@pytest.fixture
def runner_lines():
    """The messages the pipeline runner logs during the test (a handler on its own logger: whatever an
    earlier test did to propagation or levels)."""
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("workembed.job_runner")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def _ingest_config(tmp_path: Path) -> Path:
    ads = tmp_path / "ads.jsonl"
    ads.write_text("".join(json.dumps(ad) + "\n" for ad in ADS), encoding="utf-8")
    config = {
        "esco": {"location": "builtin"},
        "sources": [
            {
                "name": "tiny",
                "paths": [str(ads)],
                "format": "jsonl",
                "language": "en",
                "columns": {"ad_id": "id", "title": "title", "description": "body"},
            }
        ],
        "ground": {"dense": False},
        "graph": {"matching": False},
        "ray": {"address": "auto"},
    }
    path = tmp_path / "ingest.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _pipeline(tmp_path: Path, ray_head: str, ingest_set: list[str]) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "address": ray_head,
            "run_id": "r1",
            "state_dir": str(tmp_path / "state"),
            "poll_s": 0.5,
            "runtime_env": {"working_dir": str(Path.cwd())},
            "stages": [
                {
                    "name": "ingest",
                    "config": str(_ingest_config(tmp_path)),
                    "set": ["run_id={run_id}", *ingest_set],
                }
            ],
        }
    )


@pytest.mark.slow
def test_failed_stage_stops_and_resume_finishes_the_run(ray_head, tmp_path, runner_lines):
    broken = _pipeline(tmp_path, ray_head, ["output=" + str(tmp_path / "out"), "no_such_field=1"])
    with pytest.raises(PipelineError) as failure:
        run_pipeline(broken)
    message = str(failure.value)
    assert "stage 'ingest' failed (job r1-ingest-1)" in message
    assert "no_such_field" in message  # the job's own error, from its log
    assert "--resume r1" in message
    assert read_state(broken, "r1")["stages"]["ingest"]["status"] == "FAILED"
    assert not (tmp_path / "out").exists()

    with pytest.raises(PipelineError, match="exists: resume it with --resume r1"):
        run_pipeline(broken)  # a run id is never reused by a new run

    fixed = _pipeline(tmp_path, ray_head, ["output=" + str(tmp_path / "out")])
    state = run_pipeline(fixed, resume="r1")
    entry = state["stages"]["ingest"]
    assert (entry["status"], entry["job_id"], entry["attempt"]) == ("SUCCEEDED", "r1-ingest-2", 2)
    assert "--set run_id=r1" in entry["entrypoint"]
    ads = pq.read_table(tmp_path / "out" / "r1" / "job_ads").to_pylist()
    assert sorted(ad["ad_id"] for ad in ads) == ["tiny:p1", "tiny:p2"]
    shown = [line.strip() for line in runner_lines if line.startswith("  ")]
    assert any(line.startswith("ingest run r1:") for line in shown)  # the job's workembed lines are shown
    log = Path(entry["log"]).read_text(encoding="utf-8")
    assert entry["log"].endswith("logs/ingest-2.log") and f"{JOB_LINE_PREFIX}ingest run r1:" in log
    assert "Running entrypoint for job r1-ingest-2" in log  # Ray's own lines go to the file only
    assert not any("Running entrypoint" in line or JOB_LINE_PREFIX in line for line in shown)

    assert stages_to_run(fixed, read_state(fixed, "r1"), None) == []
    with pytest.raises(PipelineError, match="already succeeded and would be overwritten"):
        run_pipeline(fixed, resume="r1", start="ingest")


def test_stage_order_rules(tmp_path):
    config = PipelineConfig.model_validate(
        {
            "stages": [
                {"name": "ingest", "config": "jobs/configs/ingest.yaml"},
                {"name": "train", "config": "jobs/configs/train.yaml", "set": ["run_name={run_id}"]},
            ]
        }
    )
    state = {"run_id": "r", "stages": {"ingest": {"status": "SUCCEEDED"}, "train": {"status": "FAILED"}}}
    assert [s.name for s in stages_to_run(config, state, None)] == ["train"]
    assert [s.name for s in stages_to_run(config, state, "train")] == ["train"]
    with pytest.raises(PipelineError, match="already succeeded"):
        stages_to_run(config, state, "ingest")
    with pytest.raises(PipelineError, match="earlier stage"):
        stages_to_run(config, {"run_id": "r", "stages": {}}, "train")
    with pytest.raises(PipelineError, match="not a stage"):
        stages_to_run(config, state, "serve")
    assert config.stages[1].entrypoint("r7", Path("/p")) == (
        "python -m jobs.train -c jobs/configs/train.yaml --set run_name=r7"
    )


def test_unknown_or_repeated_stage_is_a_config_error():
    with pytest.raises(ValueError, match="unknown stage"):
        PipelineConfig.model_validate({"stages": [{"name": "nope", "config": "x.yaml"}]})
    with pytest.raises(ValueError, match="listed twice"):
        PipelineConfig.model_validate(
            {"stages": [{"name": "ingest", "config": "a.yaml"}, {"name": "ingest", "config": "b.yaml"}]}
        )


@pytest.mark.slow
def test_promote_gets_the_version_register_produced(ray_head, mlflow_server, tiny_bert, tmp_path):
    """register → promote as Ray jobs: the runner keeps register's result in the run's state and passes its
    version to promote; the jobs reach the authenticated MLflow server as the pipeline user."""
    from mlflow import MlflowClient

    name = f"pipe-{free_port()}"
    client = MlflowClient(mlflow_server)
    config = PipelineConfig.model_validate(
        {
            "address": ray_head,
            "run_id": "r2",
            "state_dir": str(tmp_path / "state"),
            "poll_s": 0.5,
            "runtime_env": {
                "working_dir": str(Path.cwd()),
                "env_vars": {"MLFLOW_TRACKING_URI": mlflow_server},
            },
            "stages": [
                {
                    "name": "register",
                    "config": "jobs/configs/register.yaml",
                    "set": [f"name={name}", f"model_dir={tiny_bert}", "calibration.datasets=[]"],
                },
                {
                    "name": "promote",
                    "config": "jobs/configs/promote.yaml",
                    "set": [f"name={name}", "version={register.version}", "force=true", "gate.datasets=[]"],
                },
            ],
        }
    )
    state = run_pipeline(config)
    registered = state["stages"]["register"]["result"]
    promoted = state["stages"]["promote"]
    assert registered["name"] == name and registered["version"] == "1"
    assert f"--set version={registered['version']}" in promoted["entrypoint"]
    assert promoted["result"]["version"] == registered["version"]
    assert client.get_registered_model(name).aliases == {"champion": registered["version"]}
    assert read_state(config, "r2")["stages"]["promote"]["result"]["decision"] == "forced"


def test_a_stage_refers_to_an_earlier_stages_result():
    stages = [
        {"name": "register", "config": "jobs/configs/register.yaml"},
        {"name": "promote", "config": "jobs/configs/promote.yaml", "set": ["version={register.version}"]},
    ]
    config = PipelineConfig.model_validate({"stages": stages})
    promote = config.stages[1]
    assert promote.entrypoint("r", Path("/p"), {"register": {"version": "4"}}).endswith("--set version=4")
    with pytest.raises(PipelineError, match=r"needs \{register.version\}, but stage 'register' recorded no"):
        promote.entrypoint("r", Path("/p"), {})
    with pytest.raises(ValueError, match="refers to the result of register, which is not an earlier stage"):
        PipelineConfig.model_validate({"stages": stages[::-1]})
    assert promote.entrypoint("r", Path("/p"), {"register": {"version": 4}}) == (
        "python -m jobs.promote -c jobs/configs/promote.yaml --set version=4"
    )
