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
(``Models`` also rebuilds its HTTP API from it: request limits, API keys). A full queue (a deployment's
``max_queued_requests``) is answered 503 with ``Retry-After``.

Routes (``/v1`` ones need a valid ``X-API-Key`` header unless ``auth: disabled``; without a key the
application does not start, see :mod:`~workembed.serving.auth`): ``POST /v1/embed``, ``/v1/rank``,
``/v1/normalize/title``, ``/v1/extract``, ``/v1/match``, ``/v1/profiles``; ``GET /v1/models``, ``/healthz``.
Every answer from a model names the version that gave it (``model``).

Request limits: :class:`RequestGuard` answers 413 for a body over ``limits.max_body_bytes`` (by
``Content-Length`` or counted while it streams in) before it is parsed or the key checked; the request
models apply the other limits (422 naming the field), ``/v1/embed`` with ``tokens=true`` is refused over
``limits.max_token_vectors``. Errors: 422 an invalid request (FastAPI's validation, or a
:class:`~workembed.serving.schemas.RequestError`), 401 a missing or wrong API key, 400 a model id (header
``serve_multiplexed_model_id``) that names no version or alias of the default model's registered model,
403 a version that has not passed the promotion gate, 404 an unknown target space or model version, 409
extraction with a model that has no calibrated threshold, 413 a body too large,
503 a model version that cannot be loaded or a busy deployment; anything else (any other exception, a
``ValueError`` or ``ValidationError`` included) is a bug: 500. Every error answer is ``{"detail",
"request_id"}`` with the same id in its ``X-Request-ID`` header; messages are short, and what they would
reveal of the deployment (tracking server, hosts, paths, actor ids, tracebacks) goes to the replica's log
under that id. An error never stops a replica.
"""

import asyncio
import logging
import os
import re
import uuid
from collections.abc import Awaitable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve import Application
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RequestCancelledError
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from workembed.errors import ClusterError, NotFoundError
from workembed.retrieval.scoring import l2_normalize
from workembed.serving.auth import load_api_keys, require_api_key
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
    RequestError,
    request_models,
)
from workembed.serving.versions import (
    ModelHolder,
    ModelIdError,
    ModelLoadError,
    UngatedVersionError,
    UnknownModelError,
    multiplexed_uri,
)

logger = logging.getLogger("ray.serve")

MODEL_HEADER = "serve_multiplexed_model_id"
REQUEST_ID_HEADER = "X-Request-ID"
"""Serve's multiplexing header: which model version answers a request."""
OCCUPATIONS = "esco-occupations"
REGISTRY_CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
"""MLflow client settings of a ``Models`` replica unless its environment sets them: a lookup of a dead
server fails in seconds (the served version stays; the next alias poll tries again) instead of retrying for
minutes (MLflow's defaults), so a replica that starts during an outage falls back to its cached version
quickly."""
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
        for name, value in REGISTRY_CLIENT_ENV.items():  # a dead MLflow fails a lookup in seconds
            os.environ.setdefault(name, value)
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
        api = create_api(self, self.matcher, config)  # first: no API key, no start (ConfigError)
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
        self.http.api = api

    def _version_loader(self):
        async def load_version(model_id: str) -> ModelHolder:
            uri = multiplexed_uri(model_id, self.default.uri)
            holder = ModelHolder(uri, self.config, gated_versions=True)  # only versions that passed the gate
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

    def health(self) -> dict[str, Any]:
        """``/healthz``: ``ok``, or ``degraded`` while the default model is served from the download cache
        because the model registry did not answer (until a poll reaches it). Either way the replica serves."""
        degraded = self.default.degraded if self.default is not None else None
        if degraded is None:
            return {"status": "ok"}
        return {
            "status": "degraded",
            "reason": "the model registry is unavailable: serving the version the alias named last",
            "since": degraded["since"],
        }


BACKPRESSURE = {"status_code": 503, "retry_after_s": 1}
"""A request that finds a deployment's queue full (``max_queued_requests``) is answered 503 with
``Retry-After: 1``."""

Models = serve.deployment(
    name="Models",
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=64,
    max_queued_requests=256,
    backpressure_config=BACKPRESSURE,
)(serve.ingress()(ModelServer))


@serve.deployment(
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=32,
    max_queued_requests=256,
    backpressure_config=BACKPRESSURE,
)
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

RETRY_AFTER_S = 1
"""``Retry-After`` (seconds) of a 503 answer: a full queue or a version that is not loaded yet."""
_REQUEST_ID: ContextVar[str | None] = ContextVar("workembed_request_id", default=None)
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://\S*")
_IP = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b")
_PATH = re.compile(r"(?<![\w:/.])/[^\s'\",;)]+")
MAX_MESSAGE_CHARS = 300


def current_request_id() -> str:
    """The id of the request being answered: Serve's (the id of the proxy's ``X-Request-ID`` header and its
    access log), else the one :class:`RequestGuard` gave it; a new one outside a request."""
    from ray.serve.context import _get_serve_request_context

    return _get_serve_request_context().request_id or _REQUEST_ID.get() or uuid.uuid4().hex


