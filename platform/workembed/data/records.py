"""Raw records → ``job_ads`` rows, or quarantined rows that say which stage refused them and why.

All stages of the streaming pass share one row layout (:data:`STREAM_SCHEMA`): a row is either an ad (its
``reject_stage`` is null) or a rejected input (``reject_stage``, ``reject_reason`` and the untouched ``raw``
set). Rejected rows travel through the later stages unchanged, so one pass writes both, and a retried task
never writes a reject twice. Every raw record gives exactly one row: a record whose processing raises is
rejected (``unexpected: <type>: <message>``), never dropped, and the rest of its batch flows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import pandas as pd
import pyarrow as pa

from workembed.data.config import SourceConfig, ValidationConfig
from workembed.data.read import CORRUPT_FILE, unexpected
from workembed.data.text import LanguageDetector, clean_text, html_to_text

UNDETERMINED = "und"

SKILL_MATCH = pa.struct([("uri", pa.string()), ("score", pa.float32()), ("method", pa.string())])

STREAM_SCHEMA = pa.schema(
    [
        ("ad_id", pa.string()),
        ("title", pa.string()),
        ("description", pa.string()),
        ("language", pa.string()),
        ("source", pa.string()),
        ("posted_at", pa.string()),
        ("meta", pa.string()),
        ("path", pa.string()),
        ("record_index", pa.int64()),
        ("minhash", pa.list_(pa.uint64())),
        ("sentences", pa.list_(pa.string())),
        ("n_segmented", pa.int32()),
        ("n_sentence_duplicates", pa.int32()),
        ("sentence_skills", pa.list_(pa.list_(SKILL_MATCH))),
        ("grounding", pa.string()),
        ("occupation_uri", pa.string()),
        ("occupation_score", pa.float32()),
        ("reject_stage", pa.string()),
        ("reject_reason", pa.string()),
        ("raw", pa.binary()),
    ]
)


def to_table(rows: list[dict]) -> pa.Table:
    """Rows (missing keys are null) as a table of the stream layout."""
    return pa.Table.from_pylist(rows, schema=STREAM_SCHEMA)


def reject(stage: str, reason: str, raw: bytes, **context: Any) -> dict:
    """A quarantined row."""
    return {"reject_stage": stage, "reject_reason": reason, "raw": raw, **context}


def is_reject(row: Mapping) -> bool:
    return row.get("reject_stage") is not None


def _as_text(record: Mapping, column: str | None, required: bool) -> tuple[str | None, str | None]:
    """The field's value as text, or an error message."""
    if column is None:
        return None, None
    if column not in record:
        return None, f"schema: missing column '{column}'" if required else None
    value = record[column]
    if value is None:
        return None, None
    if isinstance(value, bool) or isinstance(value, (list, dict)):
        return None, f"schema: column '{column}' holds {type(value).__name__}, expected text"
    return str(value), None


def _posted_at(value: str | None) -> str | None:
    if not value:
        return None
    stamp = pd.to_datetime(value, errors="coerce", utc=True, format="mixed")
    return None if pd.isna(stamp) else stamp.isoformat()


def _content_id(title: str, description: str) -> str:
    return hashlib.sha1(f"{title}\x1f{description}".encode()).hexdigest()[:16]


class RecordParser:
    """Turns raw records of the configured sources into ads (Ray Data ``map_batches`` callable)."""

    def __init__(self, sources: list[SourceConfig], validation: ValidationConfig, languages: list[str]):
        self._sources = {source.name: source for source in sources}
        self._validation = validation
        self._detector = LanguageDetector(languages)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return to_table([self.parse(row) for row in batch.to_pylist()])

    def parse(self, row: dict) -> dict:
        """One raw record → an ad or a rejected row (whatever the record holds: this never raises)."""
        try:
            return self._parse(row)
        except Exception as err:  # noqa: BLE001 - one record's failure is that record's reject
            context = {key: row.get(key) for key in ("source", "path", "record_index")}
            raw = row.get("raw")
            return reject("validate", unexpected(err), raw if isinstance(raw, bytes) else b"", **context)

    def _parse(self, row: dict) -> dict:
        raw = row["raw"]
        context = {"source": row["source"], "path": row["path"], "record_index": row["record_index"]}
        if row["error"] is not None:
            stage = row.get("stage") or ("read" if row["record_index"] == CORRUPT_FILE else "parse")
            return reject(stage, row["error"], raw, **context)
        if len(raw) > self._validation.max_record_bytes:
            reason = f"too_large: {len(raw)} bytes > {self._validation.max_record_bytes}"
            return reject("validate", reason, raw, **context)
        source = self._sources[row["source"]]
        record = json.loads(row["record"])
        columns = source.columns
        fields = {}
        for name, column, required in (
            ("ad_id", columns.ad_id, True),
            ("title", columns.title, True),
            ("description", columns.description, True),
            ("posted_at", columns.posted_at, False),
        ):
            value, error = _as_text(record, column, required)
            if error:
                return reject("validate", error, raw, **context)
            fields[name] = value
        title = clean_text(html_to_text(fields["title"] or ""))
        description = clean_text(html_to_text(fields["description"] or ""))
        if len(description) < self._validation.min_description_chars:
            minimum = self._validation.min_description_chars
            reason = f"no_text: description has {len(description)} characters (< {minimum})"
            return reject("validate", reason, raw, **context)
        language = source.language or self._detector.detect(description) or UNDETERMINED
        ad_id = fields["ad_id"].strip() if fields["ad_id"] else _content_id(title, description)
        meta = {key: record.get(key) for key in columns.meta if key in record}
        return {
            "ad_id": f"{source.name}:{ad_id}",
            "title": title,
            "description": description,
            "language": language,
            "posted_at": _posted_at(fields["posted_at"]),
            "meta": json.dumps(meta, ensure_ascii=False) if meta else None,
            **context,
        }
