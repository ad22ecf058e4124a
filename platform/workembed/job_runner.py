"""``workembed pipeline run``: the pipeline stages submitted in order as Ray jobs (Ray Jobs SDK).

Each stage runs ``python -m jobs.<stage> -c <config> [--profile P] [--set k=v ...]`` on the cluster with the
configured ``runtime_env``. Its workembed lines (progress, results, warnings) show in this terminal; its whole
log (libraries, progress bars, workers) goes to ``<state_dir>/<run_id>/logs/<stage>-<attempt>.log``. The
first stage that does not succeed stops the pipeline with its job id and last log lines. ``{run_id}`` in a
stage's ``set`` values is replaced by the pipeline run id and ``{project_dir}`` by the absolute project
folder (for outputs on a local cluster, which shares this file system), so every stage of a run writes under
its own run id and a new run never overwrites a finished one. The state of a run (each stage's job id and
status) is kept in ``<state_dir>/<run_id>/state.json``; ``--resume RUN_ID`` continues a run from its first
unfinished stage (or ``--from STAGE``), never re-running a stage that already succeeded.

Each stage's summary (its result line, see :mod:`workembed.stages`) is kept in the state as ``result``; a
later stage's ``set`` value refers to it as ``{STAGE.KEY}`` (e.g. ``version={register.version}``: promote
the version the register stage produced), also across ``--resume``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shlex
import time
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from workembed.config import SERVICE_ENV, Config, ConfigError
from workembed.errors import WorkembedError
from workembed.logs import JOB_LOG_ENV, job_console_line, quiet_libraries
from workembed.runs import new_run_id
from workembed.stages import RESULT_ENV, read_result

logger = logging.getLogger(__name__)

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
RESULT_REF = re.compile(r"\{([A-Za-z_]\w*)\.([A-Za-z_][\w.]*)\}")
"""``{STAGE.KEY}`` in a stage's ``set`` value: that key of an earlier stage's result."""
STATE_FILE = "state.json"
DEFAULT_EXCLUDES = [
    ".git",
    ".venv",
    ".cache",
    ".workembed",
    "runs",
    "reports",
    "eval-tasks",
    "mlruns",
    "**/__pycache__",
    "*.egg-info",
]


class PipelineError(WorkembedError, RuntimeError):
    """A stage failed, or the run cannot continue as asked."""


class RuntimeEnvConfig(Config):
    """What every stage's job gets (Ray ``runtime_env``)."""

    working_dir: str | None = Field(
        ".",
        description="Folder uploaded as the job's working directory (the project: jobs/ and configs); "
        "null: run in the cluster's own checkout or image.",
    )
    excludes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_EXCLUDES),
        description="Paths and patterns left out of the upload (gitignore syntax).",
    )
    env_vars: dict[str, str] = Field(
        default_factory=dict,
        description="Environment variables of the jobs (e.g. MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL).",
    )
    data_dir: str | None = Field(
        "auto",
        description="WORKEMBED_DATA_DIR of the jobs: 'auto' is this machine's data root when it has one "
        "(right for a local cluster); null leaves it unset; a path or s3:// URI is passed as given.",
    )
    pass_env: list[str] = Field(
        default_factory=lambda: list(SERVICE_ENV),
        description="Variables copied from this shell into the jobs when set here and not in env_vars.",
    )
    pip: list[str] | None = Field(
        None, description="Extra pip requirements installed for the jobs (null: the cluster's environment)."
    )

    def build(self) -> dict[str, Any]:
        """The ``runtime_env`` dict for ``JobSubmissionClient.submit_job``."""
        env = {name: os.environ[name] for name in self.pass_env if os.environ.get(name)}
        if self.data_dir == "auto":
            from workembed.config import data_root

            root = data_root()
            if root is not None:
                env.setdefault("WORKEMBED_DATA_DIR", str(root.resolve()))
        elif self.data_dir is not None:
            env["WORKEMBED_DATA_DIR"] = self.data_dir
        env |= self.env_vars
        runtime_env: dict[str, Any] = {"env_vars": env} if env else {}
        if self.working_dir is not None:
            folder = Path(self.working_dir).expanduser().resolve()
            if not (folder / "jobs").is_dir():
                raise ConfigError(
                    f"runtime_env.working_dir: {folder} has no jobs/ folder (the stage entrypoints)"
                )
            runtime_env |= {"working_dir": str(folder), "excludes": list(self.excludes)}
        if self.pip:
            runtime_env["pip"] = list(self.pip)
        return runtime_env


