"""Per-record containment of the ingest reader: a bad record is its own reject and costs no other record.

Real files in ``tmp_path``, read with the per-file function of the Ray datasource (:func:`read_raw`) and
turned into ads or rejects by :class:`RecordParser`, as the ingest stream does (no Ray needed). In every case
the balance holds: records read = ads + rejects, each reject with its stage and reason.
"""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workembed.data import read as read_module
from workembed.data import records as records_module
from workembed.data.config import ColumnMap, SourceConfig, ValidationConfig
from workembed.data.read import CORRUPT_FILE, RAW_PREFIX_BYTES, read_raw
from workembed.data.records import RecordParser, is_reject

BODY = "You write clean Python code and review pull requests from colleagues"
"""A description long enough to be an ad (``validation.min_description_chars``)."""


def _source(fmt: str, **overrides) -> SourceConfig:
    return SourceConfig(
        name="t",
        paths=["unused"],
        format=fmt,
        language="en",
        columns=ColumnMap(ad_id="id", title="title", description="body"),
        **overrides,
    )


def _read(path: Path, source: SourceConfig) -> list[dict]:
    """Raw record rows of one file, opened as the datasource opens it (Parquet: random access)."""
    fs = pafs.LocalFileSystem()
    opened = fs.open_input_file if source.format == "parquet" else fs.open_input_stream
    with opened(str(path)) as f:
        tables = read_raw(
            f,
            str(path),
            source=source.name,
            fmt=source.format,
            max_line_bytes=source.max_line_bytes,
            csv_delimiter=source.csv_delimiter,
        )
        return [row for table in tables for row in table.to_pylist()]


def _ingest(path: Path, source: SourceConfig) -> tuple[list[dict], dict[str, dict], list[dict]]:
    """(raw rows, ads by id, rejects) of one file; checks the balance and each reject's stage and reason."""
    raw = _read(path, source)
    parser = RecordParser([source], ValidationConfig(), ["en", "de"])
    parsed = [parser.parse(row) for row in raw]
    ads = {row["ad_id"].removeprefix("t:"): row for row in parsed if not is_reject(row)}
    rejects = [row for row in parsed if is_reject(row)]
    assert len(raw) == len(parsed) == len(ads) + len(rejects)
    for row in rejects:
        assert row["reject_stage"] in ("read", "parse", "validate") and row["reject_reason"]
        assert isinstance(row["raw"], bytes)
    return raw, ads, rejects


def _ad(ad_id: str, body: str = BODY, **fields) -> bytes:
    record = {"id": ad_id, "title": "Developer", "body": body, **fields}
    return json.dumps(record, ensure_ascii=False).encode()


def _reason(row: dict) -> str:
    return row["reject_reason"].split(":", 1)[0]


# ------------------------------------------------------------------------------------ JSONL


def test_deeply_nested_or_unparseable_json_lines_are_rejects_and_the_file_flows(tmp_path):
    lines = [
        _ad("a1"),
        b'{"id": "deep", "body": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # RecursionError in json
        b'{"id": ' + b"7" * 5000 + b"}",  # over Python's integer digit limit (ValueError)
        b'{"id": "s", "body": "\\ud800 lone surrogate, not text"}',
        _ad("a2"),
    ]
    path = tmp_path / "ads.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    raw, ads, rejects = _ingest(path, _source("jsonl"))
    assert set(ads) == {"a1", "a2"}
    assert [(row["record_index"], row["reject_stage"], _reason(row)) for row in rejects] == [
        (1, "parse", "invalid_json"),
        (2, "parse", "invalid_json"),
        (3, "parse", "invalid_json"),
    ]
    assert rejects[0]["reject_reason"] == "invalid_json: nested too deeply"
    assert rejects[0]["raw"] == lines[1]  # untouched: under max_line_bytes


