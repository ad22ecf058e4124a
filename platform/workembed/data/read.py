"""Reading job-ad files into raw records, streaming, without ever failing on a bad row or file.

Every input record becomes one row ``{source, path, record_index, raw, record, error}``: ``raw`` is the input
bytes as read, ``record`` the parsed fields as JSON (null when parsing failed), ``error`` why parsing failed.
A file that cannot be read to its end yields one row with ``record_index = -1`` naming it, and the rest of the
input is processed. JSONL and CSV stream through a Ray Data file datasource; Parquet uses Ray's own reader
after each file's footer was checked on the driver.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.datasource import FileBasedDatasource

RAW_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("path", pa.string()),
        ("record_index", pa.int64()),
        ("raw", pa.binary()),
        ("record", pa.string()),
        ("error", pa.string()),
    ]
)
BLOCK_ROWS = 2000
CORRUPT_FILE = -1


def _json_default(value: Any) -> str:
    return str(value)


def _table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=RAW_SCHEMA)


class RawRecordDatasource(FileBasedDatasource):
    """JSONL or CSV files → raw record rows, streamed in blocks of ``BLOCK_ROWS``."""

    def __init__(self, paths, *, source: str, fmt: str, csv_delimiter: str = ",", **kwargs):
        super().__init__(paths, **kwargs)
        if fmt not in ("jsonl", "csv"):
            raise ValueError(f"RawRecordDatasource reads jsonl or csv, not {fmt!r}")
        self._source = source
        self._format = fmt
        self._delimiter = csv_delimiter

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        rows: list[dict] = []
        records = self._jsonl_records(f) if self._format == "jsonl" else self._csv_records(f)
        index = 0
        try:
            for index, (raw, record, error) in enumerate(records):
                rows.append(
                    {
                        "source": self._source,
                        "path": path,
                        "record_index": index,
                        "raw": raw,
                        "record": record,
                        "error": error,
                    }
                )
                if len(rows) >= BLOCK_ROWS:
                    yield _table(rows)
                    rows = []
        except Exception as err:  # noqa: BLE001 - a broken file is reported, never fatal
            rows.append(
                {
                    "source": self._source,
                    "path": path,
                    "record_index": CORRUPT_FILE,
                    "raw": path.encode(),
                    "record": None,
                    "error": f"corrupt file after {index} records: {type(err).__name__}: {err}",
                }
            )
        if rows:
            yield _table(rows)

    @staticmethod
    def _jsonl_records(f: pa.NativeFile) -> Iterator[tuple[bytes, str | None, str | None]]:
        for line in _lines(f):
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                yield line, None, f"invalid_utf8: {err.reason} at byte {err.start}"
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                yield line, None, f"invalid_json: {err.msg} at column {err.colno}"
                continue
            if not isinstance(value, dict):
                yield line, None, f"invalid_json: expected an object, got {type(value).__name__}"
                continue
            yield line, json.dumps(value, ensure_ascii=False, default=_json_default), None

    def _csv_records(self, f: pa.NativeFile) -> Iterator[tuple[bytes, str | None, str | None]]:
        text = io.TextIOWrapper(
            io.BufferedReader(_RawReader(f)), encoding="utf-8", errors="surrogateescape", newline=""
        )
        reader = csv.reader(text, delimiter=self._delimiter)
        header = next(reader, None)
        if header is None:
            return
        header = [name.lstrip("\ufeff").strip() for name in header]
        for fields in reader:
            buffer = io.StringIO()
            csv.writer(buffer, delimiter=self._delimiter, lineterminator="\n").writerow(fields)
            raw = buffer.getvalue().encode("utf-8", errors="surrogateescape")
            if not any(field.strip() for field in fields):
                continue
            if len(fields) != len(header):
                yield raw, None, f"invalid_csv: {len(fields)} fields, header has {len(header)}"
                continue
            if any(_has_surrogates(field) for field in fields):
                yield raw, None, "invalid_utf8: bytes that are not UTF-8"
                continue
            yield raw, json.dumps(dict(zip(header, fields, strict=True)), ensure_ascii=False), None


class _RawReader(io.RawIOBase):
    """Adapts a pyarrow input stream to Python's io stack."""

    def __init__(self, f: pa.NativeFile):
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._f.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _lines(f: pa.NativeFile, chunk_size: int = 1 << 22) -> Iterator[bytes]:
    pending = b""
    while True:
        chunk = f.read(chunk_size)
        if not chunk:
            break
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (line.rstrip(b"\r") for line in complete)
    if pending:
        yield pending.rstrip(b"\r")


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def parquet_rows_to_raw(batch: pa.Table, source: str) -> pa.Table:
    """Ray Data batch of Parquet rows (with a ``path`` column) → raw record rows."""
    rows = []
    for index, row in enumerate(batch.drop_columns(["path"]).to_pylist()):
        record = json.dumps(row, ensure_ascii=False, default=_json_default)
        rows.append(
            {
                "source": source,
                "path": batch["path"][index].as_py(),
                "record_index": None,
                "raw": record.encode(),
                "record": record,
                "error": None,
            }
        )
    return _table(rows)


def check_parquet_files(paths: list[str], filesystem) -> tuple[list[str], list[dict]]:
    """Split Parquet files into readable ones and raw rows reporting the corrupt ones (driver side)."""
    good, bad = [], []
    for path in paths:
        try:
            with filesystem.open_input_file(path) as handle:
                pq.read_metadata(handle)
            good.append(path)
        except Exception as err:  # noqa: BLE001 - reported per file
            bad.append(
                {
                    "path": path,
                    "record_index": CORRUPT_FILE,
                    "raw": path.encode(),
                    "record": None,
                    "error": f"corrupt file: {type(err).__name__}: {err}",
                }
            )
    return good, bad
