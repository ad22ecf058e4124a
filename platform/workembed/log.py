"""Progress messages: a ``Log`` is any callable that takes one line (``print``, a logger's method)."""

from __future__ import annotations

from collections.abc import Callable

Log = Callable[[str], None]


def say(log: Log | None, message: str) -> None:
    """Send ``message`` to ``log`` when there is one."""
    if log is not None:
        log(message)