def client_message(err: BaseException) -> str:
    """``err``'s message as a client may read it: its first line, without URLs (a tracking server, a
    bucket), IP addresses or absolute file paths, at most ``MAX_MESSAGE_CHARS`` characters. ``models:/``
    and ``runs:/`` URIs stay: they name versions."""
    text = (str(err).strip().splitlines() or [""])[0]
    text = _PATH.sub("<path>", _IP.sub("<address>", _URL.sub("<internal>", text)))
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


def error_response(code: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error answer: ``{"detail", "request_id"}``. The ``X-Request-ID`` header is Serve's proxy's, or
    :class:`RequestGuard`'s outside Serve."""
    return JSONResponse({"detail": detail, "request_id": current_request_id()}, code, headers=headers)


def http_error(err: Exception) -> HTTPException:
    """The HTTP answer to an error met while answering a request (see the module docstring). Client
    messages are short (:func:`client_message`); the full error goes to the log under the request id."""
    cause = err.cause if isinstance(err, RayTaskError) else err
    request_id = current_request_id()
    code = None
    if isinstance(cause, UnknownSpaceError | UnknownModelError | NotFoundError):
        code = status.HTTP_404_NOT_FOUND
    elif isinstance(cause, NoThresholdError):
        code = status.HTTP_409_CONFLICT
    elif isinstance(cause, ModelIdError):
        code = status.HTTP_400_BAD_REQUEST
    elif isinstance(cause, UngatedVersionError):
        code = status.HTTP_403_FORBIDDEN
    elif isinstance(cause, RequestError):
        code = status.HTTP_422_UNPROCESSABLE_CONTENT
    if code is not None:  # the request's fault: the full message is logged, a cleaned one answered
        logger.info("request %s answered %d: %s", request_id, code, cause, extra={"request_id": request_id})
        return HTTPException(code, client_message(cause))
    unavailable = {
        ModelLoadError: "the model version cannot be loaded now",
        ClusterError: "a service the API needs is unavailable",
        BackPressureError: "the server is busy",
        DeploymentUnavailableError: "the server is busy",
        RayActorError: "the server is busy",
    }
    for kind, message in unavailable.items():
        if isinstance(cause, kind):
            logger.warning(
                "request %s answered 503: %s: %s",
                request_id,
                type(cause).__name__,
                cause,
                extra={"request_id": request_id},
            )
            return HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                f"{message}: retry later (request id {request_id})",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
    logger.error(
        "request failed: request_id=%s", request_id, exc_info=cause, extra={"request_id": request_id}
    )
    return HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, f"internal error, request id {request_id}")


async def answer_errors(request: Request, call_next):
    """HTTP middleware: an exception that escapes a route is answered as :func:`http_error` says (instead
    of Starlette's bare 500)."""
    try:
        return await call_next(request)
    except Exception as err:
        error = http_error(err)
        return error_response(error.status_code, error.detail, error.headers)


async def answer_http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Exception handler: an HTTP error (401, 404, 405, those of :func:`http_error`) with the request id."""
    return error_response(exc.status_code, exc.detail, getattr(exc, "headers", None))


async def answer_invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """Exception handler: a request FastAPI could not parse or validate is 422, each problem located (e.g.
    ``["body", "texts", 0]``), with the request id."""
    return error_response(status.HTTP_422_UNPROCESSABLE_CONTENT, jsonable_encoder(exc.errors()))


class RequestGuard:
    """ASGI middleware, the outermost of the API: gives each request an id (Serve's when Serve's proxy sent
    it; else a new one, sent back in ``X-Request-ID``) and reads the body before anything else does,
    answering 413 as soon as it is over ``max_body_bytes`` (by ``Content-Length``, or counted while a
    chunked body streams in): no oversized body is parsed or reaches the API-key check."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from ray.serve.context import _get_serve_request_context

        request_id = _get_serve_request_context().request_id
        if not request_id:  # outside Serve: this middleware sends the header
            request_id = uuid.uuid4().hex
            send = self._with_request_id(send, request_id)
        token = _REQUEST_ID.set(request_id)
        try:
            body = await self._read_body(scope, receive)
            if body is None:
                limit = self.max_body_bytes
                detail = f"request body over {limit} bytes (limits.max_body_bytes)"
                await error_response(status.HTTP_413_CONTENT_TOO_LARGE, detail)(scope, receive, send)
                return
            if body[-1]["type"] == "http.disconnect":  # the client left before sending its body
                return
            await self.app(scope, self._replay(body, receive), send)
        finally:
            _REQUEST_ID.reset(token)

    async def _read_body(self, scope: Scope, receive: Receive) -> list[Message] | None:
        """The body's messages, or None as soon as it is over the limit."""
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.strip().isdigit() and int(value) > self.max_body_bytes:
                return None
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                return None
            if not message.get("more_body", False):
                return messages

    @staticmethod
    def _replay(messages: list[Message], receive: Receive) -> Receive:
        async def replayed() -> Message:
            return messages.pop(0) if messages else await receive()

        return replayed

    @staticmethod
    def _with_request_id(send: Send, request_id: str) -> Send:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        return sending


