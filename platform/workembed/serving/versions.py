"""Which model version a replica serves, and how it follows a moving alias.

A :class:`ModelHolder` serves one model URI. For ``models:/NAME@ALIAS`` it re-resolves the alias every
``alias_poll_s`` seconds in a background task; when the alias holder changes it loads the new version (and
embeds its target spaces) in a worker thread while the old one keeps serving, and only then swaps the
reference. A request takes :attr:`ModelHolder.model` once and keeps that object to the end, so a swap never
fails a request in flight. A version that fails to load is logged and reported by
:meth:`ModelHolder.status` while the old one keeps serving; the next poll tries it again.

:func:`multiplexed_uri` turns the value of Serve's ``serve_multiplexed_model_id`` header into a model URI:
a full URI as it is, ``"2"`` → ``models:/NAME/2`` and ``"challenger"`` → ``models:/NAME@challenger``, with
``NAME`` taken from the default model URI.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from datetime import UTC, datetime
from typing import Any

from workembed.errors import NotFoundError, WorkembedError
from workembed.models.mlflow_models import is_mlflow_uri, pinned_uri
from workembed.serving.config import ServeConfig
from workembed.serving.runtime import ServedModel

logger = logging.getLogger("ray.serve")

LIVE_FIELDS = frozenset(
    {"model", "alias_poll_s", "max_models_per_replica", "api_key_env", "limits", "batching", "profiles"}
)
"""ServeConfig fields a loaded :class:`ServedModel` does not depend on: a change of these reloads nothing."""

INFO_KEYS = ("dim", "extraction_threshold", "runtime", "base_model", "pooling", "max_length")
"""Keys of :attr:`ServedModel.info` that :meth:`ModelHolder.status` reports."""

_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


class UnknownModelError(NotFoundError, LookupError):
    """A requested model version does not exist (or the request names none that could; HTTP 404)."""

    def __str__(self) -> str:  # LookupError would quote the message
        return str(self.args[0]) if self.args else ""


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

    An empty id selects ``default_uri``. A version number or an alias needs a ``models:/`` default;
    :class:`UnknownModelError` otherwise, or when the id is neither a URI, a number nor an alias name.
    """
    model_id = model_id.strip()
    if not model_id:
        return default_uri
    if is_mlflow_uri(model_id):
        return model_id
    name = registered_name(default_uri)
    if model_id.isdigit() or _ALIAS.match(model_id):
        if name is None:
            raise UnknownModelError(
                f"model '{model_id}': a version number or alias needs a registered default model "
                f"(models:/NAME@ALIAS), but the default is '{default_uri}'; give a full models:/ URI"
            )
        return f"models:/{name}/{model_id}" if model_id.isdigit() else f"models:/{name}@{model_id}"
    raise UnknownModelError(
        f"model '{model_id}' is neither a models:/ or runs:/ URI, a version number nor an alias name"
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
    """Serves the model ``uri`` with ``config`` (see the module docstring)."""

    def __init__(self, uri: str, config: ServeConfig):
        self.uri = uri
        self.config = config
        self._model: ServedModel | None = None
        self._lock = asyncio.Lock()
        self._poll_task: asyncio.Task | None = None
        self.loaded_at: float | None = None
        self.last_poll: float | None = None
        self.error: dict[str, Any] | None = None
        self.closed = False

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
        start re-resolving it every ``alias_poll_s``."""
        model = await self._replace()
        if self.polls and self._poll_task is None:
            self._poll_task = asyncio.get_running_loop().create_task(self._poll_forever())
        return model

    async def reconfigure(self, config: ServeConfig) -> bool:
        """Apply a changed config: reload when a field the model depends on changed (the old version keeps
        serving if that fails; the error is logged and reported). True when a new model was swapped in."""
        reload = self.config.model_dump(exclude=LIVE_FIELDS) != config.model_dump(exclude=LIVE_FIELDS)
        self.config = config
        if not reload:
            return False
        try:
            await self._replace()
        except Exception as err:
            self.record_error(None, err)
            return False
        return True

    async def refresh(self) -> bool:
        """Re-resolve the alias once; load and swap in the version it names now when that differs from
        the served one. Never raises: failures are logged and reported. True when a new version swapped in."""
        self.last_poll = time.time()
        tracking_uri = self.config.effective_tracking_uri()
        try:
            pinned = await asyncio.to_thread(pinned_uri, self.uri, tracking_uri)
        except Exception as err:
            self.record_error(None, err)
            return False
        if self._model is not None and pinned == self._model.version:
            self.error = None
            return False
        logger.info("model %s: alias now names %s; loading it", self.uri, pinned)
        try:
            await self._replace()
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
        }

    async def _replace(self) -> ServedModel:
        async with self._lock:
            config = self.config
            model = await asyncio.to_thread(load_served_model, self.uri, config)
            previous, self._model = self._model, model
            self.loaded_at = time.time()
            self.error = None
        if previous is None:
            logger.info("model %s: serving %s", self.uri, model.version)
        else:
            logger.info("model %s: swapped %s for %s", self.uri, previous.version, model.version)
        return model

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
        logger.error("model %s: %s (still serving %s)", self.uri, self.error["message"], served)

    def _error_text(self) -> str:
        return self.error["message"] if self.error else "no version loaded yet"
