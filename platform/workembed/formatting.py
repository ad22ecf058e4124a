"""Numbers for reading: reports rounded to a few decimals and metric cells of Markdown tables."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

DIGITS = 4


def rounded(report: Mapping[str, Any], digits: int = DIGITS) -> dict[str, Any]:
    """A copy of ``report`` with every float rounded to ``digits`` decimals (NaN becomes None)."""

    def walk(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {key: walk(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [walk(item) for item in value]
        if isinstance(value, float):
            return None if math.isnan(value) else round(value, digits)
        return value

    return walk(report)


def format_cell(value: Any, digits: int = DIGITS) -> str:
    """A metric for a Markdown cell: ``digits`` decimals, '–' for a missing or NaN value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"
