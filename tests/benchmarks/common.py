"""Helpers shared by the benchmarks: option types, process titles, where results go, how they are written."""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import psutil
import torch

RESULTS_DIR = Path(__file__).parent / "results"


def machine() -> dict[str, object]:
    import os

    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def save(name: str, figures: dict[str, object]) -> Path:
    """Write ``results/<name>.json`` with the figures, the machine and the time, and print them."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **figures,
    }
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload, indent=2))
    return path


def positive(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def int_list(text: str) -> list[int]:
    """argparse type: comma-separated positive integers, sorted, without repeats."""
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def cmdline(process: psutil.Process) -> str:
    """A process's command line (its title, for Ray workers); empty when it is gone or hidden."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""
