"""Reading job-ad files into raw records, streaming, without ever failing on a bad record or file.

Every input record becomes one row ``{source, path, record_index, raw, record, error, stage}``: ``raw`` is the
input bytes as read, ``record`` the parsed fields as JSON (null when the record was refused), ``error`` why it
was refused and ``stage`` where (``read``: the bytes could not be read as a record; ``parse``: they hold no
valid record). Containment is per record: a bad record costs no other record of its file.

- JSONL lines and CSV records are cut from the byte stream in chunks of ``CHUNK_BYTES``. One longer than the
  source's ``max_line_bytes`` is consumed to its end without being held: a ``read`` reject (reason
  ``too_long`` with its length) whose ``raw`` is its first ``RAW_PREFIX_BYTES`` bytes.
- Broken JSON (nesting too deep for the parser included), bytes that are not UTF-8 and CSV rows of the wrong
  width are ``parse`` rejects; any other exception one record raises makes it an ``unexpected`` reject.
- Parquet files are read row group by row group, with the page checksums verified where the writer stored
  them: a row group that cannot be decoded (a corrupt page) gives one ``read`` reject per row not read,
  ``raw`` naming the file, row group and row; the other row groups flow.
- A file that cannot be opened or read on (a bad Parquet footer, an unreadable CSV header, an I/O error)
  yields one row with ``record_index = -1`` naming it, after the records read before; the rest of the input
  is processed.

Every format streams through one Ray Data file datasource (:class:`RawRecordDatasource`); :func:`read_raw` is
its per-file function.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.datasource import FileBasedDatasource

from workembed.errors import DatasetError

RAW_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("path", pa.string()),
        ("record_index", pa.int64()),
        ("raw", pa.binary()),
        ("record", pa.string()),
        ("error", pa.string()),
        ("stage", pa.string()),
    ]
)
FORMATS = ("jsonl", "csv", "parquet")
BLOCK_ROWS = 2000
"""Rows per block a reader emits (Parquet: also rows per batch decoded)."""
BLOCK_BYTES = 64 << 20
"""A block is emitted early once its raw and parsed bytes reach this (long records make small blocks)."""
CHUNK_BYTES = 1 << 20
"""Bytes read from a JSONL or CSV file at a time."""
RAW_PREFIX_BYTES = 4096
"""Bytes of an over-long record kept as its ``raw``."""
MESSAGE_CHARS = 500
CORRUPT_FILE = -1
_BOM = b"\xef\xbb\xbf"
_QUOTE = ord('"')

Row = tuple[bytes, str | None, str | None, str | None]
"""One record as read: ``(raw, record JSON, error, stage)``; ``record`` or ``error`` is null."""


def unexpected(err: BaseException) -> str:
    """The reason of a record refused because processing it raised ``err`` (never a reason to drop it)."""
    return f"unexpected: {type(err).__name__}: {_clip(str(err))}"


def _clip(text: str) -> str:
    """A message cut to ``MESSAGE_CHARS``, as valid UTF-8 (an exception may quote undecodable input)."""
    text = text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS] + "…"
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def _json_default(value: Any) -> str:
    return str(value)


def _too_long(what: str, length: int, limit: int) -> str:
    return (
        f"too_long: {what} of {length} bytes > max_line_bytes {limit} "
        f"(raw holds its first {min(length, RAW_PREFIX_BYTES)} bytes)"
    )


# ------------------------------------------------------------------------------------ bounded records


def _newlines(chunk: bytes) -> Iterator[int]:
    """Where JSONL records end in ``chunk``."""
    end = chunk.find(b"\n")
    while end >= 0:
        yield end
        end = chunk.find(b"\n", end + 1)


class _CsvRecordEnds:
    """Where CSV records end, as Python's csv module reads them (quote ``"``, doubled quotes inside quotes,
    no escape character, not strict): at a line break (``\\n`` or ``\\r``) outside quotes, where a quote opens
    a quoted field only as the first character of a field. Called chunk after chunk of one file."""

    _SPECIAL = re.compile(rb'["\r\n]')

    def __init__(self, delimiter: str):
        self._delimiter = delimiter.encode()
        self._quoted = False
        self._quote_pending = False  # the last chunk ended on a quote inside a quoted field
        self._at_start = True  # the next chunk begins a record
        self._tail = b""  # the last bytes of the chunks so far

    def __call__(self, chunk: bytes) -> Iterator[int]:
        n, pos = len(chunk), 0
        record_start = 0 if self._at_start else -1
        while pos < n:
            if self._quote_pending:
                self._quote_pending = False
                if chunk[pos] == _QUOTE:  # a doubled quote: still inside the field
                    pos += 1
                    continue
                self._quoted = False
            if self._quoted:
                close = chunk.find(b'"', pos)
                if close < 0:
                    break
                pos = close + 1
                if pos == n:
                    self._quote_pending = True
                elif chunk[pos] == _QUOTE:
                    pos += 1
                else:
                    self._quoted = False
                continue
            match = self._SPECIAL.search(chunk, pos)
            if match is None:
                break
            at = match.start()
            pos = at + 1
            if chunk[at] == _QUOTE:
                self._quoted = at == record_start or self._before(chunk, at) == self._delimiter
                continue
            yield at
            record_start = pos
        self._at_start = record_start == n
        self._tail = (self._tail + chunk[-8:])[-8:]

    def _before(self, chunk: bytes, at: int) -> bytes:
        width = len(self._delimiter)
        return chunk[at - width : at] if at >= width else (self._tail + chunk[:at])[-width:]


def _bounded_records(
    f: pa.NativeFile, limit: int, ends: Callable[[bytes], Iterator[int]], chunk_bytes: int = CHUNK_BYTES
) -> Iterator[tuple[bytes, int]]:
    """The records of a byte stream, cut where ``ends`` says, holding at most ``limit`` bytes of one.

    Yields ``(record, length)`` without the terminator. A record over ``limit`` bytes is read to its end and
    dropped as it goes: ``(its first RAW_PREFIX_BYTES bytes, its length)``. A leading UTF-8 byte-order mark
    is skipped.
    """
    parts: list[bytes] = []
    size = 0
    prefix: bytes | None = None  # set while an over-long record is skipped
    first = True
    while chunk := f.read(chunk_bytes):
        if first:
            first = False
            chunk = chunk.removeprefix(_BOM)
        start = 0
        for end in [*ends(chunk), None]:
            stop = len(chunk) if end is None else end
            size += stop - start
            if prefix is None:
                if size <= limit:
                    parts.append(chunk[start:stop])
                else:
                    prefix = _head([*parts, chunk[start : start + RAW_PREFIX_BYTES]])
                    parts = []
            if end is None:
                break
            yield (prefix, size) if prefix is not None else (b"".join(parts), size)
            parts, size, prefix, start = [], 0, None, end + 1
    if size:
        yield (prefix, size) if prefix is not None else (b"".join(parts), size)


def _head(parts: list[bytes]) -> bytes:
    head = bytearray()
    for part in parts:
        head += part[: RAW_PREFIX_BYTES - len(head)]
        if len(head) >= RAW_PREFIX_BYTES:
            break
    return bytes(head)


# ------------------------------------------------------------------------------------ per format


def _as_record(value: dict) -> tuple[str | None, str | None]:
    """A parsed record as JSON text, or why it cannot be one."""
    try:
        record = json.dumps(value, ensure_ascii=False, default=_json_default)
    except RecursionError:
        return None, "invalid_json: nested too deeply"
    try:
        record.encode("utf-8")
    except UnicodeEncodeError as err:
        return None, f"invalid_json: a string holds the lone surrogate \\u{ord(record[err.start]):04x}"
    return record, None


def _jsonl_record(line: bytes) -> tuple[str | None, str | None]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, f"invalid_utf8: {err.reason} at byte {err.start}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        return None, f"invalid_json: {err.msg} at column {err.colno}"
    except RecursionError:
        return None, "invalid_json: nested too deeply"
    except ValueError as err:  # e.g. an integer over Python's digit limit
        return None, f"invalid_json: {_clip(str(err))}"
    if not isinstance(value, dict):
        return None, f"invalid_json: expected an object, got {type(value).__name__}"
    return _as_record(value)


def _jsonl_rows(f: pa.NativeFile, max_line_bytes: int) -> Iterator[Row]:
    for line, length in _bounded_records(f, max_line_bytes, _newlines):
        if length > max_line_bytes:
            yield line, None, _too_long("line", length, max_line_bytes), "read"
            continue
        line = line.removesuffix(b"\r")
        if not line or line.isspace():
            continue
        try:
            record, error = _jsonl_record(line)
        except Exception as err:  # noqa: BLE001 - one record's failure is that record's reject
            record, error = None, unexpected(err)
        yield line, record, error, None if error is None else "parse"


def _csv_record(raw: bytes, header: list[str], delimiter: str) -> tuple[str | None, str | None] | None:
    """A CSV record as JSON, or why it is none; None for a blank row."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, f"invalid_utf8: {err.reason} at byte {err.start}"
    try:
        fields = next(csv.reader([text], delimiter=delimiter), [])
    except csv.Error as err:
        return None, f"invalid_csv: {_clip(str(err))}"
    if not any(field.strip() for field in fields):
        return None
    if len(fields) != len(header):
        return None, f"invalid_csv: {len(fields)} fields, header has {len(header)}"
    return json.dumps(dict(zip(header, fields, strict=True)), ensure_ascii=False), None