def test_a_line_of_hundreds_of_mb_is_consumed_without_being_held(tmp_path):
    source = _source("jsonl")  # the default max_line_bytes (16 MiB)
    path = tmp_path / "huge.jsonl"
    line_bytes = 300 * 2**20
    with path.open("wb") as out:
        out.write(_ad("before") + b"\n" + b'{"id": "huge", "title": "x", "body": "')
        block = b"word " * (2**20 // 5)
        written = 0
        while written < line_bytes:
            out.write(block)
            written += len(block)
        out.write(b'"}\n' + _ad("after") + b"\n")
    try:
        tracemalloc.start()
        raw = _read(path, source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        size = path.stat().st_size
        path.unlink()  # pytest keeps the last runs' tmp_path
    # The reader holds at most max_line_bytes of one record plus a chunk or two, never the line.
    assert peak < source.max_line_bytes + 4 * 2**20
    assert [row["record_index"] for row in raw] == [0, 1, 2]
    huge = raw[1]
    assert huge["stage"] == "read" and huge["record"] is None
    line_length = size - len(_ad("before")) - len(_ad("after")) - 3
    assert huge["error"] == (
        f"too_long: line of {line_length} bytes > max_line_bytes {source.max_line_bytes} "
        f"(raw holds its first {RAW_PREFIX_BYTES} bytes)"
    )
    assert huge["raw"] == (b'{"id": "huge", "title": "x", "body": "' + block)[:RAW_PREFIX_BYTES]
    assert [json.loads(row["record"])["id"] for row in (raw[0], raw[2])] == ["before", "after"]


def test_an_over_long_line_is_a_read_reject_with_its_length(tmp_path):
    source = _source("jsonl", max_line_bytes=64 * 1024)
    long_line = _ad("long", body="x" * (10 * 2**20))
    path = tmp_path / "ads.jsonl"
    path.write_bytes(b"\n".join([_ad("a1"), long_line, _ad("a2")]))  # no final newline
    tracemalloc.start()
    try:
        raw, ads, rejects = _ingest(path, source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20  # the cap and a chunk or two, not the 10 MB line
    assert set(ads) == {"a1", "a2"}
    [reject] = rejects
    assert reject["reject_stage"] == "read" and reject["record_index"] == 1
    assert reject["reject_reason"].startswith(
        f"too_long: line of {len(long_line)} bytes > max_line_bytes 65536"
    )
    assert reject["raw"] == long_line[:RAW_PREFIX_BYTES]


# ------------------------------------------------------------------------------------ CSV


def _csv(rows: list[list[str]], terminator: str = "\n") -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=terminator).writerows([["id", "title", "body"], *rows])
    return buffer.getvalue().encode()


def test_a_csv_field_over_131072_characters_costs_no_other_record(tmp_path):
    huge = BODY + " " + "y" * 200_000  # over the csv module's default field limit
    multiline = f'{BODY}\nwith "quotes", commas\r\nand line breaks'
    path = tmp_path / "ads.csv"
    path.write_bytes(_csv([["c1", "Developer", BODY], ["big", "Developer", huge], ["c2", "Dev", multiline]]))

    raw, ads, rejects = _ingest(path, _source("csv"))  # max_line_bytes 16 MiB: the record is read whole
    assert set(ads) == {"c1", "big", "c2"} and not rejects
    assert len(ads["big"]["description"]) == len(huge)
    assert ads["c2"]["description"].startswith(BODY + '\nwith "quotes", commas')

    raw, ads, rejects = _ingest(path, _source("csv", max_line_bytes=64 * 1024))
    assert set(ads) == {"c1", "c2"}
    [reject] = rejects
    assert (reject["reject_stage"], _reason(reject), reject["record_index"]) == ("read", "too_long", 1)
    assert reject["raw"] == path.read_bytes().split(b"\n")[2][:RAW_PREFIX_BYTES]


def test_bad_csv_records_are_rejects_and_raw_is_the_record_as_read(tmp_path):
    path = tmp_path / "ads.csv"
    rows = _csv([["c1", "Developer", BODY]], terminator="\r\n")
    path.write_bytes(
        b"\xef\xbb\xbf"  # a byte-order mark before a quoted header
        + rows.replace(b"id,title,body", b'"id","title","body"')
        + b'w1,"only two"\r\n'
        + b"c2,caf\xe9,"
        + BODY.encode()
        + b"\r\n"
        + b'c3,5" screen,'
        + BODY.encode()
        + b"\r\n"  # a quote inside an unquoted field is text
    )
    raw, ads, rejects = _ingest(path, _source("csv"))
    assert set(ads) == {"c1", "c3"} and ads["c3"]["title"] == '5" screen'
    assert [(row["reject_stage"], row["reject_reason"]) for row in rejects] == [
        ("parse", "invalid_csv: 2 fields, header has 3"),
        ("parse", "invalid_utf8: invalid continuation byte at byte 6"),
    ]
    assert [row["raw"] for row in rejects] == [b'w1,"only two"', b"c2,caf\xe9," + BODY.encode()]


# ------------------------------------------------------------------------------------ Parquet


def _parquet(path: Path, groups: int, rows_per_group: int) -> None:
    n = groups * rows_per_group
    table = pa.table(
        {
            "id": [f"p{i}" for i in range(n)],
            "title": ["Nurse"] * n,
            "body": [f"{BODY}, ad number {i}" for i in range(n)],
        }
    )
    pq.write_table(table, path, row_group_size=rows_per_group, write_page_checksum=True)


@pytest.mark.parametrize("where", ["page header", "page data"])
def test_a_corrupt_parquet_page_rejects_only_the_rows_of_its_row_group(tmp_path, where):
    path = tmp_path / "ads.parquet"
    _parquet(path, groups=5, rows_per_group=40)
    chunk = pq.read_metadata(path).row_group(2).column(2)  # the descriptions of the middle row group
    data = bytearray(path.read_bytes())
    if where == "page header":
        at = chunk.data_page_offset
    else:  # the data page is the chunk's last page; its CRC no longer matches
        at = (chunk.dictionary_page_offset or chunk.data_page_offset) + chunk.total_compressed_size - 8
    data[at : at + 6] = b"\xff\x00\xfe\x01\xfd\x02"
    path.write_bytes(bytes(data))

    raw, ads, rejects = _ingest(path, _source("parquet"))
    assert len(raw) == 200
    assert set(ads) == {f"p{i}" for i in range(200) if not 80 <= i < 120}
    assert [row["record_index"] for row in rejects] == list(range(80, 120))
    for row in rejects:
        assert row["reject_stage"] == "read"
        assert row["reject_reason"].startswith(
            f"corrupt row group: {path} row group 2 of 5, 40 of its 40 rows not decodable: "
        )
        assert row["raw"] == f"{path}: row group 2, row {row['record_index']} (not decodable)".encode()


def test_a_parquet_footer_that_is_not_one_is_one_file_reject(tmp_path):
    path = tmp_path / "ads.parquet"
    _parquet(path, groups=2, rows_per_group=10)
    path.write_bytes(path.read_bytes()[:-20])
    raw, ads, rejects = _ingest(path, _source("parquet"))
    assert not ads
    [reject] = rejects
    assert reject["record_index"] == CORRUPT_FILE and reject["reject_stage"] == "read"
    assert reject["reject_reason"].startswith(f"corrupt file: {path} after 0 records: ")


def test_a_parquet_value_that_is_not_utf8_rejects_its_row_only(tmp_path):
    text = [f"{BODY} {i}".encode() for i in range(3)]
    text[1] = text[1].replace(b"Python", b"Pyth\xffn")
    offsets = pa.array([0, *[sum(map(len, text[: i + 1])) for i in range(3)]], pa.int32()).buffers()[1]
    body = pa.Array.from_buffers(pa.string(), 3, [None, offsets, pa.py_buffer(b"".join(text))])
    path = tmp_path / "ads.parquet"
    pq.write_table(pa.table({"id": ["u0", "u1", "u2"], "title": ["Nurse"] * 3, "body": body}), path)
    raw, ads, rejects = _ingest(path, _source("parquet"))
    assert set(ads) == {"u0", "u2"}
    [reject] = rejects
    assert (reject["reject_stage"], _reason(reject), reject["record_index"]) == ("parse", "invalid_utf8", 1)
    assert reject["raw"] == f"{path}: row 1".encode()


# ------------------------------------------------------------------------------------ unexpected failures


def test_an_unexpected_exception_while_reading_a_record_is_its_reject(tmp_path, monkeypatch):
    parse = read_module._jsonl_record

    def failing(line: bytes):
        if b"boom" in line:
            raise KeyError("boom")
        return parse(line)

    monkeypatch.setattr(read_module, "_jsonl_record", failing)
    path = tmp_path / "ads.jsonl"
    path.write_bytes(b"\n".join([_ad("a1"), _ad("boom"), _ad("a2")]))
    raw, ads, rejects = _ingest(path, _source("jsonl"))
    assert set(ads) == {"a1", "a2"}
    assert [(row["reject_stage"], row["reject_reason"], row["raw"]) for row in rejects] == [
        ("parse", "unexpected: KeyError: 'boom'", _ad("boom"))
    ]


def test_an_unexpected_exception_while_parsing_a_record_is_its_reject(tmp_path, monkeypatch):
    clean = records_module.clean_text

    def failing(text: str) -> str:
        if "boom" in text:
            raise RuntimeError("the cleaner broke")
        return clean(text)

    monkeypatch.setattr(records_module, "clean_text", failing)
    path = tmp_path / "ads.jsonl"
    path.write_bytes(b"\n".join([_ad("a1"), _ad("x", body=BODY + " boom"), _ad("a2")]))
    raw, ads, rejects = _ingest(path, _source("jsonl"))
    assert set(ads) == {"a1", "a2"}
    [reject] = rejects
    assert reject["reject_stage"] == "validate"
    assert reject["reject_reason"] == "unexpected: RuntimeError: the cleaner broke"
    assert (reject["raw"], reject["record_index"]) == (_ad("x", body=BODY + " boom"), 1)


# ------------------------------------------------------------------------------------ property


CAP = 64 * 1024
"""max_line_bytes of the property tests: small, so that over-long records are cheap to generate."""

_TEXT = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8", categories=["L", "N", "P", "Zs"], exclude_characters="<>&"),
        st.sampled_from(['"', ",", ";", "\n", "\r", "'", "\\"]),
    ),
    max_size=40,
)
"""Ad text: any letters, digits, punctuation, quotes, separators and line breaks, no HTML."""


