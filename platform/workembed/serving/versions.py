"""Which model version a replica serves, and how it follows a moving alias.

A :class:`ModelHolder` serves one model URI. For ``models:/NAME@ALIAS`` it re-resolves the alias every
``alias_poll_s`` seconds in a background task; when the alias holder changes it loads the new version (and
embeds its target spaces) in a worker thread while the old one keeps serving, and only then swaps the
reference. A request takes :attr:`ModelHolder.model` once and keeps that object to the end, so a swap never
fails a request in flight. A version that fails to load is logged and reported by
:meth:`ModelHolder.status` while the old one keeps serving; the next poll tries it again.

Only gated versions are served from an alias: the version an alias names must carry a passed gate decision
for that alias, the tag ``workembed.promotion.<ALIAS>`` with decision ``promoted`` or ``forced`` (or the
``workembed.rollback.<ALIAS>`` record of the registry's rollback command). An alias moved past the gate (set
by hand) is logged as an error and the old version keeps serving; at the first start there is nothing to
serve and the holder fails (:class:`UngatedVersionError`).

When the tracking server is unreachable at the first start, an alias holder serves the version the alias
resolved to last in this download cache (recorded at every load) and reports itself ``degraded`` until a poll
reaches the registry again.

:func:`multiplexed_uri` turns the value of Serve's ``serve_multiplexed_model_id`` header into a model URI of
the default model's registered model ``NAME``: ``"2"`` → ``models:/NAME/2``, ``"challenger"`` →
``models:/NAME@challenger``, and the full URIs ``models:/NAME/2`` and ``models:/NAME@challenger``. Anything
else (another registered model, ``runs:/`` URIs, paths) is a :class:`ModelIdError` (HTTP 400). A version
selected by number is served only when it passed the gate for some alias (else :class:`UngatedVersionError`,
HTTP 403).

Downloaded versions beyond ``max_cached_versions`` are evicted from the download cache, least recently used
first, never one a holder of this process serves (:func:`~workembed.models.mlflow_models.evict_downloads`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import weakref
from datetime import UTC, datetime
from typing import Any

from workembed.errors import InputError, NotFoundError, RegistryError, WorkembedError
from workembed.models.mlflow_models import (
    RegistryUnavailableError,
    alias_version,
    cached_alias,
    evict_downloads,
    is_mlflow_uri,
    record_alias,
    registry_error,
)
from workembed.registry.tags import promotion_tag, rollback_tag
from workembed.serving.config import ServeConfig
from workembed.serving.runtime import ServedModel

logger = logging.getLogger("ray.serve")

LIVE_FIELDS = frozenset(
    {
        "model",
        "alias_poll_s",
        "max_models_per_replica",
        "max_cached_versions",
        "auth",
        "api_key_env",
        "api_keys_file",
        "limits",
        "batching",
        "profiles",
    }
)
"""ServeConfig fields a loaded :class:`ServedModel` does not depend on: a change of these reloads nothing."""

INFO_KEYS = ("dim", "extraction_threshold", "runtime", "base_model", "pooling", "max_length")
"""Keys of :attr:`ServedModel.info` that :meth:`ModelHolder.status` reports."""

PASSED_DECISIONS = frozenset({"promoted", "forced"})
"""Decisions of a ``workembed.promotion.<alias>`` tag that let a version be served."""

MAX_MODEL_ID_CHARS = 300
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_VERSION = re.compile(r"[0-9]{1,18}")
_MODEL_URI = re.compile(
    r"models:/(?P<name>[^/@]+)(?:/(?P<version>[0-9]{1,18})|@(?P<alias>[A-Za-z][A-Za-z0-9_-]*))"
)
_PROMOTION, _ROLLBACK = promotion_tag(""), rollback_tag("")

_HOLDERS: weakref.WeakSet[ModelHolder] = weakref.WeakSet()
"""Every holder of this process: the versions they serve are never evicted from the download cache."""


class UnknownModelError(NotFoundError, LookupError):
    """A requested model version does not exist (HTTP 404)."""

    def __str__(self) -> str:  # LookupError would quote the message
        return str(self.args[0]) if self.args else ""


class ModelIdError(InputError):
    """A multiplexed model id that names no version of the served registered model (HTTP 400)."""


class UngatedVersionError(RegistryError):
    """A model version that has not passed the promotion gate, so it is not served (HTTP 403)."""

    def __init__(self, message: str, version: str):
        super().__init__(message)
        self.version = version


class ModelLoadError(WorkembedError, RuntimeError):
    """A model version exists but could not be loaded (HTTP 503: the API answers when it can again)."""


def is_alias_uri(uri: str) -> bool:
    """True for ``models:/NAME@ALIAS``: the version it names can change."""
    return uri.startswith("models:/") and "@" in uri


def registered_name(uri: str) -> str | None:
    """``NAME`` of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``; None for other model names."""
    if not uri.startswith("models:/"):
        return None
    return re.split(r"[@/]", uri[len("models:/") :], maxsplit=1)[0] or None


def multiplexed_uri(model_id: str, default_uri: str) -> str:
    """The model URI a ``serve_multiplexed_model_id`` value selects (see the module docstring).

    An empty id selects ``default_uri``; any other id needs a registered default model and names a version
    or an alias of it, else :class:`ModelIdError`.
    """
    model_id = model_id.strip()
    if not model_id:
        return default_uri
    name = registered_name(default_uri)
    if name is None:
        raise ModelIdError(
            f"model '{model_id[:100]}': this server's default model '{default_uri}' is not a registered "
            "model (models:/NAME@ALIAS), so no other version can be selected"
        )
    if len(model_id) > MAX_MODEL_ID_CHARS:
        raise ModelIdError(f"model id of {len(model_id)} characters: at most {MAX_MODEL_ID_CHARS}")
    if _VERSION.fullmatch(model_id):
        return f"models:/{name}/{int(model_id)}"
    if _ALIAS.fullmatch(model_id):
        return f"models:/{name}@{model_id}"
    match = _MODEL_URI.fullmatch(model_id)
    if match is None:
        if model_id.startswith("runs:/"):
            raise ModelIdError(
                f"model '{model_id}': runs:/ URIs are not served; select a version or an alias of '{name}'"
            )
        raise ModelIdError(
            f"model '{model_id}' is neither a version number, an alias name, models:/{name}/VERSION nor "
            f"models:/{name}@ALIAS"
        )
    if match["name"] != name:
        raise ModelIdError(
            f"model '{model_id}': this server serves versions and aliases of '{name}' only, not of "
            f"'{match['name']}'"
        )
    return (
        f"models:/{name}/{int(match['version'])}" if match["version"] else f"models:/{name}@{match['alias']}"
    )


def promotion_decision(tags: dict[str, str], alias: str) -> str | None:
    """The ``decision`` of a version's ``workembed.promotion.<alias>`` tag (None: no readable tag)."""
    try:
        decision = json.loads(tags.get(promotion_tag(alias)) or "{}").get("decision")
    except (ValueError, AttributeError):
        return None
    return decision if isinstance(decision, str) else None