def _csv_rows(f: pa.NativeFile, delimiter: str, max_line_bytes: int) -> Iterator[Row]:
    # A record (so each of its fields) holds at most max_line_bytes: the csv module's own field limit
    # (131,072 characters, process-wide) must not refuse less. Only ever raised.
    if csv.field_size_limit() < max_line_bytes:
        csv.field_size_limit(max_line_bytes)
    header: list[str] | None = None
    for raw, length in _bounded_records(f, max_line_bytes, _CsvRecordEnds(delimiter)):
        if header is None:
            if length > max_line_bytes:
                raise DatasetError(f"CSV header of {length} bytes > max_line_bytes {max_line_bytes}")
            text = raw.decode("utf-8", errors="replace")
            names = next(csv.reader([text], delimiter=delimiter), [])
            if any(name.strip() for name in names):
                header = [name.lstrip("\ufeff").strip() for name in names]
            continue
        if length > max_line_bytes:
            yield raw, None, _too_long("record", length, max_line_bytes), "read"
            continue
        try:
            parsed = _csv_record(raw, header, delimiter)
        except Exception as err:  # noqa: BLE001 - one record's failure is that record's reject
            parsed = None, unexpected(err)
        if parsed is not None:
            record, error = parsed
            yield raw, record, error, None if error is None else "parse"