@st.composite
def _jsonl_line(draw, index: int) -> tuple[bytes, str | None]:
    """One line and what it must give: an ad id, or the reasons its reject may have (``|``-joined)."""
    body = BODY + " " + draw(_TEXT)
    valid = _ad(f"v{index}", body=body, title=draw(_TEXT))
    kind = draw(
        st.sampled_from(
            [
                "valid",
                "valid",
                "truncated",
                "deep",
                "too_long",
                "wrong_type",
                "not_utf8",
                "not_object",
                "huge_int",
                "lone_surrogate",
                "blank",
            ]  # fmt: skip
        )
    )
    if kind == "valid":
        return valid, f"v{index}"
    if kind == "truncated":
        return valid[: draw(st.integers(1, len(valid) - 1))], "invalid_json|invalid_utf8"
    if kind == "deep":  # far deeper than the recursion limit (which Hypothesis raises while it runs a test)
        depth = draw(st.integers(20_000, 30_000))
        return _ad(f"d{index}")[:-1] + b', "nested": ' + b"[" * depth + b"]" * depth + b"}", "invalid_json"
    if kind == "too_long":
        return _ad(f"l{index}", body=body + "x" * draw(st.integers(CAP, 3 * CAP))), "too_long"
    if kind == "wrong_type":
        field = draw(st.sampled_from(["id", "title", "body"]))
        value = draw(st.sampled_from([["a", "list"], {"a": "dict"}, True]))
        return json.dumps({"id": f"w{index}", "title": "t", "body": body, field: value}).encode(), "schema"
    if kind == "not_utf8":
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"]))
        return valid.replace(BODY.encode(), BODY.encode() + bad, 1), "invalid_utf8"
    if kind == "not_object":
        return draw(st.sampled_from([b"[1, 2]", b"42", b'"text"', b"null"])), "invalid_json"
    if kind == "huge_int":
        return b'{"id": ' + b"9" * draw(st.integers(4_400, 6_000)) + b"}", "invalid_json"
    if kind == "lone_surrogate":
        return _ad(f"s{index}", body=BODY).replace(b"You", b"\\udc00You", 1), "invalid_json"
    return draw(st.sampled_from([b"", b"   ", b"\r", b"\t "])), None


