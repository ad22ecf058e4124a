"""The Ray Serve application: a model server that is its own FastAPI ingress, and a profile matcher.

:func:`build_app` (``import_path: workembed.serving.app:build_app`` in ``serve/config.yaml``) builds two
deployments from a :class:`~workembed.serving.config.ServeConfig` (the application's ``args``):

- ``Models`` (:class:`ModelServer`), the HTTP ingress and model server: the Serve proxy hands a request
  straight to one of its replicas. A replica holds the default model (``model``; an alias URI is re-resolved
  every ``alias_poll_s`` and a new version swaps in without a failed request, see
  :mod:`~workembed.serving.versions`) and, with Serve model multiplexing, up to ``max_models_per_replica``
  other versions selected by the ``serve_multiplexed_model_id`` header (a URI, a version number or an alias
  name; absent: the default). The header's value is the request's multiplexed model id: the proxy prefers a
  replica that holds it, and the replica loads it when it does not (two spellings of one version, ``2`` and
  ``models:/NAME/2``, are held apart). The encoder work of concurrent requests is batched (``@serve.batch``):
  one encoder pass per model, operation and target space for all requests in a batch. OpenAPI documentation
  at ``/docs``.
- ``Matcher``: the profile index (:class:`~workembed.serving.profiles.ProfileIndex`, one collection per
  model version), called by handle for ``/v1/match`` and ``/v1/profiles`` only. Qdrant local mode allows one
  process, so with ``profiles.qdrant_path`` it runs one replica.

Both receive the config as ``user_config`` and apply a changed one in ``reconfigure`` without a restart
(``Models`` also rebuilds its HTTP API from it: request limits, API key).

Routes (``/v1`` ones need the ``X-API-Key`` header when an API key is configured, see
:mod:`~workembed.serving.auth`): ``POST /v1/embed``, ``/v1/rank``, ``/v1/normalize/title``,
``/v1/extract``, ``/v1/match``, ``/v1/profiles``; ``GET /v1/models``, ``/healthz``. Every answer from a
model names the version that gave it (``model``). Errors: 422 an invalid request (the field is named), 401 a
missing or wrong API key, 404 an unknown target space or model version, 409 extraction with a model that
has no calibrated threshold, 503 a model version that cannot be loaded; anything else is a bug: 500 with a
request id (in the answer, its ``X-Request-ID`` header and the replica's log line with the traceback). An
error never stops a replica.
"""

import asyncio
import logging
import os
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request, status
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve import Application
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RequestCancelledError
from ray.serve.handle import DeploymentHandle
from starlette.types import Receive, Scope, Send

from workembed.errors import ClusterError, NotFoundError, WorkembedError
from workembed.retrieval.scoring import l2_normalize
from workembed.serving.auth import read_api_key, require_api_key
from workembed.serving.config import ServeConfig
from workembed.serving.profiles import ProfileIndex
from workembed.serving.runtime import NoThresholdError, ServedModel, UnknownSpaceError
from workembed.serving.schemas import (
    EmbedResponse,
    ExtractResponse,
    MatchResponse,
    NormalizeTitlesResponse,
    ProfilesResponse,
    RankResponse,
    request_models,
)
from workembed.serving.versions import (
    ModelHolder,
    ModelLoadError,
    UnknownModelError,
    multiplexed_uri,
)

logger = logging.getLogger("ray.serve")

MODEL_HEADER = "serve_multiplexed_model_id"
REQUEST_ID_HEADER = "X-Request-ID"
"""Serve's multiplexing header: which model version answers a request."""
OCCUPATIONS = "esco-occupations"
T = TypeVar("T")

# ------------------------------------------------------------------------------------ batching


@dataclass(frozen=True)
class EncoderCall:
    """One request's encoder work. Calls with the same :attr:`key` in a batch share one encoder pass."""

    model: ServedModel
    op: Literal["embed", "rank", "extract", "extract_ad"]
    texts: tuple[str, ...]
    tokens: bool = False
    space: str = ""
    k: int = 0
    kind: str | None = None

    @property
    def key(self) -> tuple:
        return (self.model, self.op, self.tokens, self.space, self.kind)


def run_batch(calls: Sequence[EncoderCall]) -> list[Any]:
    """The results of ``calls`` in order, one encoder pass per group of calls with the same key (texts
    concatenated, results split back; a rank group ranks the largest ``k`` and cuts each call's lists to
    its own ``k``). When a group fails, its exception is the result of each of its calls."""
    groups: dict[tuple, list[int]] = {}
    for index, call in enumerate(calls):
        groups.setdefault(call.key, []).append(index)
    results: list[Any] = [None] * len(calls)
    for indices in groups.values():
        members = [calls[index] for index in indices]
        try:
            outputs = _run_group(members)
        except Exception as err:
            outputs = [err] * len(members)
        for index, output in zip(indices, outputs, strict=True):
            results[index] = output
    return results