def _arrow_rows(batch: pa.RecordBatch | pa.Table, describe: Callable[[int], bytes]) -> Iterator[Row]:
    """Arrow rows → raw record rows, one per row whatever happens; ``describe(i)`` stands for row ``i``'s
    bytes when it cannot be converted."""
    try:
        rows: list[dict] | None = batch.to_pylist()
    except Exception:  # noqa: BLE001 - some value cannot be converted: row by row, to find it
        rows = None
    for i in range(batch.num_rows):
        try:
            row = rows[i] if rows is not None else batch.slice(i, 1).to_pylist()[0]
            record, error = _as_record(row)
        except UnicodeDecodeError as err:
            record, error = None, f"invalid_utf8: {err.reason} at byte {err.start}"
        except Exception as err:  # noqa: BLE001 - one record's failure is that record's reject
            record, error = None, unexpected(err)
        if error is None:
            yield record.encode(), record, None, None
        else:
            yield describe(i), None, error, "parse"


def _parquet_rows(f: pa.NativeFile, path: str) -> Iterator[Row]:
    parquet = pq.ParquetFile(f, page_checksum_verification=True)
    metadata = parquet.metadata
    groups = metadata.num_row_groups
    first = 0  # file row number of the group's first row
    for group in range(groups):
        expected = metadata.row_group(group).num_rows
        done = 0
        try:
            for batch in parquet.iter_batches(batch_size=BLOCK_ROWS, row_groups=[group], use_threads=False):
                offset = first + done
                for row in _arrow_rows(batch, lambda i, at=offset: f"{path}: row {at + i}".encode()):
                    yield row
                    done += 1
        except Exception as err:  # noqa: BLE001 - a corrupt row group costs its own rows only
            reason = (
                f"corrupt row group: {path} row group {group} of {groups}, {expected - done} of its "
                f"{expected} rows not decodable: {type(err).__name__}: {_clip(str(err))}"
            )
            for row in range(first + done, first + expected):
                yield f"{path}: row group {group}, row {row} (not decodable)".encode(), None, reason, "read"
        first += expected


def _rows(f: pa.NativeFile, path: str, fmt: str, csv_delimiter: str, max_line_bytes: int) -> Iterator[Row]:
    if fmt == "jsonl":
        return _jsonl_rows(f, max_line_bytes)
    if fmt == "csv":
        return _csv_rows(f, csv_delimiter, max_line_bytes)
    return _parquet_rows(f, path)


