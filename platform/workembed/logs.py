"""One log: every module writes to ``logging.getLogger(__name__)``, a child of the ``workembed`` logger, and
the command line and each job entrypoint call :func:`setup_logging` once.

The console (standard error) shows workembed's messages as plain lines from INFO up (``-v``: DEBUG,
``-q``: WARNING) and the libraries' (Ray, transformers, DeepSpeed, MLflow, ...) from WARNING up. With a log
file, everything also goes to that file with its time, level and logger: workembed's from DEBUG, the
libraries' from INFO. Progress bars (tqdm, Ray Data's) are not log records and stay as they are.

Some libraries (Ray Data, MLflow) install their own console handler when they are first imported;
:func:`quiet_libraries` applies the settings again after such an import (``workembed run`` calls it once the
stage is loaded).

In a pipeline job (``$WORKEMBED_JOB_LOG`` set by ``workembed pipeline run``), workembed's console lines start
with :data:`JOB_LINE_PREFIX`: the pipeline runner shows those lines and keeps the whole job log in a file.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

LOGGER = "workembed"
LIBRARIES = (
    "ray",
    "ray.data",
    "ray.train",
    "ray.tune",
    "ray.serve",
    "transformers",
    "sentence_transformers",
    "huggingface_hub",
    "datasets",
    "torch",
    "deepspeed",
    "vllm",
    "mlflow",
    "alembic",
    "urllib3",
    "botocore",
    "boto3",
    "s3fs",
    "fsspec",
    "filelock",
    "httpx",
    "qdrant_client",
)
"""Loggers of the libraries workembed drives: WARNING and up on the console, INFO and up in the log file."""
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LIBRARY_FORMAT = "%(levelname)s %(name)s: %(message)s"

JOB_LOG_ENV = "WORKEMBED_JOB_LOG"
"""Set (to ``1``) in the environment of the pipeline's jobs: their workembed console lines get the prefix."""
JOB_LINE_PREFIX = "workembed| "
"""Start of a workembed console line in a pipeline job's log (the runner shows these lines only)."""

_CONSOLE = "workembed-console"
_LIBRARY_CONSOLE = "workembed-library-console"
_FILE = "workembed-file"


class StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr``, whichever object it is at the time (tests and tqdm swap it)."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        logging.Handler.__init__(self, level)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr


class PlainFormatter(logging.Formatter):
    """The message alone; warnings and errors start with their level (``warning: ...``); in a pipeline job
    every line of it starts with :data:`JOB_LINE_PREFIX`."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING:
            message = f"{record.levelname.lower()}: {message}"
        if os.environ.get(JOB_LOG_ENV):
            message = "\n".join(JOB_LINE_PREFIX + line for line in message.splitlines())
        return message


def job_console_line(line: str) -> str | None:
    """The workembed console line carried by a line of a pipeline job's log (prefix removed), None for
    anything else (library output, progress bars, worker logs)."""
    line = line.rstrip("\r\n")
    start = line.find(JOB_LINE_PREFIX)
    if start < 0 or line[:start].strip():
        return None
    return line[start + len(JOB_LINE_PREFIX) :]


def console_level(verbosity: int) -> int:
    """``-q`` (negative): WARNING, default: INFO, ``-v`` (positive): DEBUG."""
    return logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO


def setup_logging(verbosity: int = 0, log_file: str | os.PathLike | None = None) -> None:
    """Send workembed's log to standard error at ``verbosity`` and, with ``log_file``, everything to that
    file. Idempotent: a second call adjusts the handlers of the first (it adds none)."""
    package = logging.getLogger(LOGGER)
    console = _named(package, _CONSOLE) or _add(package, StderrHandler(), _CONSOLE, PlainFormatter())
    console.setLevel(console_level(verbosity))

    root = logging.getLogger()
    if _named(root, _LIBRARY_CONSOLE) is None:  # the libraries' warnings (workembed's have their own line)
        libraries = _add(
            root, StderrHandler(logging.WARNING), _LIBRARY_CONSOLE, logging.Formatter(LIBRARY_FORMAT)
        )
        libraries.addFilter(lambda record: not _is_workembed(record.name))

    file = _named(root, _FILE)
    if log_file is not None:
        path = Path(log_file).expanduser().resolve()
        if file is None or Path(file.baseFilename) != path:
            if file is not None:
                _remove(file)
            path.parent.mkdir(parents=True, exist_ok=True)
            file = _add(
                root, logging.FileHandler(path, encoding="utf-8"), _FILE, logging.Formatter(FILE_FORMAT)
            )
            print(f"workembed: the full log goes to {path}", file=sys.stderr, flush=True)
        root.setLevel(min(root.level or logging.WARNING, logging.INFO))
    package.setLevel(logging.DEBUG if file is not None else console.level)
    quiet_libraries()


def add_logging_args(parser: argparse.ArgumentParser, after_command: bool = False) -> None:
    """``-q`` / ``-v`` / ``--log-file FILE`` for :func:`setup_logging_from_args`. ``after_command``: on a
    sub-command's parser (``run STAGE``, which the job entrypoints use), where given values replace those
    given before the command and absent ones leave them."""
    default: dict[str, object] = {"default": argparse.SUPPRESS} if after_command else {}
    group = parser.add_argument_group("logging")
    group.add_argument(
        "-q", "--quiet", action="count", help="warnings and errors only (no progress lines)", **default
    )
    group.add_argument("-v", "--verbose", action="count", help="also debug messages", **default)
    group.add_argument(
        "--log-file", metavar="FILE", help="also write everything (libraries included) to FILE", **default
    )


def setup_logging_from_args(args: argparse.Namespace) -> None:
    """:func:`setup_logging` as the options of :func:`add_logging_args` say."""
    verbosity = (getattr(args, "verbose", None) or 0) - (getattr(args, "quiet", None) or 0)
    setup_logging(verbosity, getattr(args, "log_file", None))


def quiet_libraries() -> None:
    """Give the libraries' loggers their levels again: WARNING on their own console handlers, INFO when a log
    file is set up (which those loggers that do not propagate get as a handler too), else WARNING."""
    file = _named(logging.getLogger(), _FILE)
    for name in LIBRARIES:
        library = logging.getLogger(name)
        library.setLevel(logging.INFO if file is not None else logging.WARNING)
        for handler in library.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(max(handler.level, logging.WARNING))
        if file is not None and not library.propagate and file not in library.handlers:
            library.addHandler(file)


def _is_workembed(name: str) -> bool:
    return name == LOGGER or name.startswith(LOGGER + ".")


def _named(logger: logging.Logger, name: str) -> logging.Handler | None:
    return next((handler for handler in logger.handlers if handler.get_name() == name), None)


def _add(logger: logging.Logger, handler: logging.Handler, name: str, formatter: logging.Formatter):
    handler.set_name(name)
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    return handler


def _remove(file: logging.Handler) -> None:
    """Take the log file's handler off every logger that has it and close it."""
    for logger in [logging.getLogger(), *(logging.getLogger(name) for name in LIBRARIES)]:
        if file in logger.handlers:
            logger.removeHandler(file)
    file.close()
