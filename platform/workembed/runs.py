"""Runs: ids, output folders (local or ``s3://``), the existing-folder policy and ``summary.json``.

Every stage that writes a run folder (ingest, synthesize, batch extraction, training's model folder) opens
it here, and the pipeline runner and the demo take their run ids here, so they all behave alike:

- the run id is the configured one or ``<prefix>-<UTC time>``;
- a local output root is made absolute (Ray workers run in another working directory), a URI is kept;
- an existing run folder that is empty is reused; one that holds files is refused unless
  ``overwrite`` is true, in which case it is emptied first;
- the summary goes to ``<run folder>/summary.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs

from workembed.config import is_uri
from workembed.data.storage import filesystem_for, join, strip_scheme
from workembed.errors import RunFolderError

if TYPE_CHECKING:
    from workembed.data.config import StorageConfig

SUMMARY_FILE = "summary.json"


def new_run_id(prefix: str) -> str:
    """``<prefix>-YYYYmmdd-HHMMSS`` in UTC."""
    return time.strftime(f"{prefix}-%Y%m%d-%H%M%S", time.gmtime())


def output_root(location: str) -> str:
    """A URI as given; a local path absolute (``~`` expanded), without a trailing slash."""
    if is_uri(location):
        return location.rstrip("/")
    return str(Path(location).expanduser().resolve())


@dataclass(frozen=True)
class RunFolder:
    """An opened run folder: its id, its location (absolute path or URI) and its pyarrow filesystem."""

    run_id: str
    path: str
    filesystem: Any

    def join(self, *parts: str) -> str:
        return join(self.path, *parts)

    def write_json(self, name: str, payload: Mapping[str, Any]) -> str:
        """Write ``payload`` as indented JSON to ``<run folder>/<name>``; returns its location."""
        location = self.join(name)
        with self.filesystem.open_output_stream(strip_scheme(location)) as handle:
            handle.write((json.dumps(payload, indent=2) + "\n").encode("utf-8"))
        return location

    def read_json(self, name: str) -> Any:
        """The JSON document ``<run folder>/<name>``."""
        with self.filesystem.open_input_stream(strip_scheme(self.join(name))) as handle:
            return json.loads(handle.read().decode("utf-8"))

    def write_summary(self, summary: Mapping[str, Any]) -> str:
        """Write the run's ``summary.json``; returns its location."""
        return self.write_json(SUMMARY_FILE, summary)

    def read_summary(self) -> dict[str, Any]:
        return self.read_json(SUMMARY_FILE)


def open_run(
    output: str,
    run_id: str | None,
    prefix: str,
    *,
    overwrite: bool = False,
    storage: StorageConfig | None = None,
) -> RunFolder:
    """The run folder ``<output>/<run_id>`` (a new ``<prefix>-<time>`` id when ``run_id`` is None), made
    ready under the one policy: missing → created; empty → reused; holds files → :class:`RunFolderError`
    unless ``overwrite``, then emptied. ``storage`` gives the S3 settings (default: the AWS environment)."""
    run_id = run_id or new_run_id(prefix)
    path = join(output_root(output), run_id)
    fs = filesystem_for(path, storage)
    where = strip_scheme(path)
    info = fs.get_file_info(where)
    if info.type == pafs.FileType.File:
        raise RunFolderError(f"run folder {path} is a file: choose another output or run_id")
    if info.type == pafs.FileType.Directory and fs.get_file_info(pafs.FileSelector(where, recursive=False)):
        if not overwrite:
            raise RunFolderError(
                f"run folder {path} already holds files: choose another run_id or set overwrite=true"
            )
        fs.delete_dir_contents(where)
    fs.create_dir(where, recursive=True)
    return RunFolder(run_id=run_id, path=path, filesystem=fs)


def sum_counts(rows: Iterable[Mapping[str, Any]], column: str) -> dict[str, int]:
    """Sum per-batch counters: each row's ``column`` holds a ``{name: count}`` dict (or its JSON)."""
    totals: dict[str, int] = {}
    for row in rows:
        counts = row[column]
        for key, value in (json.loads(counts) if isinstance(counts, str) else counts).items():
            totals[key] = totals.get(key, 0) + value
    return totals
