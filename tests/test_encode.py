"""Pure encoding pieces: value converters, framing, file names."""

from __future__ import annotations

import gzip
import hashlib
import json
import string
import threading
from collections.abc import Generator
from typing import Any, cast

import msgspec
import orjson
from hypothesis import given
from hypothesis import strategies as st

from dumper.format import encode
from dumper.format.layout import table_file_name, unique_file_names
from dumper.format.stored import HASH_BEHIND, StoredWriter, Tally, read_stats


def test_timestamptz_to_xsd() -> None:
    assert encode.timestamptz("2024-01-02 03:04:05+00") == "2024-01-02T03:04:05+00:00"
    assert encode.timestamptz("2024-01-02 03:04:05.5-08") == "2024-01-02T03:04:05.5-08:00"
    assert encode.timestamptz("2024-01-02 03:04:05+05:30") == "2024-01-02T03:04:05+05:30"
    assert encode.timestamptz("1900-01-01 00:00:00+00:53:28") == "1900-01-01T00:00:00+00:53:28"
    assert encode.timestamptz("0044-03-15 12:00:00+00 BC") == "0044-03-15T12:00:00+00:00 BC"
    assert encode.timestamptz("10000-01-01 00:00:00+00") == "10000-01-01T00:00:00+00:00"
    assert encode.timestamptz("infinity") == "infinity"
    assert encode.timestamptz("-infinity") == "-infinity"


def test_timestamp_to_xsd() -> None:
    assert encode.timestamp("2024-01-02 03:04:05.123") == "2024-01-02T03:04:05.123"
    assert encode.timestamp("0044-03-15 12:00:00 BC") == "0044-03-15T12:00:00 BC"
    assert encode.timestamp("-infinity") == "-infinity"


def test_numbers_are_verbatim_unless_not_finite() -> None:
    row = {
        "a": encode.number("12345678901234567890.000000000000000000001"),
        "b": encode.number("NaN"),
        "c": encode.number("-Infinity"),
        "d": encode.number("1e+100"),
    }
    assert (
        msgspec.json.encode(row)
        == b'{"a":12345678901234567890.000000000000000000001,"b":"NaN","c":"-Infinity","d":1e+100}'
    )


def test_json_text_keeps_one_row_per_line() -> None:
    text = '{\r\n  "a": "x\\ny",\n  "b": [1,\n2]\n}'
    out = msgspec.json.encode({"j": encode.json_text(text)})
    assert b"\n" not in out and b"\r" not in out
    assert json.loads(out) == {"j": json.loads(text)}


@given(
    st.lists(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=2, max_size=2), max_size=30),
    st.integers(1, 7),
    st.sampled_from(["jsonl", "json"]),
)
def test_framing_in_any_batches_is_valid_and_countable(rows: list[list[int]], step: int, fmt: str) -> None:
    framer = encode.Framer(fmt)
    out = framer.header()
    for i in range(0, len(rows), step):
        batch = rows[i : i + step]
        out += framer.separator(len(batch)) + encode.RowEncoder(["a", "b"], fmt == "json").encode(batch)
    out += framer.footer()
    expected = [{"a": a, "b": b} for a, b in rows]
    if fmt == "json":
        assert json.loads(out) == expected
    else:
        assert [json.loads(line) for line in out.splitlines()] == expected
    assert encode.rows_in(out.count(b"\n"), fmt) == len(rows)


# Values whose JSON holds ',', '\\n' and ']': a batch is joined and split on them.
tricky = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.text(),
    st.sampled_from([",\n,", "]", "\n", '{"a":1},\n,{']).map(
        lambda t: encode.json_text(orjson.dumps([t, {"k": t}]).decode().replace(",", ",\n"))
    ),
)


@given(st.lists(st.tuples(tricky, tricky), max_size=12), st.booleans())
def test_a_batch_is_its_rows_encoded_one_by_one(rows: list[tuple[Any, Any]], array: bool) -> None:
    body = encode.RowEncoder(["a", "b"], array).encode(rows)
    lines = [msgspec.json.encode({"a": a, "b": b}) for a, b in rows]
    assert body == (b",\n".join(lines) if array else b"".join(line + b"\n" for line in lines))


plain_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.text(st.characters(codec="utf-8")),
    st.lists(st.text(), max_size=3),
)
column_names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=63)


@given(
    st.lists(column_names, min_size=1, max_size=8, unique=True).flatmap(
        lambda names: st.tuples(st.just(names), st.lists(st.tuples(*[plain_values] * len(names)), max_size=5))
    )
)
def test_any_column_names_make_the_same_bytes_as_orjson(table: tuple[list[str], list[tuple[Any, ...]]]) -> None:
    """Names msgspec takes as Struct fields and names it refuses ('"', '\\', control characters: a dict per
    row) both come out as orjson writes the row as a dict - an independent encoder as the reference."""
    names, rows = table
    body = encode.RowEncoder(names, False).encode(rows)
    lines = [orjson.dumps(dict(zip(names, row, strict=True)), option=orjson.OPT_APPEND_NEWLINE) for row in rows]
    assert body == b"".join(lines)


