"""Filesystems for local paths and ``s3://`` URIs (pyarrow), configured from config or the AWS environment."""

from __future__ import annotations

import os
from urllib.parse import urlparse

import pyarrow.fs as pafs

from workembed.data.config import StorageConfig


def filesystem_for(location: str, storage: StorageConfig) -> pafs.FileSystem:
    """The pyarrow filesystem that holds ``location``."""
    if not location.startswith("s3://"):
        if "://" in location and not location.startswith("file://"):
            return pafs.FileSystem.from_uri(location)[0]
        return pafs.LocalFileSystem()
    endpoint = storage.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    kwargs = {
        "region": storage.region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        "access_key": storage.access_key_id or os.environ.get("AWS_ACCESS_KEY_ID"),
        "secret_key": storage.secret_access_key or os.environ.get("AWS_SECRET_ACCESS_KEY"),
    }
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs |= {"endpoint_override": parsed.netloc or parsed.path, "scheme": parsed.scheme or "https"}
    return pafs.S3FileSystem(**{k: v for k, v in kwargs.items() if v is not None})


def strip_scheme(location: str) -> str:
    """pyarrow filesystems take ``bucket/key``, not ``s3://bucket/key``."""
    return location.split("://", 1)[1] if "://" in location else location


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def list_files(locations: list[str], fs: pafs.FileSystem) -> list[str]:
    """Expand folders into the files they hold (recursively; hidden and ``_`` files skipped), sorted."""
    files: list[str] = []
    for location in locations:
        path = strip_scheme(location)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"input not found: {location}")
        if info.type == pafs.FileType.File:
            files.append(path)
            continue
        for entry in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
            name = entry.base_name
            if entry.type == pafs.FileType.File and not name.startswith((".", "_")):
                files.append(entry.path)
    if not files:
        raise FileNotFoundError(f"no input files in {', '.join(locations)}")
    return sorted(files)