# ------------------------------------------------------------------------------------ blocks


class _Block:
    """Raw record rows of one file, cut into blocks of ``BLOCK_ROWS`` rows or ``BLOCK_BYTES`` bytes."""

    def __init__(self, source: str, path: str):
        self._source, self._path = source, path
        self._rows: list[dict] = []
        self._bytes = 0

    def add(self, index: int, row: Row) -> pa.Table | None:
        raw, record, error, stage = row
        self._rows.append(
            {
                "source": self._source,
                "path": self._path,
                "record_index": index,
                "raw": raw,
                "record": record,
                "error": error,
                "stage": stage,
            }
        )
        self._bytes += len(raw) + len(record or "")
        return self.flush() if len(self._rows) >= BLOCK_ROWS or self._bytes >= BLOCK_BYTES else None

    def flush(self) -> pa.Table | None:
        rows, self._rows, self._bytes = self._rows, [], 0
        return _table(rows) if rows else None


def _table(rows: list[dict]) -> pa.Table:
    try:
        return pa.Table.from_pylist(rows, schema=RAW_SCHEMA)
    except Exception:  # noqa: BLE001 - a row Arrow cannot hold becomes a reject, the others are kept
        return pa.Table.from_pylist([_storable(row) for row in rows], schema=RAW_SCHEMA)


def _storable(row: dict) -> dict:
    try:
        pa.Table.from_pylist([row], schema=RAW_SCHEMA)
        return row
    except Exception as err:  # noqa: BLE001
        raw = row["raw"] if isinstance(row["raw"], bytes) else repr(row["raw"]).encode()
        return {**row, "raw": raw, "record": None, "error": unexpected(err), "stage": "parse"}


def read_raw(
    f: pa.NativeFile, path: str, *, source: str, fmt: str, max_line_bytes: int, csv_delimiter: str = ","
) -> Iterator[pa.Table]:
    """One file (a stream; a random-access file for Parquet) → blocks of raw record rows; never raises.

    Every record of the file is one row; a file that cannot be read to its end adds one ``CORRUPT_FILE`` row
    after the rows read before.
    """
    block = _Block(source, path)
    count = 0
    try:
        for row in _rows(f, path, fmt, csv_delimiter, max_line_bytes):
            table = block.add(count, row)
            count += 1
            if table is not None:
                yield table
    except Exception as err:  # noqa: BLE001 - a broken file is reported, never fatal
        error = f"corrupt file: {path} after {count} records: {type(err).__name__}: {_clip(str(err))}"
        table = block.add(CORRUPT_FILE, (path.encode(), None, error, "read"))
        if table is not None:
            yield table
    table = block.flush()
    if table is not None:
        yield table


class RawRecordDatasource(FileBasedDatasource):
    """JSONL, CSV or Parquet files → raw record rows (:func:`read_raw` per file)."""

    def __init__(
        self, paths, *, source: str, fmt: str, max_line_bytes: int, csv_delimiter: str = ",", **kwargs
    ):
        super().__init__(paths, **kwargs)
        if fmt not in FORMATS:
            raise ValueError(f"RawRecordDatasource reads {', '.join(FORMATS)}, not {fmt!r}")
        self._source = source
        self._format = fmt
        self._delimiter = csv_delimiter
        self._max_line_bytes = max_line_bytes

    def _open_input_source(self, filesystem, path: str, **open_args) -> pa.NativeFile:
        if self._format == "parquet":  # the footer and the row groups need random access
            return filesystem.open_input_file(path)
        return super()._open_input_source(filesystem, path, **open_args)

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        yield from read_raw(
            f,
            path,
            source=self._source,
            fmt=self._format,
            max_line_bytes=self._max_line_bytes,
            csv_delimiter=self._delimiter,
        )


def parquet_rows_to_raw(batch: pa.Table, source: str) -> pa.Table:
    """Parquet rows read elsewhere (with a ``path`` column) → raw record rows, as :func:`read_raw` converts
    them (the ingest benchmark's single-process baseline reads its files with pandas)."""
    paths = batch["path"].to_pylist()
    rows = _arrow_rows(batch.drop_columns(["path"]), lambda i: f"{paths[i]}: row {i} of its batch".encode())
    return _table(
        [
            {
                "source": source,
                "path": paths[i],
                "record_index": None,
                "raw": raw,
                "record": record,
                "error": error,
                "stage": stage,
            }
            for i, (raw, record, error, stage) in enumerate(rows)
        ]
    )