@st.composite
def _jsonl_file(draw) -> list[tuple[bytes, str | None]]:
    count = draw(st.integers(0, 12))
    return [draw(_jsonl_line(i)) for i in range(count)]


def _check(path: Path, source: SourceConfig, expected: list[str]) -> None:
    """Every record is one ad or one reject; each valid ad comes out, each bad one is a reject for a reason
    its kind allows, in file order."""
    raw, ads, rejects = _ingest(path, source)
    assert len(raw) == len(expected)  # records in: every non-blank line, nothing dropped, nothing invented
    assert set(ads) == {want for want in expected if not want.startswith("!")}
    allowed = [want[1:].split("|") for want in expected if want.startswith("!")]
    assert len(rejects) == len(allowed)
    for row, reasons in zip(rejects, allowed, strict=True):
        assert _reason(row) in reasons, (row["reject_reason"], reasons)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=_jsonl_file(), final_newline=st.booleans())
def test_jsonl_balance_holds_for_any_mix_of_valid_and_malformed_lines(tmp_path_factory, lines, final_newline):
    path = tmp_path_factory.mktemp("jsonl") / "ads.jsonl"
    path.write_bytes(b"\n".join(line for line, _ in lines) + (b"\n" if final_newline else b""))
    expected = [want if want.startswith("v") else f"!{want}" for _, want in lines if want is not None]
    _check(path, _source("jsonl", max_line_bytes=CAP), expected)


