"""`restore` loads rows with COPY (format/copytext.py): every value comes back as the server's
JSON parser would give it, and as the source holds it, whatever the text inside."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from dumper.format.copytext import CopyRows, copy_columns, unicode_escapes
from dumper.format.manifest import parse

from .conftest import Database, parse_json, wait_until
from .test_contract import COLUMNS, create_every_type
from .test_parquet import OUTSIDE_SQL


def _rows(db: Database, table: str) -> list[Any]:
    """Every row as the server's text of it: exact for every type."""
    return db.fetch(f"SELECT t::text FROM {table} t ORDER BY 1")


def _loaded_through_json(result: Any) -> list[str]:
    return [
        e["table"]
        for e in map(parse_json, result.stdout.splitlines())
        if e["event"] == "loaded through the server's JSON parser (slower than COPY)"
    ]


def _without_types(run: Path, into: Path) -> Path:
    """The dump as one taken before the manifest had `types`: restored through the server's JSON parser."""
    shutil.copytree(run, into)
    manifest = json.loads((into / "manifest.json").read_text())
    del manifest["types"]
    (into / "manifest.json").write_text(json.dumps(manifest))
    return into


def test_every_type_comes_back_the_same_through_copy_and_through_json(
    db: Database, target: Database, tmp_path: Path
) -> None:
    create_every_type(db)
    db.sql(OUTSIDE_SQL)
    result = db.dump("--run-id", "copy")
    assert result.code == 0, result.stderr
    copied = target.restore(result.run_dir, "--with-schema")
    assert copied.code == 0, copied.stderr
    assert _loaded_through_json(copied) == []
    through_copy = {table: _rows(target, table) for table in ("every_type", "outside")}
    old = _without_types(result.run_dir, tmp_path / "old" / "copy")
    target.sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    parsed = target.restore(old, "--with-schema")
    assert parsed.code == 0, parsed.stderr
    assert sorted(_loaded_through_json(parsed)) == ["public.every_type", "public.outside"]
    for table, rows in through_copy.items():
        assert rows == _rows(target, table), f"{table}: COPY and the server's JSON parser differ"
    assert through_copy["outside"] == _rows(db, "outside")
    # What the JSON file cannot hold (docs/file-format.md) aside, every value is the source's.
    kept = [c for c in COLUMNS if c not in ("json", "json_arr", "jsonb_arr", "composite_json")]
    query = f"SELECT {', '.join(f'{c!r}::text' for c in ['id', *kept])} FROM every_type ORDER BY 1".replace("'", '"')
    assert target.fetch(query) == db.fetch(query)


def _hostile(rng: random.Random) -> str:
    """Text that COPY, array and record syntax all have something to say about."""
    alphabet = ["\\", '"', "'", "\t", "\n", "\r", ",", "{", "}", "(", ")", " ", "\\.", "\\N", "null", "NULL",
                "é", "☺", "\u2028", "\x01", "\x1f", "\x7f", "u0000", "\\u0041", "a", "b"]  # fmt: skip
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_hostile_text_in_every_shape_comes_back(db: Database, target: Database, fmt: str) -> None:
    rng = random.Random(20261206)
    db.sql(
        "CREATE TYPE pair AS (t text, n int, a text[]);"
        "CREATE TABLE hostile (id int PRIMARY KEY, t text, a text[], aa text[][], p pair, ps pair[], j json, "
        "jb jsonb, ja json[], c char(12), v varchar(40))"
    )
    values = []
    for i in range(300):
        texts = [_hostile(rng) for _ in range(6)]
        literal = [t.replace("'", "''") for t in texts]
        doc = json.dumps({"k": texts[0], "l": [texts[1], None]}).replace("'", "''")
        values.append(
            f"({i}, '{literal[0]}', ARRAY['{literal[1]}', NULL, '{literal[2]}'], "
            f"ARRAY[['{literal[3]}'], ['{literal[4]}']], ROW('{literal[5]}', {i}, ARRAY['{literal[0]}'])::pair, "
            f"ARRAY[ROW('{literal[1]}', NULL, NULL)::pair, NULL], "
            f"'{doc}'::json, '{doc}'::jsonb, ARRAY['{doc}'::json, 'null', NULL], "
            f"left('{literal[2]}', 12), left('{literal[3]}', 40))"
        )
    db.sql("INSERT INTO hostile VALUES " + ", ".join(values))
    db.sql("INSERT INTO hostile (id) VALUES (1000)")  # every column NULL
    result = db.dump("--run-id", "hostile", "--format", fmt)
    assert result.code == 0, result.stderr
    restored = target.restore(result.run_dir, "--with-schema")
    assert restored.code == 0, restored.stderr
    assert _loaded_through_json(restored) == []
    want = db.fetch("SELECT id, t::text FROM hostile t ORDER BY id")
    got = target.fetch("SELECT id, t::text FROM hostile t ORDER BY id")
    assert len(got) == len(want) == 301
    for mine, theirs in zip(want, got, strict=True):
        assert mine == theirs