async def answer(pending: Awaitable[T]) -> T:
    """The result of ``pending`` (work in this replica or a call to the matcher); its errors become HTTP
    errors."""
    try:
        return await pending
    except RequestCancelledError:
        raise
    except Exception as err:
        raise http_error(err) from None


async def count_token_vectors(model: ServedModel, texts: Sequence[str]) -> int:
    """Token vectors ``/v1/embed`` with ``tokens=true`` returns for ``texts``: their non-special tokens
    after truncation to the encoder's ``max_length`` (tokenized off the event loop)."""
    encoder = model.encoder
    tokenizer = encoder.tokenizer

    def count() -> int:
        ids = tokenizer(list(texts), truncation=True, max_length=encoder.max_length)["input_ids"]
        return sum(len(row) for row in ids) - len(ids) * tokenizer.num_special_tokens_to_add(pair=False)

    return await asyncio.to_thread(count)


INTERNAL_KEYS = frozenset({"replica", "pid", "node", "node_id", "actor_id", "host", "ip", "path"})
"""Keys of :meth:`ModelServer.describe` (and of its version entries) a client never sees."""


def public_models(described: dict[str, Any]) -> dict[str, Any]:
    """What ``GET /v1/models`` tells a client of :meth:`ModelServer.describe`: the versions (default and
    multiplexed) with their aliases, info and load errors (messages as :func:`client_message`), and the
    spaces; no replica, process or host details (:data:`INTERNAL_KEYS`)."""

    def public(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                key: client_message(Exception(item))
                if key == "message" and isinstance(item, str)
                else public(item)
                for key, item in value.items()
                if key not in INTERNAL_KEYS
            }
        if isinstance(value, list):
            return [public(item) for item in value]
        return value

    return public(described)


def create_api(server: ModelServer, matcher: DeploymentHandle, config: ServeConfig) -> FastAPI:
    """The FastAPI application of a ``Models`` replica (``server``) with ``config``'s limits and API keys;
    :class:`~workembed.errors.ConfigError` when auth is required and no key is configured."""
    bodies = request_models(config.limits, config.profiles.max_profiles_per_request)
    EmbedRequest, RankRequest = bodies.EmbedRequest, bodies.RankRequest
    NormalizeTitlesRequest, ExtractRequest = bodies.NormalizeTitlesRequest, bodies.ExtractRequest
    MatchRequest, ProfilesRequest = bodies.MatchRequest, bodies.ProfilesRequest
    max_token_vectors = config.limits.max_token_vectors

    keys = load_api_keys(config)
    app = FastAPI(
        title="workembed",
        summary="Work-domain text encoder over ESCO: embed, rank, extract skills, match profiles.",
    )
    app.exception_handler(StarletteHTTPException)(answer_http_exception)
    app.exception_handler(RequestValidationError)(answer_invalid_request)
    app.middleware("http")(answer_errors)
    app.add_middleware(RequestGuard, max_body_bytes=config.limits.max_body_bytes)  # the outermost
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key(keys))] if keys else [])

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

    @app.get(
        "/healthz",
        summary="Liveness (no API key needed): 200 'ok', or 'degraded' while serving a cached version.",
    )
    async def healthz() -> dict[str, Any]:
        return server.health()

    @v1.get("/models", summary="Served versions: the default (with its alias URI), multiplexed ones, errors.")
    async def served_models() -> dict[str, Any]:
        return public_models(server.describe())

    @v1.post("/embed", response_model=EmbedResponse, summary="Pooled (and token-level) embeddings.")
    async def embed(body: EmbedRequest, model: Selected) -> Any:
        if body.tokens:
            count = await answer(count_token_vectors(model, body.texts))
            if count > max_token_vectors:
                raise http_error(
                    RequestError(
                        f"texts: {count} token vectors with tokens=true, over the limit of "
                        f"{max_token_vectors} (limits.max_token_vectors); send fewer or shorter texts"
                    )
                )
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
    """Serve's application builder: ``args`` are :class:`ServeConfig` fields (validated here).
    :class:`~workembed.errors.ConfigError` when auth is required and no API key is configured where the
    application is built (each replica checks its own environment again)."""
    config = ServeConfig.model_validate(args or {})
    load_api_keys(config)
    user_config = config.model_dump(mode="json")
    matcher_options: dict[str, Any] = {"user_config": user_config}
    if config.profiles.local:
        logger.info(
            "profiles.qdrant_path is set: Qdrant local mode admits one process, so Matcher runs one replica"
        )
        matcher_options["num_replicas"] = 1
    matcher = Matcher.options(**matcher_options).bind()
    return Models.options(user_config=user_config).bind(matcher)
