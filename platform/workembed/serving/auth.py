"""API-key check of the HTTP API.

The key is the value of the environment variable named by ``ServeConfig.api_key_env`` (default
``WORKEMBED_API_KEY``) in the ingress replica's environment; set it through the application's
``runtime_env.env_vars`` or the pod's environment (a Kubernetes secret), never in the config file. When the
variable is unset or empty, the API is open. When it is set, every ``/v1`` route answers 401 unless the
request's ``X-API-Key`` header equals it (compared in constant time); ``/healthz`` and the OpenAPI
documentation (``/docs``, ``/openapi.json``) stay open.
"""

import hmac
import os
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import HTTPException, Security, status
from fastapi.security import APIKeyHeader

API_KEY_HEADER = "X-API-Key"


def read_api_key(env_name: str) -> str | None:
    """The configured key: the value of ``$env_name``, None when it is unset or empty."""
    return os.environ.get(env_name) or None


def key_matches(given: str | None, expected: str) -> bool:
    """Whether ``given`` equals ``expected`` (constant-time comparison)."""
    return given is not None and hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def require_api_key(expected: str) -> Callable[..., Coroutine[Any, Any, None]]:
    """A FastAPI dependency that answers 401 unless the ``X-API-Key`` header equals ``expected``."""
    scheme = APIKeyHeader(
        name=API_KEY_HEADER, auto_error=False, description="The API key of this deployment."
    )

    async def check(given: Annotated[str | None, Security(scheme)]) -> None:
        if not key_matches(given, expected):
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail=f"missing or wrong API key: send it in the {API_KEY_HEADER} header",
                headers={"WWW-Authenticate": API_KEY_HEADER},
            )

    return check