def gate_record(tags: dict[str, str], alias: str) -> str | None:
    """How a version with ``tags`` passed the gate for ``alias``: its promotion decision (``promoted``,
    ``forced``), ``rollback`` when the registry's rollback command moved the alias to it; None: it did not."""
    decision = promotion_decision(tags, alias)
    if decision in PASSED_DECISIONS:
        return decision
    return "rollback" if tags.get(rollback_tag(alias)) else None


def gated_aliases(tags: dict[str, str]) -> list[str]:
    """The aliases a version with ``tags`` passed the gate for (see :func:`gate_record`)."""
    aliases = {
        key[len(prefix) :] for key in tags for prefix in (_PROMOTION, _ROLLBACK) if key.startswith(prefix)
    }
    return sorted(alias for alias in aliases if gate_record(tags, alias))


def servable_version(uri: str, tracking_uri: str | None) -> None:
    """Check that the registered version ``models:/NAME/VERSION`` exists (:class:`UnknownModelError`) and
    passed the gate for some alias (:class:`UngatedVersionError`)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, _, number = uri[len("models:/") :].rpartition("/")
    try:
        version = MlflowClient(tracking_uri=tracking_uri).get_model_version(name, number)
    except MlflowException as err:
        error = registry_error(err, f"model '{uri}': '{name}' has no version {number}", tracking_uri)
        raise (UnknownModelError(str(error)) if isinstance(error, NotFoundError) else error) from None
    if not gated_aliases(version.tags):
        raise UngatedVersionError(
            f"model '{uri}': version {number} of '{name}' has not passed the promotion gate for any alias, "
            "so it is not served",
            uri,
        )


def load_served_model(uri: str, config: ServeConfig) -> ServedModel:
    """A :class:`ServedModel` of ``uri`` with its target spaces embedded (blocking: run it in a thread).

    :class:`UnknownModelError` when the model does not exist, :class:`ModelLoadError` when it exists but
    cannot be loaded.
    """
    try:
        model = ServedModel(uri, config)
    except FileNotFoundError as err:
        raise UnknownModelError(f"model '{uri}' not found: {err}") from None
    except Exception as err:
        raise ModelLoadError(f"model '{uri}' could not be loaded: {type(err).__name__}: {err}") from err
    try:
        model.warm()
    except Exception as err:
        raise ModelLoadError(
            f"model '{model.version}' could not embed its target spaces: {type(err).__name__}: {err}"
        ) from err
    return model


def _timestamp(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


class ModelHolder:
    """Serves the model ``uri`` with ``config`` (see the module docstring). With ``gated_versions`` a
    registered version URI is served only when it passed the gate for some alias (multiplexed versions)."""

    def __init__(self, uri: str, config: ServeConfig, *, gated_versions: bool = False):
        self.uri = uri
        self.config = config
        self.gated_versions = gated_versions
        self._model: ServedModel | None = None
        self._lock = asyncio.Lock()
        self._poll_task: asyncio.Task | None = None
        self.loaded_at: float | None = None
        self.last_poll: float | None = None
        self.error: dict[str, Any] | None = None
        self.degraded: dict[str, Any] | None = None
        self.closed = False
        _HOLDERS.add(self)

    @property
    def model(self) -> ServedModel:
        """The version served now (take it once per request)."""
        if self._model is None:
            raise ModelLoadError(f"model '{self.uri}' is not loaded: {self._error_text()}")
        return self._model

    @property
    def polls(self) -> bool:
        return is_alias_uri(self.uri)

    async def start(self) -> ServedModel:
        """Load the model (errors propagate: there is nothing to serve without it) and, for an alias URI,
        start re-resolving it every ``alias_poll_s``. An alias whose registry does not answer is served from
        the version it resolved to last in the download cache, if any (:attr:`degraded`)."""
        try:
            pinned = await asyncio.to_thread(self.resolve)
        except RegistryUnavailableError as err:
            pinned = self._cached_version(err)
        except UngatedVersionError as err:
            raise UngatedVersionError(
                f"model '{self.uri}': {err}; there is no version to serve: promote one through the gate "
                "(workembed models promote) or move the alias back",
                err.version,
            ) from None
        model = await self._replace(pinned)
        if self.polls and self._poll_task is None:
            self._poll_task = asyncio.get_running_loop().create_task(self._poll_forever())
        return model

    def resolve(self) -> str:
        """The version to load now (blocking): an alias's holder when it passed the gate for the alias, a
        registered version (with ``gated_versions``) when it passed the gate for some alias, else the URI."""
        tracking_uri = self.config.effective_tracking_uri()
        if self.polls:
            if not tracking_uri:
                raise UnknownModelError(
                    f"model '{self.uri}' is an MLflow URI: set tracking_uri in the serve config or "
                    "MLFLOW_TRACKING_URI"
                )
            try:
                version = alias_version(self.uri, tracking_uri)  # RegistryUnavailableError propagates
            except NotFoundError as err:
                raise UnknownModelError(str(err)) from None
            name, alias = self.uri[len("models:/") :].split("@", 1)
            pinned = f"models:/{name}/{version.version}"
            if gate_record(version.tags, alias) is None:
                decision = promotion_decision(version.tags, alias) or "no decision"
                raise UngatedVersionError(
                    f"alias '{alias}' moved to version {version.version} without a passed gate "
                    f"({promotion_tag(alias)}: {decision})",
                    pinned,
                )
            return pinned
        if self.gated_versions and self.uri.startswith("models:/"):
            servable_version(self.uri, tracking_uri)
        return self.uri

    async def reconfigure(self, config: ServeConfig) -> bool:
        """Apply a changed config: reload when a field the model depends on changed (the old version keeps
        serving if that fails; the error is logged and reported). True when a new model was swapped in."""
        reload = self.config.model_dump(exclude=LIVE_FIELDS) != config.model_dump(exclude=LIVE_FIELDS)
        self.config = config
        if not reload:
            return False
        try:
            version = self._model.version if self._model else await asyncio.to_thread(self.resolve)
            await self._replace(version)
        except Exception as err:
            self.record_error(None, err)
            return False
        return True

    async def refresh(self) -> bool:
        """Re-resolve the alias once; load and swap in the version it names now when that differs from
        the served one and passed the gate. Never raises: failures are logged and reported. True when a new
        version swapped in."""
        self.last_poll = time.time()
        served = self._model.version if self._model else None
        try:
            pinned = await asyncio.to_thread(self.resolve)
        except UngatedVersionError as err:
            self._reached_registry()
            if err.version == served:  # nothing else to serve
                return False
            self.record_error(err.version, err)
            return False
        except Exception as err:
            self.record_error(None, err)
            return False
        self._reached_registry()
        if pinned == served:
            self.error = None
            return False
        logger.info("model %s: alias now names %s; loading it", self.uri, pinned)
        try:
            await self._replace(pinned)
        except Exception as err:
            self.record_error(pinned, err)
            return False
        return True

    def close(self) -> None:
        """Stop polling (idempotent; callable from any thread)."""
        self.closed = True
        task, self._poll_task = self._poll_task, None
        if task is not None and not task.done():
            try:
                task.get_loop().call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the event loop is already closed
                pass

    def __del__(self) -> None:
        """Serve's model multiplexing calls this when it evicts the holder from a replica."""
        self.close()

    def status(self) -> dict[str, Any]:
        """What ``GET /v1/models`` shows of this holder."""
        model = self._model
        return {
            "uri": self.uri,
            "version": model.version if model else None,
            "info": {key: model.info[key] for key in INFO_KEYS if key in model.info} if model else {},
            "loaded_at": _timestamp(self.loaded_at),
            "alias_poll_s": self.config.alias_poll_s if self.polls else None,
            "last_poll": _timestamp(self.last_poll),
            "error": self.error,
            "degraded": self.degraded,
        }

    def _cached_version(self, err: RegistryUnavailableError) -> str:
        """The version the alias resolved to last in the download cache (the registry did not answer:
        ``err``); ``err`` again when there is none."""
        tracking_uri = self.config.effective_tracking_uri()
        record = cached_alias(self.uri, tracking_uri) if self.polls and tracking_uri else None
        if record is None:
            raise RegistryUnavailableError(
                f"{err}; no cached version of '{self.uri}' to fall back on"
            ) from None
        self.degraded = {
            "since": _timestamp(time.time()),
            "version": record["version"],
            "message": f"{err}; serving {record['version']}, which '{self.uri}' named at {record['at']}",
        }
        logger.error(
            "model %s: DEGRADED: the registry is unavailable (%s); serving the cached version %s that the "
            "alias named at %s until a poll reaches the registry",
            self.uri,
            err,
            record["version"],
            record["at"],
        )
        return record["version"]

    def _reached_registry(self) -> None:
        if self.degraded is not None:
            logger.warning("model %s: the registry answers again; no longer degraded", self.uri)
            self.degraded = None

    async def _replace(self, version: str) -> ServedModel:
        async with self._lock:
            config = self.config
            model = await asyncio.to_thread(load_served_model, version, config)
            previous, self._model = self._model, model
            self.loaded_at = time.time()
            self.error = None
        if previous is None:
            logger.info("model %s: serving %s", self.uri, model.version)
        else:
            logger.info("model %s: swapped %s for %s", self.uri, previous.version, model.version)
        if is_mlflow_uri(model.version):
            await asyncio.to_thread(self._after_load, model, config)
        return model

    def _after_load(self, model: ServedModel, config: ServeConfig) -> None:
        """Record the version an alias resolved to and evict old downloads (failures only logged)."""
        try:
            if self.polls and self.degraded is None:
                record_alias(self.uri, model.version, config.effective_tracking_uri())
            serving = [holder._model.path for holder in list(_HOLDERS) if holder._model and not holder.closed]
            evict_downloads(config.max_cached_versions, protect=[model.path, *serving])
        except Exception as err:
            logger.warning("model cache: %s: %s", type(err).__name__, err)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.alias_poll_s)
            await self.refresh()

    def record_error(self, version: str | None, err: Exception) -> None:
        """Log a failure to resolve or load ``version`` (None: the URI itself) and report it in
        :meth:`status` until a load succeeds or a poll finds the served version current."""
        served = self._model.version if self._model else None
        self.error = {
            "at": _timestamp(time.time()),
            "version": version,
            "message": f"{type(err).__name__}: {err}",
        }
        logger.error("model %s: %s; still serving %s", self.uri, err, served)

    def _error_text(self) -> str:
        return self.error["message"] if self.error else "no version loaded yet"
