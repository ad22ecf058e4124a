"""Errors a user can act on, apart from bugs.

Every error that says "your input, config, data or registry is not as it should be" is a
:class:`WorkembedError`. The command line prints such an error as one line and exits with code 2; the
HTTP API answers it with a 4xx status. Any other exception is a bug: the command line shows its traceback
(exit 1) and the API answers 500 with a request id.

The subclasses also derive from :class:`ValueError` (or :class:`FileNotFoundError`) so that code which
caught the built-in type before keeps working.
"""

from __future__ import annotations


class WorkembedError(Exception):
    """Base of every user-facing error: the message says what is wrong and how to fix it."""


class ConfigError(WorkembedError, ValueError):
    """A configuration could not be loaded or is invalid: the message names the key and its source."""


class InputError(WorkembedError, ValueError):
    """A request, argument or input record is invalid (wrong shape, too long, unknown name)."""


class DatasetError(WorkembedError, ValueError):
    """A dataset, taxonomy export or benchmark file is missing columns, malformed or inconsistent."""


class NotFoundError(WorkembedError, FileNotFoundError):
    """A file, folder, run or model that was named does not exist."""


class RunFolderError(WorkembedError, ValueError):
    """A run's output folder cannot be used (it holds files and ``overwrite`` is off)."""


class RegistryError(WorkembedError, ValueError):
    """The model registry refused an operation or holds no such model, version or alias."""


class ClusterError(WorkembedError, RuntimeError):
    """The Ray cluster or a local service cannot do what the job needs (too few CPUs, not reachable)."""