def _run_group(calls: Sequence[EncoderCall]) -> list[Any]:
    first = calls[0]
    model = first.model
    if first.op == "extract_ad":
        return [model.extract_ad(call.texts[0]) for call in calls]
    texts = [text for call in calls for text in call.texts]
    if first.op == "embed":
        flat = model.embed(texts, tokens=first.tokens, kind=first.kind)
    elif first.op == "rank":
        flat = model.rank(texts, first.space, max(call.k for call in calls), kind=first.kind)
    else:
        flat = model.extract(texts)
    outputs, start = [], 0
    for call in calls:
        part = flat[start : start + len(call.texts)]
        start += len(call.texts)
        outputs.append([hits[: call.k] for hits in part] if first.op == "rank" else part)
    return outputs


# -------------------------------------------------------------------------------- deployments


class LiveApi:
    """The ASGI app of a ``Models`` replica: each HTTP request goes to :attr:`api`, the FastAPI app of the
    replica's current config, which ``reconfigure`` replaces (requests in flight finish in the old one). The
    lifespan protocol is answered here: there is nothing to start or stop."""

    def __init__(self) -> None:
        self.api: FastAPI | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await self.api(scope, receive, send)


class ModelServer:
    """The ``Models`` deployment: the HTTP ingress and model server, with the default model, multiplexed
    versions and batched encoder calls (see the module docstring)."""

    def __init__(self, matcher: DeploymentHandle) -> None:
        self.matcher = matcher
        self.config: ServeConfig | None = None
        self.default: ModelHolder | None = None
        self.versions: dict[str, ModelHolder] = {}
        self.http = LiveApi()
        self._load_version = None

    def __serve_build_asgi_app__(self) -> LiveApi:
        return self.http

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply the config: batching and the HTTP API at once; the default model is loaded at the first call
        and reloaded when a field it depends on changes (on a failure a running replica keeps its model and
        reports the error); ``max_models_per_replica`` applies to replicas started after a change."""
        config = ServeConfig.model_validate(user_config)
        self._encode.set_max_batch_size(config.batching.max_batch_size)
        self._encode.set_batch_wait_timeout_s(config.batching.batch_wait_timeout_s)
        if self.default is None or self.default.uri != config.model:
            holder = ModelHolder(config.model, config)
            try:
                await holder.start()
            except Exception as err:
                if self.default is None:
                    raise
                self.default.record_error(config.model, err)
            else:
                previous, self.default = self.default, holder
                if previous is not None:
                    previous.close()
        else:
            await self.default.reconfigure(config)
        for version in self._live_versions():
            await version.reconfigure(config)
        if self._load_version is None:
            self._load_version = serve.multiplexed(max_num_models_per_replica=config.max_models_per_replica)(
                self._version_loader()
            )
        elif config.max_models_per_replica != self.config.max_models_per_replica:
            logger.warning(
                "max_models_per_replica %d → %d applies to replicas started from now on",
                self.config.max_models_per_replica,
                config.max_models_per_replica,
            )
        self.config = config
        self.http.api = create_api(self, self.matcher, config)

    def _version_loader(self):
        async def load_version(model_id: str) -> ModelHolder:
            holder = ModelHolder(multiplexed_uri(model_id, self.default.uri), self.config)
            await holder.start()
            self.versions[model_id] = holder
            return holder

        return load_version

    def _live_versions(self) -> list[ModelHolder]:
        self.versions = {key: holder for key, holder in self.versions.items() if not holder.closed}
        return list(self.versions.values())

    async def served(self) -> ServedModel:
        """The model version the request selects: its multiplexed model id (none: the default)."""
        model_id = serve.get_multiplexed_model_id()
        if multiplexed_uri(model_id, self.default.uri) == self.default.uri:
            return self.default.model
        holder = await self._load_version(model_id)
        return holder.model

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _encode(self, calls: list[EncoderCall]) -> list[Any]:
        """Batched encoder work (see :func:`run_batch`), off the event loop."""
        return await asyncio.to_thread(run_batch, calls)

    async def submit(self, call: EncoderCall) -> Any:
        """The result of ``call``, batched with the encoder work of concurrent requests."""
        result = await self._encode(call)
        if isinstance(result, Exception):
            raise result
        return result

    async def embed_documents(
        self, model: ServedModel, documents: list[list[str]], kind: str
    ) -> list[list[float]]:
        """One vector per document (texts of input ``kind``): the L2-normalised mean of its parts' pooled
        embeddings."""
        parts = tuple(text for document in documents for text in document)
        embedded = await self.submit(EncoderCall(model, "embed", parts, kind=kind))
        vectors = np.asarray([item["embedding"] for item in embedded], dtype=np.float32)
        bounds = np.cumsum([0] + [len(document) for document in documents])
        means = np.stack([vectors[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
        return l2_normalize(means).tolist()

    def describe(self) -> dict[str, Any]:
        """What this replica serves: the default model, the multiplexed versions loaded, the spaces."""
        return {
            "replica": serve.get_replica_context().replica_id.unique_id,
            "pid": os.getpid(),
            "default": self.default.status(),
            "multiplexed": [holder.status() for holder in self._live_versions()],
            "spaces": self.default.model.spaces(),
        }


Models = serve.deployment(name="Models", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)(
    serve.ingress()(ModelServer)
)


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
class Matcher:
    """The profile index of every model version (Qdrant), one operation at a time."""

    def __init__(self) -> None:
        self.config: ServeConfig | None = None
        self._indexes: dict[str, ProfileIndex] = {}
        self._lock = asyncio.Lock()

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = ServeConfig.model_validate(user_config)
        async with self._lock:
            if self.config is not None and config.profiles != self.config.profiles:
                self._close_all()
            self.config = config
        if config.profiles.local:
            logger.info("profile index: Qdrant local mode in %s (one replica)", config.profiles.qdrant_path)

    async def upsert(self, version: str, profiles: list[dict], vectors: list[list[float]]) -> dict[str, int]:
        """Insert or replace ``profiles`` of model ``version``: ``{"upserted", "total"}``."""

        def run() -> dict[str, int]:
            index = self._index(version, len(vectors[0]))
            return {"upserted": index.upsert(profiles, np.asarray(vectors)), "total": index.count()}

        async with self._lock:
            return await asyncio.to_thread(run)

    async def search(self, version: str, vector: list[float], k: int, filters: dict) -> list[dict]:
        """The ``k`` best profiles of model ``version`` for ``vector`` that pass ``filters``."""

        def run() -> list[dict]:
            return self._index(version, len(vector)).search(np.asarray(vector), k, filters)

        async with self._lock:
            return await asyncio.to_thread(run)

    def _index(self, version: str, dim: int) -> ProfileIndex:
        index = self._indexes.get(version)
        if index is None:
            if self.config.profiles.local:
                self._close_all()  # a local folder admits one open client: switch collections by reopening
            index = self._indexes[version] = ProfileIndex(self.config.profiles, dim, version)
        return index

    def _close_all(self) -> None:
        for index in self._indexes.values():
            index.close()
        self._indexes.clear()


# ------------------------------------------------------------------------------------ HTTP API


def http_error(err: Exception) -> HTTPException:
    """The HTTP answer to an error of the model server or the matcher (see the module docstring): a
    :class:`~workembed.errors.WorkembedError` is the request's (4xx), Ray's overload errors are 503 and
    anything else is a bug, logged with its traceback under a new request id and answered 500 with that id."""
    cause = err.cause if isinstance(err, RayTaskError) else err
    if isinstance(cause, UnknownSpaceError | UnknownModelError | NotFoundError):
        return HTTPException(status.HTTP_404_NOT_FOUND, str(cause))
    if isinstance(cause, NoThresholdError):
        return HTTPException(status.HTTP_409_CONFLICT, str(cause))
    if isinstance(cause, ModelLoadError | ClusterError):
        return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(cause))
    if isinstance(cause, WorkembedError | ValidationError):
        return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(cause))
    if isinstance(cause, RayActorError | BackPressureError | DeploymentUnavailableError):
        return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"temporarily unavailable, retry: {cause}")
    request_id = uuid.uuid4().hex
    logger.error(
        "request failed: request_id=%s", request_id, exc_info=cause, extra={"request_id": request_id}
    )
    return HTTPException(
        status.HTTP_500_INTERNAL_SERVER_ERROR,
        f"internal error ({type(cause).__name__}), request id {request_id}",
        headers={REQUEST_ID_HEADER: request_id},
    )


async def answer_errors(request: Request, call_next):
    """HTTP middleware: an exception that escapes a route is answered as :func:`http_error` says (instead
    of Starlette's bare 500)."""
    try:
        return await call_next(request)
    except Exception as err:
        error = http_error(err)
        return JSONResponse({"detail": error.detail}, error.status_code, headers=error.headers)


async def answer(pending: Awaitable[T]) -> T:
    """The result of ``pending`` (work in this replica or a call to the matcher); its errors become HTTP
    errors."""
    try:
        return await pending
    except RequestCancelledError:
        raise
    except Exception as err:
        raise http_error(err) from None


def create_api(server: ModelServer, matcher: DeploymentHandle, config: ServeConfig) -> FastAPI:
    """The FastAPI application of a ``Models`` replica (``server``) with ``config``'s limits and API key."""
    bodies = request_models(config.limits, config.profiles.max_profiles_per_request)
    EmbedRequest, RankRequest = bodies.EmbedRequest, bodies.RankRequest
    NormalizeTitlesRequest, ExtractRequest = bodies.NormalizeTitlesRequest, bodies.ExtractRequest
    MatchRequest, ProfilesRequest = bodies.MatchRequest, bodies.ProfilesRequest

    api_key = read_api_key(config.api_key_env)
    logger.info("API key %s", f"required (${config.api_key_env})" if api_key else "not configured")
    app = FastAPI(
        title="workembed",
        summary="Work-domain text encoder over ESCO: embed, rank, extract skills, match profiles.",
    )
    app.middleware("http")(answer_errors)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key(api_key))] if api_key else [])

    async def selected_model(
        header: Annotated[
            str | None,
            Header(
                alias=MODEL_HEADER,
                description="Model version: a URI (models:/NAME/2), a version number or an alias of the "
                "default model's registered name; absent: the default model.",
            ),
        ] = None,
    ) -> ServedModel:
        """The version the request selects. Serve's proxy reads the header (``header`` documents it) into the
        request's multiplexed model id, from which :meth:`ModelServer.served` selects."""
        return await answer(server.served())

    Selected = Annotated[ServedModel, Depends(selected_model)]

    async def encode(call: EncoderCall) -> Any:
        return await answer(server.submit(call))

    @app.get("/healthz", summary="Liveness (no API key needed).")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @v1.get("/models", summary="Served versions: the default (with its alias URI), multiplexed ones, errors.")
    async def served_models() -> dict[str, Any]:
        return server.describe()

    @v1.post("/embed", response_model=EmbedResponse, summary="Pooled (and token-level) embeddings.")
    async def embed(body: EmbedRequest, model: Selected) -> Any:
        embeddings = await encode(
            EncoderCall(model, "embed", tuple(body.texts), tokens=body.tokens, kind=body.kind)
        )
        return {"model": model.version, "embeddings": embeddings}

    @v1.post("/rank", response_model=RankResponse, summary="The k best targets of a space per text.")
    async def rank(body: RankRequest, model: Selected) -> Any:
        results = await encode(
            EncoderCall(model, "rank", tuple(body.texts), space=body.space, k=body.k, kind=body.kind)
        )
        return {"model": model.version, "space": body.space, "results": results}

    @v1.post(
        "/normalize/title", response_model=NormalizeTitlesResponse, summary="Job titles → ESCO occupations."
    )
    async def normalize_title(body: NormalizeTitlesRequest, model: Selected) -> Any:
        results = await encode(
            EncoderCall(model, "rank", tuple(body.titles), space=OCCUPATIONS, k=body.k, kind="job_title")
        )
        return {"model": model.version, "results": results}

    @v1.post("/extract", response_model=ExtractResponse, summary="ESCO skills per sentence, with spans.")
    async def extract(body: ExtractRequest, model: Selected) -> Any:
        if body.text is not None:  # a job ad, segmented
            found = await encode(EncoderCall(model, "extract_ad", (body.text,)))
        else:  # sentences, each on its own
            skills = await encode(EncoderCall(model, "extract", tuple(body.sentences)))
            found = [{"sentence": s, "skills": sk} for s, sk in zip(body.sentences, skills, strict=True)]
        return {"model": model.version, "threshold": model.settings.threshold, "sentences": found}

    @v1.post("/match", response_model=MatchResponse, summary="The best indexed profiles for a project.")
    async def match(body: MatchRequest, model: Selected) -> Any:
        (vector,) = await answer(
            server.embed_documents(model, [body.sections or [body.document]], "brief_string")
        )
        hits = await answer(matcher.search.remote(model.version, vector, body.k, body.filters))
        return {"model": model.version, "results": hits}

    @v1.post("/profiles", response_model=ProfilesResponse, summary="Insert or replace profiles.")
    async def upsert_profiles(body: ProfilesRequest, model: Selected) -> Any:
        profiles = [profile.model_dump() for profile in body.profiles]
        vectors = await answer(
            server.embed_documents(
                model, [[profile["text"]] for profile in profiles], "candidate_profile_string"
            )
        )
        counts = await answer(matcher.upsert.remote(model.version, profiles, vectors))
        return {"model": model.version, **counts}

    app.include_router(v1)
    return app


# ------------------------------------------------------------------------------------ builder


def build_app(args: dict[str, Any]) -> Application:
    """Serve's application builder: ``args`` are :class:`ServeConfig` fields (validated here)."""
    config = ServeConfig.model_validate(args or {})
    user_config = config.model_dump(mode="json")
    matcher_options: dict[str, Any] = {"user_config": user_config}
    if config.profiles.local:
        logger.info(
            "profiles.qdrant_path is set: Qdrant local mode admits one process, so Matcher runs one replica"
        )
        matcher_options["num_replicas"] = 1
    matcher = Matcher.options(**matcher_options).bind()
    return Models.options(user_config=user_config).bind(matcher)