class StageConfig(Config):
    """One stage of the pipeline: a ``jobs.<name>`` entrypoint with its config."""

    name: str = Field(description="Stage name: the module jobs.<name> (ingest, train, evaluate, ...).")
    config: str = Field(description="The stage's YAML config, relative to the working directory.")
    profile: str | None = Field(None, description="Profile inside the stage config (e.g. gpu).")
    set: list[str] = Field(
        default_factory=list,
        description="--set KEY=VALUE overrides; '{run_id}' is replaced by the pipeline run id, "
        "'{project_dir}' by the absolute project folder and '{STAGE.KEY}' by that key of an earlier stage's "
        "result (e.g. '{register.version}').",
    )
    num_cpus: float = Field(
        0, ge=0, description="CPUs reserved for the job's driver (entrypoint_num_cpus); tasks ask their own."
    )
    num_gpus: float = Field(0, ge=0, description="GPUs reserved for the job's driver (entrypoint_num_gpus).")

    @field_validator("set")
    @classmethod
    def _pairs(cls, values: list[str]) -> list[str]:
        for value in values:
            if "=" not in value:
                raise ValueError(f"'{value}' is not KEY=VALUE")
        return values

    def entrypoint(
        self, run_id: str, project_dir: Path, results: dict[str, dict[str, Any]] | None = None
    ) -> str:
        """The shell command of the job; ``results`` are the earlier stages' results (by stage name)."""
        words = ["python", "-m", f"jobs.{self.name}", "-c", self.config]
        if self.profile:
            words += ["--profile", self.profile]
        for value in self.set:
            value = value.replace("{run_id}", run_id).replace("{project_dir}", str(project_dir))
            words += ["--set", RESULT_REF.sub(lambda ref: self._result(ref, results or {}), value)]
        return shlex.join(words)

    def _result(self, ref: re.Match, results: dict[str, dict[str, Any]]) -> str:
        stage, key = ref.group(1), ref.group(2)
        value: Any = results.get(stage)
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None or isinstance(value, dict | list):
            raise PipelineError(
                f"stage '{self.name}' needs {ref.group(0)}, but stage '{stage}' recorded no '{key}' in its "
                "result"
            )
        return str(value)

    def references(self) -> list[str]:
        """The stages whose results this stage's ``set`` values refer to."""
        return [ref.group(1) for value in self.set for ref in RESULT_REF.finditer(value)]


class PipelineConfig(Config):
    """Settings of ``workembed pipeline run``."""

    address: str | None = Field(
        None,
        description="Ray cluster: http://HEAD:8265 (Jobs API) or ray://HEAD:10001; null: $RAY_ADDRESS, "
        "else the local default http://127.0.0.1:8265.",
    )
    run_id: str | None = Field(None, description="Pipeline run id; null: a new pipeline-<UTC time> id.")
    state_dir: str = Field("runs/pipeline", description="Where each run's state.json is kept.")
    poll_s: float = Field(2.0, gt=0, description="Seconds between job status polls.")
    timeout_s: float | None = Field(
        None, gt=0, description="Per-stage limit in seconds: a job running longer is stopped (null: none)."
    )
    runtime_env: RuntimeEnvConfig = Field(default_factory=RuntimeEnvConfig)
    stages: list[StageConfig] = Field(min_length=1, description="The stages, in the order they run.")

    @model_validator(mode="after")
    def _unique_known_stages(self) -> PipelineConfig:
        names = [stage.name for stage in self.stages]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"stages listed twice: {', '.join(repeated)}")
        jobs = Path(__file__).resolve().parents[2] / "jobs"
        if jobs.is_dir():
            unknown = [name for name in names if not (jobs / f"{name}.py").is_file()]
            if unknown:
                known = ", ".join(sorted(p.stem for p in jobs.glob("*.py") if p.stem != "__init__"))
                raise ValueError(f"unknown stage(s) {', '.join(unknown)}: jobs/ has {known}")
        for i, stage in enumerate(self.stages):
            later = [name for name in stage.references() if name not in names[:i]]
            if later:
                raise ValueError(
                    f"stage '{stage.name}' refers to the result of {', '.join(sorted(set(later)))}, "
                    "which is not an earlier stage"
                )
        return self

    def stage_names(self) -> list[str]:
        return [stage.name for stage in self.stages]


