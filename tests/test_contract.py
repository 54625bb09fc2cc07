"""The JSON contract: every row equals PostgreSQL's own to_json(row) (TimeZone=UTC),
compared exactly (numbers as decimals), for every built-in type and edge values."""

from __future__ import annotations

from typing import Any

import pytest

from devtools.pgcluster import features

from .conftest import Database, Result, parse_json

TYPES_SQL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy ☺', 'it''s');
CREATE TYPE pair AS (a int, b text, c numeric, d timestamptz);
CREATE TYPE holder AS (j json, arr int[]);
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE DOMAIN amount AS numeric(12,2);
CREATE DOMAIN tags AS text[];
CREATE DOMAIN when_tz AS timestamptz;
CREATE DOMAIN nested_dom AS posint;
CREATE DOMAIN padded AS char(4);
CREATE DOMAIN doc AS jsonb;
"""

# column -> (type, SQL literals; row i takes the i-th, the last repeats)
COLUMNS: dict[str, tuple[str, list[str]]] = {
    "int2": ("int2", ["0", "32767", "-32768"]),
    "int4": ("int4", ["1", "2147483647", "-2147483648"]),
    "int8": ("int8", ["42", "9223372036854775807", "-9223372036854775808"]),
    "numeric": (
        "numeric",
        [
            "1.5",
            "1234567890123456789012345678901234567890.0123456789",
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "-0.000000000000000000000000000001",
            "0",
            "1e-30",
            "100",
        ],
    ),
    "numeric_p": ("numeric(12,2)", ["1.50", "-9999999999.99", "0"]),
    "float4": ("float4", ["0.1", "'NaN'", "'Infinity'", "'-Infinity'", "3.4028235e38", "1e-45", "'-0'"]),
    "float8": (
        "float8",
        [
            "0.1",
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "1.7976931348623157e308",
            "5e-324",
            "'-0'",
            "123456789012345680000",
            "1e-7",
        ],
    ),
    "bool": ("bool", ["true", "false"]),
    "text": (
        "text",
        [
            "'plain'",
            "E'quote \" backslash \\\\ newline \\n tab \\t cr \\r'",
            "E'ctl \\x01 \\x1f del \\x7f'",
            "'ünïcødé 日本語 🎉 \u2028'",
            "''",
            "'line1' || chr(10) || 'line2'",
        ],
    ),
    "varchar": ("varchar(20)", ["'v'", "'with space '"]),
    "bpchar": ("char(5)", ["'ab'", "'abcde'"]),
    "name": ('"name"', ["'a name'"]),
    "qchar": ('"char"', ["'x'", "'\"'"]),
    "uuid": ("uuid", ["'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"]),
    "bytea": ("bytea", ["'\\x0001ff'::bytea", "''::bytea", "convert_to('héllo', 'UTF8')"]),
    "date": ("date", ["'2024-02-29'", "'infinity'", "'-infinity'", "'0044-03-15 BC'", "'10000-01-01'", "'0001-01-01'"]),
    "time": ("time", ["'12:34:56.789'", "'24:00:00'", "'00:00:00'"]),
    "timetz": ("timetz", ["'12:34:56+05:30'", "'00:00:00-08'", "'23:59:59.999999+14'"]),
    "ts": (
        "timestamp",
        [
            "'2024-01-02 03:04:05.123456'",
            "'infinity'",
            "'-infinity'",
            "'0044-03-15 12:00:00 BC'",
            "'10000-01-01 00:00:00'",
            "'2000-01-01'",
        ],
    ),
    "tstz": (
        "timestamptz",
        [
            "'2024-01-02 03:04:05.5+02'",
            "'infinity'",
            "'-infinity'",
            "'0044-03-15 12:00:00+00 BC'",
            "'10000-01-01 00:00:00+00'",
            "'1900-01-01 00:00:00 Europe/Berlin'",
            "'2024-06-30 23:59:59.999999-11:30'",
        ],
    ),
    "ts3": ("timestamp(3)", ["'2024-01-02 03:04:05.123456'"]),
    "interval": (
        "interval",
        ["'1 year 2 mons 3 days 04:05:06.789'", "'-1 mons +40 days -00:00:01'", "'0'", "'1 mon'", "'178000000 years'"],
    ),
    "json": (
        "json",
        [
            '\'{"b": 1, "a": [1, 2.50, 1e400]}\'',
            '\'{\n  "multi": "line",\r\n  "n": 123456789012345678901234567890\n}\'',
            "'\"just a string\"'",
            "'null'",
            '\'{"dup": 1, "dup": 2}\'',
            "'[]'",
            '\'{"esc": "\\u0000 \\n \\""}\'',
        ],
    ),
    "jsonb": (
        "jsonb",
        [
            '\'{"b": 1, "a": {"x": [true, null, 1.000]}}\'',
            "'12345678901234567890.123456789012345678901234567890'",
            '\'{"nl": "a\\nb"}\'',
            "'[]'",
        ],
    ),
    "int_arr": ("int[]", ["'{1,2,NULL,4}'", "'{}'", "'[0:1]={7,8}'"]),
    "int_arr2": ("int[][]", ["'{{1,2},{3,NULL}}'", "'{{{1}},{{2}}}'"]),
    "int8_arr": ("int8[]", ["'{9223372036854775807}'"]),
    "text_arr": ("text[]", ['\'{a,"b c",NULL,"\\\\"}\'', "'{}'", "ARRAY['x' || chr(10) || 'y']"]),
    "bool_arr": ("bool[]", ["'{t,f,NULL}'"]),
    "num_arr": ("numeric[]", ["'{1.10,NaN,12345678901234567890.5}'"]),
    "float_arr": ("float8[]", ["'{0.1,NaN,Infinity,-Infinity}'"]),
    "tstz_arr": ("timestamptz[]", ["'{\"2024-01-01 00:00:00+00\",infinity}'"]),
    "jsonb_arr": ("jsonb[]", ["ARRAY['{\"a\":1}'::jsonb, 'null', NULL]"]),
    "json_arr": ("json[]", ["ARRAY['{\"a\":\n1}'::json]"]),
    "char_arr": ("char(3)[]", ["'{a,bc}'"]),
    "uuid_arr": ("uuid[]", ["'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'"]),
    "enum": ("mood", ["'happy ☺'", "'it''s'"]),
    "enum_arr": ("mood[]", ["'{sad,ok}'"]),
    "dom_int": ("posint", ["7"]),
    "dom_nested": ("nested_dom", ["8"]),
    "dom_num": ("amount", ["12.30", "'NaN'"]),
    "dom_arr": ("tags", ["'{x,y}'"]),
    "dom_ts": ("when_tz", ["'2024-01-01 10:00:00+01'", "'infinity'"]),
    "dom_char": ("padded", ["'ab'"]),
    "dom_jsonb": ("doc", ["'{\"k\": [1, 2]}'"]),
    "composite": (
        "pair",
        ["ROW(1, 'x\"y', 1.50, '2024-01-01 00:00:00+00')::pair", "ROW(NULL, NULL, 'NaN', 'infinity')::pair"],
    ),
    "composite_json": ("holder", ["ROW('{\"a\":\n 1}', '{1,2}')::holder"]),
    "int4range": ("int4range", ["'[1,5)'", "'empty'", "'(,)'"]),
    "tstzrange": ("tstzrange", ["'[2024-01-01 00:00:00+00,2024-02-01 00:00:00+00)'"]),
    "numrange": ("numrange", ["'[1.5,2.5]'"]),
    "datemultirange": ("datemultirange", ["'{[2024-01-01,2024-01-05),[2024-02-01,2024-02-03)}'"]),
    "inet": ("inet", ["'10.0.0.1'", "'192.168.1.5/24'", "'::1'"]),
    "cidr": ("cidr", ["'10.0.0.0/8'"]),
    "macaddr": ("macaddr", ["'08:00:2b:01:02:03'"]),
    "macaddr8": ("macaddr8", ["'08:00:2b:01:02:03:04:05'"]),
    "money": ("money", ["'1234.56'", "'-0.01'"]),
    "bit": ("bit(4)", ["B'1010'"]),
    "varbit": ("varbit", ["B'101'", "B''"]),
    "xml": ("xml", ["'<a x=\"1\">t &amp; u</a>'"]),
    "tsvector": ("tsvector", ["'a fat cat:3A'"]),
    "tsquery": ("tsquery", ["'fat & (rat | cat)'"]),
    "point": ("point", ["'(1.5,2)'"]),
    "line": ("line", ["'{1,2,3}'"]),
    "lseg": ("lseg", ["'[(0,0),(1,1)]'"]),
    "box": ("box", ["'(1,1),(0,0)'"]),
    "path": ("path", ["'[(0,0),(1,1),(2,0)]'"]),
    "polygon": ("polygon", ["'((0,0),(1,1),(1,0))'"]),
    "circle": ("circle", ["'<(0,0),2>'"]),
    "oid": ("oid", ["4294967295"]),
    "regclass": ("regclass", ["'pg_class'"]),
    "pg_lsn": ("pg_lsn", ["'16/B374D848'"]),
    "jsonpath": ("jsonpath", ["'$.a[*] ? (@ > 1)'"]),
    "txid": ("pg_snapshot", ["'10:20:10,14,15'"]),
}
ROWS = max(len(values) for _, values in COLUMNS.values())


def create_every_type(db: Database, table: str = "every_type", rows: bool = True) -> None:
    cols = ",\n".join(f'  "{name}" {typ}' for name, (typ, _) in COLUMNS.items())
    # PostgreSQL 18 adds virtual generated columns (its default): to_json includes them, so must we.
    virtual = ',\n  "virtual" numeric GENERATED ALWAYS AS ("int4" * 3.0) VIRTUAL' if db.cluster.major >= 18 else ""
    db.sql(
        TYPES_SQL + f"CREATE TABLE {table} (id int PRIMARY KEY,\n{cols},\n"
        f'  "generated" numeric GENERATED ALWAYS AS ("int4" * 2.5) STORED{virtual});'
    )
    if not rows:
        return
    names = ", ".join(f'"{n}"' for n in COLUMNS)
    columns = dict(COLUMNS)
    if "xml" not in features(db.cluster.major):  # a server built without libxml parses no xml value
        columns["xml"] = ("xml", ["NULL"])
    for i in range(ROWS):
        values = ", ".join(vals[min(i, len(vals) - 1)] for _, vals in columns.values())
        db.sql(f"INSERT INTO {table} (id, {names}) VALUES ({i + 1}, {values});")
    db.sql(f"INSERT INTO {table} (id) VALUES ({ROWS + 1});")  # every column NULL


def expected_rows(db: Database, table: str = "every_type") -> dict[int, Any]:
    """to_json(row), but for the one documented exception: JSON arrays have no bounds, so an
    array whose lower bounds are not all 1 is its text form ('[0:1]={7,8}'), a JSON string."""
    rows = db.fetch(f"SELECT id, to_json(t)::text FROM {table} t")
    expected = {row[0]: parse_json(row[1]) for row in rows}
    arrays = [
        r[0]
        for r in db.fetch(
            "SELECT a.attname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "LEFT JOIN pg_type b ON b.oid = t.typbasetype WHERE a.attrelid = $1::regclass AND a.attnum > 0 "
            "AND 'A' IN (t.typcategory, b.typcategory)",
            table,
        )
    ]
    for key in arrays:
        column = '"' + key.replace('"', '""') + '"'
        for row_id, text in db.fetch(f"SELECT id, {column}::text FROM {table} WHERE left({column}::text, 1) = '['"):
            expected[row_id][key] = text
    return expected


def assert_same_as_to_json(db: Database, result: Result, table: str = "every_type") -> None:
    assert result.code == 0, result.stderr
    expected = expected_rows(db, table)
    got = {row["id"]: row for row in result.rows("public", table)}
    assert sorted(got) == sorted(expected)
    for row_id, want in expected.items():
        assert list(got[row_id]) == list(want), "keys must be in column order"
        for key in want:
            assert got[row_id][key] == want[key], f"row {row_id}, column {key!r}"
            assert type(got[row_id][key]) is type(want[key]), f"row {row_id}, column {key!r}: JSON type"


@pytest.mark.parametrize("fmt,compression", [("jsonl", "none"), ("json", "none"), ("jsonl", "gzip"), ("json", "gzip")])
def test_every_type_equals_to_json(db: Database, fmt: str, compression: str) -> None:
    create_every_type(db)
    result = db.dump("--format", fmt, "--compression", compression)
    assert_same_as_to_json(db, result)


def test_contract_holds_with_one_row_per_fetch(db: Database) -> None:
    """Batch boundaries must not change a byte: batch size 1 equals batch size 2000."""
    create_every_type(db)
    one = db.dump("--batch-rows", "1", "--run-id", "one")
    many = db.dump("--run-id", "many")
    assert one.code == many.code == 0
    assert (one.output / "one" / "public.every_type.jsonl").read_bytes() == (
        many.output / "many" / "public.every_type.jsonl"
    ).read_bytes()
    assert_same_as_to_json(db, many)


def test_long_numbers_are_not_rounded(db: Database) -> None:
    db.sql(
        "CREATE TABLE n (v numeric, j jsonb); INSERT INTO n VALUES "
        "(123456789012345678901234567890123456789.987654321, "
        "'{\"x\": 0.1000000000000000055511151231257827}')"
    )
    result = db.dump()
    line = (result.run_dir / "public.n.jsonl").read_text()
    assert '"v":123456789012345678901234567890123456789.987654321' in line
    assert "0.1000000000000000055511151231257827" in line


def test_every_jsonl_row_is_one_line(db: Database) -> None:
    create_every_type(db)
    result = db.dump()
    data = (result.run_dir / "public.every_type.jsonl").read_bytes()
    assert data.count(b"\n") == ROWS + 1
    for line in data.split(b"\n")[:-1]:
        assert isinstance(parse_json(line), dict)
