"""Run benchmarks: ``python -m tests.benchmarks [NAME [OPTIONS ...] ...]`` (``make bench``: all, defaults).

Options after a benchmark's name go to that benchmark (``python -m tests.benchmarks ingest --ads 2000``;
``python -m tests.benchmarks ingest --help`` lists them). A benchmark module takes options by defining
``add_arguments(parser)``; the parsed options are passed to its ``run()`` as keyword arguments.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tests.benchmarks.common import save
from workembed.logs import setup_logging

BENCHMARKS = {
    "encoder": "tests.benchmarks.bench_encoder",
    "ingest": "tests.benchmarks.bench_ingest",
    "serve": "tests.benchmarks.bench_serve",
    "synth": "tests.benchmarks.bench_synth",
    "train": "tests.benchmarks.bench_train",
}


def split_arguments(argv: list[str]) -> list[tuple[str, list[str]]] | None:
    """``[name, option, ..., name, ...]`` → ``[(name, options), ...]``; None when an option has no name."""
    groups: list[tuple[str, list[str]]] = []
    for token in argv:
        if token in BENCHMARKS:
            groups.append((token, []))
        elif groups:
            groups[-1][1].append(token)
        else:
            return None
    return groups


def parse_options(name: str, options: list[str]) -> dict[str, object]:
    """The benchmark's options as ``run()`` keyword arguments (argparse exits on a bad option)."""
    module = importlib.import_module(BENCHMARKS[name])
    parser = argparse.ArgumentParser(
        prog=f"python -m tests.benchmarks {name}", description=(module.__doc__ or "").split("\n", 1)[0]
    )
    add_arguments = getattr(module, "add_arguments", None)
    if add_arguments is not None:
        add_arguments(parser)
    return vars(parser.parse_args(options))


def main(argv: list[str]) -> int:
    groups = split_arguments(argv)
    if groups is None:
        if argv[0] in ("-h", "--help"):
            print(__doc__.strip() + f"\n\nbenchmarks: {', '.join(BENCHMARKS)}", file=sys.stderr)
            return 0
        print(f"unknown benchmark: {argv[0]}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    groups = groups or [(name, []) for name in BENCHMARKS]
    # Every benchmark's options are checked before the first one runs (a typo must not cost an hour).
    runs = [(name, parse_options(name, options)) for name, options in groups]
    setup_logging()  # the stages' progress lines, as the command line shows them
    for name, kwargs in runs:
        print(f"== benchmark: {name}", file=sys.stderr)
        save(name, importlib.import_module(BENCHMARKS[name]).run(**kwargs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