# ------------------------------------------------------------------------------------------- state


def state_path(config: PipelineConfig, run_id: str) -> Path:
    return Path(config.state_dir).expanduser() / run_id / STATE_FILE


def read_state(config: PipelineConfig, run_id: str) -> dict[str, Any]:
    """The recorded state of a run: ``{"run_id", "stages": {name: {"status", "job_id", ...}}}``."""
    path = state_path(config, run_id)
    if not path.is_file():
        raise PipelineError(f"no pipeline run '{run_id}' ({path} does not exist)")
    return json.loads(path.read_text(encoding="utf-8"))


def _write_state(config: PipelineConfig, state: dict[str, Any]) -> None:
    path = state_path(config, state["run_id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def stages_to_run(config: PipelineConfig, state: dict[str, Any], start: str | None) -> list[StageConfig]:
    """The stages this invocation runs: from ``start`` (default: the first not yet succeeded) to the end.

    Every stage before ``start`` must have succeeded in this run, and none from ``start`` on may have
    (its outputs would be overwritten: start a new run instead)."""
    names = config.stage_names()
    done = {name for name, entry in state.get("stages", {}).items() if entry.get("status") == "SUCCEEDED"}
    if start is None:
        first = next((i for i, name in enumerate(names) if name not in done), len(names))
    elif start not in names:
        raise PipelineError(f"--from {start}: not a stage of this pipeline ({', '.join(names)})")
    else:
        first = names.index(start)
    missing = [name for name in names[:first] if name not in done]
    if missing:
        raise PipelineError(
            f"run '{state['run_id']}' cannot start at '{names[first] if first < len(names) else 'the end'}': "
            f"earlier stage(s) {', '.join(missing)} have not succeeded"
        )
    again = [name for name in names[first:] if name in done]
    if again:
        raise PipelineError(
            f"run '{state['run_id']}': stage(s) {', '.join(again)} already succeeded and would be "
            "overwritten; start a new run id"
        )
    return config.stages[first:]


# --------------------------------------------------------------------------------------------- run


def run_pipeline(
    config: PipelineConfig,
    *,
    resume: str | None = None,
    start: str | None = None,
    client: Any = None,
) -> dict[str, Any]:
    """Submit the stages in order (or continue run ``resume``); returns the run's state.

    Raises :class:`PipelineError` when a stage does not succeed (the state records it) or the run cannot
    continue as asked."""
    if resume is not None:
        state = read_state(config, resume)
        run_id = resume
    else:
        run_id = config.run_id or new_run_id("pipeline")
        if state_path(config, run_id).exists():
            raise PipelineError(f"pipeline run '{run_id}' exists: resume it with --resume {run_id}")
        state = {"run_id": run_id, "stages": {}}
    todo = stages_to_run(config, state, start)
    runtime_env = config.runtime_env.build()
    runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), JOB_LOG_ENV: "1", RESULT_ENV: "1"}
    project_dir = Path(config.runtime_env.working_dir or ".").expanduser().resolve()
    client = client or connect(config.address)
    state["address"] = client.get_address()
    _write_state(config, state)
    logger.info("pipeline run %s: %s", run_id, ", ".join(s.name for s in todo) or "nothing left to run")
    for stage in todo:
        attempt = int(state["stages"].get(stage.name, {}).get("attempt", 0)) + 1
        results = {name: entry["result"] for name, entry in state["stages"].items() if "result" in entry}
        entrypoint = stage.entrypoint(run_id, project_dir, results)
        job_id = client.submit_job(
            entrypoint=entrypoint,
            runtime_env=runtime_env,
            submission_id=f"{run_id}-{stage.name}-{attempt}",
            metadata={"workembed_run_id": run_id, "workembed_stage": stage.name},
            entrypoint_num_cpus=stage.num_cpus or None,
            entrypoint_num_gpus=stage.num_gpus or None,
        )
        entry = {"status": "RUNNING", "job_id": job_id, "attempt": attempt, "entrypoint": entrypoint}
        entry["started_at"] = _now()
        state["stages"][stage.name] = entry
        _write_state(config, state)
        log_path = state_path(config, run_id).parent / "logs" / f"{stage.name}-{attempt}.log"
        entry["log"] = str(log_path)
        _write_state(config, state)
        logger.info("== stage %s: job %s (full log: %s)", stage.name, job_id, log_path)
        logger.debug("stage %s entrypoint: %s", stage.name, entrypoint)
        status = wait_for_job(client, job_id, config.poll_s, config.timeout_s, log_path)
        entry |= {"status": status, "finished_at": _now()}
        _write_state(config, state)
        if status != "SUCCEEDED":
            tail = "\n".join(client.get_job_logs(job_id).rstrip().splitlines()[-20:])
            raise PipelineError(
                f"stage '{stage.name}' {status.lower()} (job {job_id}); the pipeline stopped. Last log "
                f"lines:\n{tail}\nFix it and continue with: workembed pipeline run -c <config> "
                f"--resume {run_id}"
            )
        result = read_result(client.get_job_logs(job_id))
        if result is not None:
            entry["result"] = result
            _write_state(config, state)
        logger.info("== stage %s: succeeded", stage.name)
    return state