@st.composite
def _csv_record(draw, index: int) -> tuple[bytes, str | None]:
    """One CSV record (with its line break) and what it must give, as for JSONL."""
    body = BODY + " " + draw(_TEXT)
    terminator = draw(st.sampled_from(["\n", "\r\n"]))

    def row(*fields: str) -> bytes:
        # Written with "\r\n" so that fields holding either line break are quoted (csv.writer quotes only
        # the characters of its line terminator), then ended with the drawn one.
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\r\n").writerow(fields)
        return (buffer.getvalue().removesuffix("\r\n") + terminator).encode()

    kind = draw(st.sampled_from(["valid", "valid", "unquoted", "width", "not_utf8", "too_long", "blank"]))
    if kind == "valid":
        return row(f"v{index}", draw(_TEXT), body), f"v{index}"
    if kind == "unquoted":  # written by hand: quotes inside unquoted fields are text
        title = draw(st.text(alphabet=st.sampled_from('ab "'), max_size=8)).lstrip('"')
        return f'v{index},{title},{BODY} 5" screen{terminator}'.encode(), f"v{index}"
    if kind == "width":
        return row(f"w{index}", body, *[draw(_TEXT)] * draw(st.sampled_from([0, 2, 3]))), "invalid_csv"
    if kind == "not_utf8":
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"]))
        return row(f"u{index}", "t", body).replace(b"You", b"You" + bad, 1), "invalid_utf8"
    if kind == "too_long":
        return row(f"l{index}", "t", body + " x\n" * draw(st.integers(CAP // 3, CAP))), "too_long"
    return draw(st.sampled_from([b"\n", b"\r\n", b",,\n"])), None


@st.composite
def _csv_file(draw) -> list[tuple[bytes, str | None]]:
    count = draw(st.integers(0, 12))
    return [draw(_csv_record(i)) for i in range(count)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=_csv_file())
def test_csv_balance_holds_for_any_mix_of_valid_and_malformed_records(tmp_path_factory, records):
    path = tmp_path_factory.mktemp("csv") / "ads.csv"
    path.write_bytes(b"id,title,body\n" + b"".join(record for record, _ in records))
    expected = [want if want.startswith("v") else f"!{want}" for _, want in records if want is not None]
    _check(path, _source("csv", max_line_bytes=CAP), expected)