identifiers = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=63).filter(
    lambda s: len(s.encode()) <= 63
)


@given(st.lists(st.tuples(identifiers, identifiers), min_size=1, max_size=20, unique=True))
def test_file_names_are_safe_and_unique(pairs: list[tuple[str, str]]) -> None:
    names = unique_file_names([table_file_name(s, t, "jsonl", "gzip") for s, t in pairs])
    assert len({n.lower() for n in names}) == len(names)
    allowed = set(string.ascii_letters + string.digits + "_-.%~")
    for name in names:
        assert set(name) <= allowed and not name.startswith(".") and len(name) <= 255
        assert name.endswith(".jsonl.gz")


def test_file_names_are_readable_for_plain_names() -> None:
    assert table_file_name("public", "orders", "jsonl", "none") == "public.orders.jsonl"
    assert table_file_name("public", "Dot.ted", "json", "gzip") == "public.Dot%2Eted.json.gz"


@given(st.lists(st.binary(max_size=2000), max_size=10), st.sampled_from(["none", "gzip"]), st.integers(1, 9))
def test_stored_writer_and_reader_agree(chunks: list[bytes], compression: str, level: int) -> None:
    """Every level (1-3: ISA-L, 4-9: zlib) writes standard gzip that gzip reads back."""
    writer = StoredWriter(compression, level)
    data = b"".join(writer.add(chunk) for chunk in chunks) + writer.finish()
    content = gzip.decompress(data) if compression == "gzip" else data
    assert content == b"".join(chunks)
    stats = read_stats([data[i : i + 7] for i in range(0, len(data), 7)], compression)
    assert (stats.bytes, stats.sha256, stats.newlines) == (len(data), writer.sha256, content.count(b"\n"))


def test_chunks_hashed_in_a_thread_are_hashed_in_order() -> None:
    """Large chunks are hashed in a thread while the reader has them, small ones where they are
    read; the hash is the stored bytes' in order, and a read left midway leaves no thread behind."""
    big = HASH_BEHIND
    chunks = [b"a" * big, b"b" * 10, b"c" * (big + 1), b"d" * big, b"e", b"f" * (big * 2)]
    tally = Tally(chunks)
    assert b"".join(tally) == b"".join(chunks)
    assert tally.sha256 == hashlib.sha256(b"".join(chunks)).hexdigest() and tally.bytes == len(b"".join(chunks))

    def hashing() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("sha256")]

    left = cast(Generator[bytes, None, None], iter(Tally(chunks)))  # Tally.__iter__ is a generator
    assert next(left) == chunks[0] and len(hashing()) == 1
    left.close()
    assert hashing() == []


def test_json_nulls_are_marked_found_and_removed_by_the_assembly() -> None:
    """The encoder marks a json/jsonb JSON null; the assembly records its row and column and
    writes plain `null`. A column whose key ends like another's is not mistaken for it."""
    from dumper.dump.assemble import Assembly
    from dumper.format.jsonnulls import JsonNulls, per_row

    names = ["b", 'x"b', "note"]
    encoder = encode.RowEncoder(names, array=False)
    records = [
        (encode.jsonb_text("null"), encode.json_text("1"), "null"),
        (None, encode.json_text(" null "), None),
        (encode.jsonb_text("[null]"), encode.json_text("null"), "x"),
        (encode.jsonb_text("null"), encode.json_text("null"), "x"),
    ]
    body = encoder.encode(records)
    assert body.count(encode.JSON_NULL_MARK.encode()) == 5
    keys = {msgspec.json.encode(n) + b":": n for n in names[:2]}
    assembly = Assembly("public.t", None, 1, encode.Framer("jsonl"), StoredWriter("none", 6), json_keys=keys)  # type: ignore[arg-type]
    assembly.framer.rows = 10  # rows already in the file before this batch
    written = assembly._json_nulls(body, 10)
    assert encode.JSON_NULL_MARK.encode() not in written
    assert [orjson.loads(line) for line in written.splitlines()] == [
        {"b": None, 'x"b': 1, "note": "null"},
        {"b": None, 'x"b': None, "note": None},
        {"b": [None], 'x"b': None, "note": "x"},
        {"b": None, 'x"b': None, "note": "x"},
    ]
    assert assembly.json_nulls == {"b": [[10, 1], [13, 1]], 'x"b': [[11, 3]]}
    nulls = JsonNulls(assembly.json_nulls)
    assert nulls.within(11, 2) == {'x"b': [1, 2]}
    assert nulls.within(12, 10) == {"b": [2], 'x"b': [1, 2]}
    assert nulls.within(0, 10) == {}
    assert per_row(nulls.within(12, 2)) == {0: ['x"b'], 1: ["b", 'x"b']}
    assert JsonNulls(assembly.json_nulls, ["b"]).within(0, 100) == {"b": [11, 14]}