def connect(address: str | None) -> Any:
    """A Jobs SDK client for ``address`` (an explicit address wins over ``$RAY_ADDRESS``). With token
    authentication, the token of ``$RAY_AUTH_TOKEN`` / ``$RAY_AUTH_TOKEN_PATH`` is sent explicitly (Ray caches
    the first token a process loads, which may belong to another cluster)."""
    from ray.job_submission import JobSubmissionClient

    quiet_libraries()  # importing Ray set up its own console handler
    logging.getLogger("ray._private.runtime_env.working_dir").addFilter(_default_exclude_notice)

    if address is not None and os.environ.get("RAY_ADDRESS") not in (None, address):
        logger.info("using --address %s (not RAY_ADDRESS=%s)", address, os.environ["RAY_ADDRESS"])
        os.environ.pop("RAY_ADDRESS")
    token = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except (ConnectionError, ValueError) as err:
        raise PipelineError(f"cannot reach the Ray Jobs API at {address or '$RAY_ADDRESS'}: {err}") from None


def auth_token() -> str | None:
    """The Ray token of ``$RAY_AUTH_TOKEN`` or the file ``$RAY_AUTH_TOKEN_PATH``, if any."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path and Path(path).is_file():
        return Path(path).read_text(encoding="utf-8").strip()
    return None


def wait_for_job(
    client: Any, job_id: str, poll_s: float, timeout_s: float | None, log_path: Path | None = None
) -> str:
    """Follow the job until it ends (stopping it after ``timeout_s``) and return its final status. Its
    workembed lines (see :func:`~workembed.logs.job_console_line`) are shown indented, warnings as warnings;
    the whole log (libraries, progress bars, workers) goes to ``log_path`` (without one: shown whole)."""

    async def follow() -> str:
        async def stream() -> None:
            if log_path is not None:
                log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path or os.devnull, "a", encoding="utf-8") as log:
                async for lines in client.tail_job_logs(job_id):
                    log.write(lines if lines.endswith("\n") else lines + "\n")
                    log.flush()
                    for line in lines.rstrip("\n").splitlines():
                        shown = job_console_line(line) if log_path is not None else line
                        if shown is not None:
                            _show(shown)

        streamer = asyncio.ensure_future(stream())
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while True:
                status = str(client.get_job_status(job_id).value)
                if status in TERMINAL:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    logger.warning("job %s ran past %g s: stopping it", job_id, timeout_s)
                    client.stop_job(job_id)
                    deadline = None
                await asyncio.sleep(poll_s)
            try:  # the rest of the log, once the job has ended
                await asyncio.wait_for(streamer, timeout=10)
            except Exception:  # log streaming must never hide the job's status
                streamer.cancel()
            return status
        finally:
            if not streamer.done():
                streamer.cancel()

    return asyncio.run(follow())


def _default_exclude_notice(record: logging.LogRecord) -> bool:
    """False for Ray's notice that it now excludes ``.git``/``.venv`` from a working_dir by itself (so do
    :data:`DEFAULT_EXCLUDES`): it is no news to a workembed user."""
    return "is now ignored by default" not in record.getMessage()


def _show(line: str) -> None:
    """One workembed line of a job, at its own level."""
    if line.startswith(("warning: ", "error: ", "critical: ")):
        level, _, message = line.partition(": ")
        logger.log(logging.getLevelName(level.upper()), "  %s", message)
    else:
        logger.info("  %s", line)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