def test_a_value_ending_in_a_backslash_does_not_hide_another_values_newline(db: Database, target: Database) -> None:
    """In one column, a value ending in a backslash (in JSON an escaped backslash before the
    closing quote) and a value with a newline (JSON's escape for it): counted together, their
    escapes once looked like escaped backslashes and quotes alone, and the newline came back
    as a backslash and an n."""
    db.sql(
        "CREATE TABLE t (id int PRIMARY KEY, a text, b varchar(10));"
        "INSERT INTO t VALUES (1, 'ends in ' || chr(92), 'x' || chr(92)), "  # chr(92): a backslash
        "(2, 'two' || chr(10) || 'lines', 'tab' || chr(9) || 'here'), (3, chr(92) || '\"', chr(92))"
    )
    result = db.dump("--run-id", "backslash")
    assert result.code == 0, result.stderr
    restored = target.restore(result.run_dir, "--with-schema")
    assert restored.code == 0, restored.stderr
    assert _loaded_through_json(restored) == []
    query = "SELECT id, a, b FROM t ORDER BY id"
    assert target.fetch(query) == db.fetch(query)
    assert db.fetch(query)[1][1] == "two\nlines"


def test_unicode_escapes_are_found_wherever_they_are() -> None:
    """unicode_escapes against JSON's own reading of strings side by side (json.dumps writes them):
    COPY's text format reads every escape of JSON but \\uXXXX as JSON does."""

    def escapes(text: bytes) -> set[bytes]:
        found, at = set(), text.find(b"\\")
        while at >= 0:
            found.add(text[at + 1 : at + 2])
            at = text.find(b"\\", at + 2)
        return found

    rng = random.Random(7)
    for _ in range(20000):
        values = ["".join(rng.choice('\\"\n\tabu\u00e9\x01') for _ in range(rng.randint(0, 5))) for _ in range(3)]
        text = b"\x00".join(json.dumps(v, ensure_ascii=rng.random() < 0.5).encode() for v in values)
        assert unicode_escapes(text) == (b"u" in escapes(text)), text


def test_a_json_null_and_sql_null_stay_apart_through_copy(db: Database, target: Database) -> None:
    db.sql(
        "CREATE TABLE j (id int PRIMARY KEY, a json, b jsonb);"
        "INSERT INTO j SELECT g, CASE WHEN g % 3 = 0 THEN 'null'::json WHEN g % 3 = 1 THEN NULL "
        "ELSE '{\"g\": 1}'::json END, "
        "CASE WHEN g % 2 = 0 THEN 'null'::jsonb END FROM generate_series(1, 30000) g"
    )
    result = db.dump("--run-id", "nulls")
    assert result.code == 0, result.stderr
    restored = target.restore(result.run_dir, "--with-schema")
    assert restored.code == 0, restored.stderr
    query = "SELECT id, a::text, a IS NULL, b::text, b IS NULL FROM j ORDER BY id"
    assert target.fetch(query) == db.fetch(query)


def test_copy_text_of_each_shape() -> None:
    manifest = parse(
        json.dumps(
            {
                "manifest_version": 1,
                "tool": {"name": "dumper", "version": "0"},
                "run_id": "r",
                "started_at": "",
                "finished_at": "",
                "database": {"host": "h", "port": 1, "dbname": "d", "user": "u", "server_version": "15"},
                "snapshot_id": "s",
                "format": "jsonl",
                "compression": "none",
                "tables": [
                    {
                        "schema": "public",
                        "table": "t",
                        "path": "public.t.jsonl",
                        "rows": 0,
                        "bytes": 0,
                        "sha256": "",
                        "columns": [
                            {"name": "n", "type": "numeric", "written": "json"},
                            {"name": "s", "type": "text", "written": "json"},
                            {"name": "j", "type": "jsonb", "written": "json"},
                            {"name": "a", "type": "text[]", "written": "json"},
                            {"name": "p", "type": "public.pair", "written": "json"},
                        ],
                    }
                ],
                "types": {
                    "numeric": {"kind": "base", "name": "pg_catalog.numeric"},
                    "text": {"kind": "base", "name": "pg_catalog.text"},
                    "jsonb": {"kind": "base", "name": "pg_catalog.jsonb"},
                    "integer": {"kind": "base", "name": "pg_catalog.int4"},
                    "text[]": {"kind": "array", "name": "pg_catalog._text", "element": "text"},
                    "public.pair": {
                        "kind": "composite",
                        "name": "public.pair",
                        "fields": [{"name": "t", "type": "text"}, {"name": "n", "type": "integer"}],
                    },
                },
            }
        ).encode()
    )
    table = manifest.tables[0]
    columns = copy_columns(manifest, table, ["n", "s", "j", "a", "p"])
    assert not isinstance(columns, str)
    rows = CopyRows(columns)
    batch = [
        b'{"n":1.50,"s":"a\\"b\\\\c\\td","j":{"k":"\\\\","t":"\\t"},"a":["x","y z",null],"p":{"t":"q\\"r","n":null}}',
        b'{"n":"NaN","s":"\\u00e9\\u0001","j":null,"a":"[0:1]={7,8}","p":null}',
        b'{"n":null,"s":null,"j":[1],"a":[["a\\\\"],["b"]],"p":{"t":null,"n":7}}',
        b'{"n":2,"s":"null","j":null,"a":[],"p":{"t":"","n":null}}',
    ]
    # COPY's text format, NULL 'null': a tab between fields; the text null is nul\l.
    want = [
        b'1.50\ta"b\\\\c\\td\t{"k":"\\\\\\\\","t":"\\\\t"}\t{"x","y z",NULL}\t("q\\\\"r",)',
        b"NaN\t\xc3\xa9\\x01\tnul\\l\t[0:1]={7,8}\tnull",
        b'null\tnull\t[1]\t{{"a\\\\\\\\"},{"b"}}\t(,"7")',
        b'2\tnul\\l\tnull\t{}\t("",)',
        b"",
    ]
    block = b"\n".join(batch) + b"\n"
    assert rows.convert(block, {"j": [2]}).split(b"\n") == want
    # A column the target generates is not loaded; any column may be the one.
    for loaded in (["s", "j", "a", "p"], ["n", "j", "a", "p"], ["n", "s", "j", "a"], ["j", "p"], ["a"]):
        part = copy_columns(manifest, table, loaded)
        assert not isinstance(part, str)
        some = CopyRows(part)
        assert some.loaded == loaded
        index = [c.name for c in table.columns]
        assert some.convert(block, {"j": [2]}).split(b"\n")[:-1] == [
            b"\t".join(f for f, name in zip(line.split(b"\t"), index, strict=True) if name in loaded)
            for line in want[:-1]
        ]


