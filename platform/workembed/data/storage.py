"""Filesystems for local paths and ``s3://`` URIs (pyarrow), configured from config or the AWS environment."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import pyarrow.fs as pafs
from pydantic import SecretStr

from workembed.config import is_uri
from workembed.errors import NotFoundError

if TYPE_CHECKING:
    from workembed.data.config import StorageConfig


def filesystem_for(location: str, storage: StorageConfig | None = None) -> pafs.FileSystem:
    """The pyarrow filesystem that holds ``location`` (S3 settings from ``storage``, else the AWS
    environment)."""
    if not location.startswith("s3://"):
        if is_uri(location) and not location.startswith("file://"):
            return pafs.FileSystem.from_uri(location)[0]
        return pafs.LocalFileSystem()
    endpoint = getattr(storage, "endpoint_url", None) or os.environ.get("AWS_ENDPOINT_URL")
    kwargs = {
        "region": getattr(storage, "region", None) or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        "access_key": _credential(storage, "access_key_id") or os.environ.get("AWS_ACCESS_KEY_ID"),
        "secret_key": _credential(storage, "secret_access_key") or os.environ.get("AWS_SECRET_ACCESS_KEY"),
    }
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs |= {"endpoint_override": parsed.netloc or parsed.path, "scheme": parsed.scheme or "https"}
    return pafs.S3FileSystem(**{k: v for k, v in kwargs.items() if v is not None})


def _credential(storage: StorageConfig | None, name: str) -> str | None:
    """A key of ``storage`` in clear (None when unset): the one place a configured secret is read."""
    value = getattr(storage, name, None)
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return value or None


def strip_scheme(location: str) -> str:
    """pyarrow filesystems take ``bucket/key``, not ``s3://bucket/key``."""
    return location.split("://", 1)[1] if is_uri(location) else location


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for local paths and URIs alike."""
    return "/".join([base.rstrip("/"), *parts])


def list_files(locations: list[str], fs: pafs.FileSystem) -> list[str]:
    """Expand folders into the files they hold (recursively; hidden and ``_`` files skipped), sorted."""
    files: list[str] = []
    for location in locations:
        path = strip_scheme(location)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise NotFoundError(f"input not found: {location}")
        if info.type == pafs.FileType.File:
            files.append(path)
            continue
        for entry in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
            name = entry.base_name
            if entry.type == pafs.FileType.File and not name.startswith((".", "_")):
                files.append(entry.path)
    if not files:
        raise NotFoundError(f"no input files in {', '.join(locations)}")
    return sorted(files)
