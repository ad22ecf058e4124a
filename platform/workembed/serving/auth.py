"""API-key check of the HTTP API; it fails closed.

With ``auth: required`` (the default) every ``/v1`` route answers 401 unless the request's ``X-API-Key``
header holds one of the valid keys; ``/healthz`` and the OpenAPI documentation (``/docs``,
``/openapi.json``) stay open. The valid keys are the union of

- the environment variable named by ``ServeConfig.api_key_env`` (default ``WORKEMBED_API_KEY``), in the
  replica's environment (``runtime_env.env_vars`` or the pod's environment from a Kubernetes Secret); it may
  hold several keys separated by commas or newlines;
- the file ``ServeConfig.api_keys_file``: one key per line, blank lines and lines starting with ``#``
  ignored (e.g. a Kubernetes Secret mounted as a volume). It is re-read when it changes, so a key is rotated
  by adding the new one, moving the clients, then removing the old one, without a restart. A file that
  becomes unreadable or empty keeps the keys read last (it never opens the API).

Without any key the application refuses to start (:class:`~workembed.errors.ConfigError` from
``build_app`` and from every replica). ``auth: disabled`` opens the API on purpose; a warning says so at
every start. Keys are never written in the config file. Keys are compared in constant time (SHA-256 digests
of equal length, every key compared).
"""

import hashlib
import hmac
import logging
import os
import re
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import HTTPException, Security, status
from fastapi.security import APIKeyHeader

from workembed.errors import ConfigError

if TYPE_CHECKING:
    from workembed.serving.config import ServeConfig

logger = logging.getLogger("ray.serve")

API_KEY_HEADER = "X-API-Key"
_SEPARATORS = re.compile(r"[,\r\n]+")


def parse_keys(text: str) -> list[str]:
    """The keys in ``text``: entries separated by commas or newlines, stripped; empty entries and those
    starting with ``#`` (comments) are dropped."""
    keys = []
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        keys.extend(entry.strip() for entry in _SEPARATORS.split(line) if entry.strip())
    return keys


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class ApiKeys:
    """The valid API keys of a config: those of ``$api_key_env`` and of ``api_keys_file`` (re-read when the
    file changes). :class:`~workembed.errors.ConfigError` when there is none."""

    def __init__(self, env_name: str, keys_file: str | None = None) -> None:
        self.env_name = env_name
        self.path = Path(keys_file).expanduser() if keys_file else None
        self._env_digests = [_digest(key) for key in parse_keys(os.environ.get(env_name, ""))]
        self._file_digests: list[bytes] = []
        self._file_state: tuple | None = None
        if self.path is not None:
            self._file_digests = self._read_file()
            self._file_state = self._state()
        if not self._env_digests and not self._file_digests:
            source = f"${env_name}" + (f" or {self.path}" if self.path else "")
            raise ConfigError(
                f"auth: required, but no API key is configured: put one or more keys (comma- or "
                f"newline-separated) in {source}"
                + ("" if self.path else ", or name a file of keys in api_keys_file")
                + "; set auth: disabled only to serve an open API on purpose"
            )

    @property
    def count(self) -> int:
        """How many keys are valid now."""
        return len(self._env_digests) + len(self._file_digests)

    def _state(self) -> tuple | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def _read_file(self) -> list[bytes]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"api_keys_file: cannot read {self.path}: {err}") from None
        return [_digest(key) for key in parse_keys(text)]

    def refresh(self) -> None:
        """Re-read ``api_keys_file`` when it changed; a file that cannot be read or holds no key keeps the
        previous keys (logged)."""
        if self.path is None:
            return
        state = self._state()
        if state == self._file_state:
            return
        try:
            digests = self._read_file()
        except ConfigError as err:
            digests = None
            logger.error("%s; the keys read before stay valid", err)
        if digests is not None and not digests and not self._env_digests:
            digests = None
            logger.error("api_keys_file %s holds no key now; the keys read before stay valid", self.path)
        self._file_state = state  # logged once per change of the file
        if digests is None:
            return
        self._file_digests = digests
        logger.info("API keys re-read from %s: %d key(s)", self.path, len(digests))

    def matches(self, given: str | None) -> bool:
        """Whether ``given`` is one of the valid keys (constant time: every key is compared)."""
        if not given:
            return False
        self.refresh()
        candidate = _digest(given)
        found = False
        for digest in (*self._env_digests, *self._file_digests):
            found |= hmac.compare_digest(candidate, digest)
        return found


def load_api_keys(config: "ServeConfig") -> "ApiKeys | None":
    """The valid keys of ``config``; None (with a warning) when ``auth: disabled``.
    :class:`~workembed.errors.ConfigError` when auth is required and no key is configured."""
    if config.auth == "disabled":
        logger.warning(
            "auth: disabled: the HTTP API is open, every /v1 route answers without an API key; set "
            "auth: required and give keys through $%s or api_keys_file",
            config.api_key_env,
        )
        return None
    keys = ApiKeys(config.api_key_env, config.api_keys_file)
    sources = [f"${config.api_key_env}"] + ([str(keys.path)] if keys.path else [])
    logger.info("API key required (%d key(s) from %s)", keys.count, " and ".join(sources))
    return keys


def require_api_key(keys: ApiKeys) -> Callable[..., Coroutine[Any, Any, None]]:
    """A FastAPI dependency that answers 401 unless the ``X-API-Key`` header holds one of ``keys``."""
    scheme = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="An API key of this deployment.")

    async def check(given: Annotated[str | None, Security(scheme)]) -> None:
        if not keys.matches(given):
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail=f"missing or wrong API key: send it in the {API_KEY_HEADER} header",
                headers={"WWW-Authenticate": API_KEY_HEADER},
            )

    return check