def _children(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            if int(fields["PPid"]) == pid:
                found.append(int(status.parent.name))
    return found


def _converters(pid: int) -> list[int]:
    """The restore's converter processes."""
    return [child for child in _children(pid) if b"dumper.restore.converting" in _cmdline(child)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _mask(pid: int, field: str) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1], 16)


def test_converter_processes_load_the_same_rows(db: Database, target: Database) -> None:
    create_every_type(db)
    db.sql(OUTSIDE_SQL)
    result = db.dump("--run-id", "conv")
    assert result.code == 0, result.stderr
    restored = target.restore(result.run_dir, "--with-schema", "--processes", "2")
    assert restored.code == 0, restored.stderr
    assert _rows(target, "outside") == _rows(db, "outside")
    kept = [c for c in COLUMNS if c not in ("json", "json_arr", "jsonb_arr", "composite_json")]
    query = f"SELECT {', '.join(f'{c!r}::text' for c in ['id', *kept])} FROM every_type ORDER BY 1".replace("'", '"')
    assert target.fetch(query) == db.fetch(query)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_to_the_whole_group_leaves_no_converter_behind(
    db: Database, target: Database, sig: signal.Signals, code: int
) -> None:
    db.sql("CREATE TABLE t (id int, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g")
    result = db.dump("--run-id", "sig")
    assert result.code == 0, result.stderr
    target.sql("CREATE TABLE t (id int, v text)")
    with target.locked("t", "SHARE"):  # the COPY waits for its lock: the converters are up by then
        proc = target.spawn("restore", str(result.run_dir), "--processes", "2", "--lock-timeout", "0")
        wait_until(lambda: target.waiting_for_lock("t") > 0, 120)
        converters = _converters(proc.pid)
        assert len(converters) == 2, "the converters are the restore's children"
        for pid in converters:  # ignored from their first instruction: a terminal's Ctrl-C is the restore's
            assert _mask(pid, "SigIgn") & (1 << (sig - 1)), f"converter {pid} would die of {sig.name}"
            os.kill(pid, sig)  # as a terminal's Ctrl-C reaches the whole process group
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert f"stopped by {sig.name}" in stderr
    wait_until(lambda: not [pid for pid in converters if Path(f"/proc/{pid}").exists()], 30)
    assert target.fetch("SELECT count(*) FROM t")[0][0] == 0


def test_a_converter_killed_fails_the_table_and_names_it(db: Database, target: Database) -> None:
    db.sql("CREATE TABLE t (id int, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g")
    result = db.dump("--run-id", "oom")
    assert result.code == 0, result.stderr
    target.sql("CREATE TABLE t (id int, v text)")
    # The restore waits in its TRUNCATE: the converters are up and nothing was handed to them yet
    # (a COPY waiting for its lock would not hold them: asyncpg sends the rows while it waits).
    with target.locked("t", "SHARE"):
        proc = target.spawn("restore", str(result.run_dir), "--processes", "2", "--truncate", "--lock-timeout", "0")
        wait_until(lambda: target.waiting_for_lock("t") > 0, 120)
        converters = _converters(proc.pid)
        assert len(converters) == 2, "the converters are the restore's children"
        for pid in converters:  # as the out-of-memory killer would
            os.kill(pid, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 5, stderr
    assert "was killed by signal SIGKILL while turning rows into COPY data" in stderr
    assert target.fetch("SELECT count(*) FROM t")[0][0] == 0
