"""Schema files and sequence positions: pg_dump's pre-data and post-data
sections from the run's own snapshot, listed and checked like table files;
`restore --with-schema` builds an empty database from the dump alone."""

from __future__ import annotations

import hashlib
import io
import json
import re
import stat
import subprocess
from pathlib import Path

from dumper import cli
from dumper.postgres import schemasql

from .conftest import Database, Result, fake_pg_dump
from .holds import seconds_between, within

RICH_SQL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN email AS text CHECK (VALUE LIKE '%@%');
CREATE TYPE point3 AS (x float8, y float8, z float8);
CREATE TABLE people (id serial PRIMARY KEY, mail email UNIQUE, mood mood, pos point3, best_pet bigint);
CREATE TABLE pets (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, owner_id int NOT NULL REFERENCES people,
                   name text);
ALTER TABLE people ADD CONSTRAINT people_best_pet FOREIGN KEY (best_pet) REFERENCES pets;  -- a cycle
CREATE TABLE events (id bigserial, at date NOT NULL, what text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_rest PARTITION OF events DEFAULT;
CREATE INDEX events_what ON events (what);
CREATE FUNCTION shout() RETURNS trigger LANGUAGE plpgsql AS
    $$BEGIN NEW.what := upper(NEW.what); RETURN NEW; END$$;
CREATE TRIGGER shouted BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION shout();
CREATE TABLE skipped (x int);
"""

RICH_DATA = """
INSERT INTO people (mail, mood, pos)
    SELECT 'p' || g || '@x.io', 'ok', ROW(g::float8, g::float8, g::float8)::point3 FROM generate_series(1, 5) g;
INSERT INTO pets (owner_id, name) SELECT g, 'pet ' || g FROM generate_series(1, 5) g;
UPDATE people SET best_pet = id;
INSERT INTO events (at, what) SELECT DATE '2025-12-25' + g, 'e' || g FROM generate_series(1, 20) g;
INSERT INTO skipped VALUES (1);
SELECT nextval('people_id_seq') FROM generate_series(1, 3);  -- taken, never used: the position is ahead
"""


def schema_text(result: Result, section: str) -> str:
    return (result.run_dir / f"schema.{section}.sql").read_text()


def comparable(text: str) -> str:
    """A schema file without what differs between two pg_dump runs of the same schema."""
    return re.sub(r"^(\\(un)?restrict .*|-- Dumped from .*)$", "", text, flags=re.MULTILINE)


def verify(path: Path) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(["verify", str(path)], {}, stdout=out)
    return code, out.getvalue()


def test_schema_files_come_from_the_snapshot_and_are_verified(db: Database) -> None:
    db.sql(RICH_SQL + RICH_DATA)
    result = db.dump("--exclude", "public.skipped")
    assert result.code == 0, result.stderr
    manifest = result.manifest()
    files = manifest["schema_files"]
    assert files["status"] == "written"
    assert [f["section"] for f in files["files"]] == ["pre-data", "post-data"]
    for listed in files["files"]:
        path = result.run_dir / listed["path"]
        data = path.read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (listed["bytes"], listed["sha256"])
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pre, post = schema_text(result, "pre-data"), schema_text(result, "post-data")
    for expected in (
        "CREATE TYPE public.mood AS ENUM",
        "CREATE DOMAIN public.email",
        "CREATE TYPE public.point3 AS",
        "PARTITION BY RANGE (at)",
        "ATTACH PARTITION public.events_2025",
        "GENERATED ALWAYS AS IDENTITY",
        "CREATE SEQUENCE public.people_id_seq",
        "CREATE FUNCTION public.shout()",
    ):
        assert expected in pre, expected
    for expected in (
        "CREATE TRIGGER shouted",
        "FOREIGN KEY (best_pet) REFERENCES public.pets(id)",
        "CREATE INDEX events_what",
        "ADD CONSTRAINT people_pkey PRIMARY KEY (id)",
    ):
        assert expected in post, expected
    assert "skipped" not in pre + post  # --exclude applies to the schema too
    assert "OWNER TO" not in pre and "GRANT" not in pre
    by_name = {s["name"]: s for s in manifest["sequences"]}
    assert by_name["people_id_seq"] == {
        "schema": "public",
        "name": "people_id_seq",
        "last_value": 8,
        "is_called": True,
        "owned_by": {"schema": "public", "table": "people", "column": "id"},
    }
    assert by_name["pets_id_seq"]["owned_by"] == {"schema": "public", "table": "pets", "column": "id"}
    assert by_name["events_id_seq"]["last_value"] == 20
    assert verify(result.run_dir)[0] == 0

    path = result.run_dir / "schema.post-data.sql"
    path.write_text(post.replace("CREATE INDEX events_what", "CREATE INDEX events_whom"))
    code, out = verify(result.run_dir)
    assert code == 7
    assert "MISMATCH schema file post-data (schema.post-data.sql): sha256" in out


def test_restore_with_schema_builds_the_same_database(db: Database, target: Database) -> None:
    db.sql(RICH_SQL + RICH_DATA)
    first = db.dump("--run-id", "src")
    assert first.code == 0, first.stderr
    restored = target.restore(first.run_dir, "--with-schema", "--log-format", "text")
    assert restored.code == 0, restored.stderr
    assert "sequences set: 3" in restored.stdout  # people, pets, events
    again = target.dump("--run-id", "again")
    assert again.code == 0, again.stderr
    for entry in first.manifest()["tables"]:  # the same rows, byte for byte (the trigger did not fire again)
        assert (again.run_dir / entry["path"]).read_bytes() == (first.run_dir / entry["path"]).read_bytes()
    for section in ("pre-data", "post-data"):  # the same types, tables, keys, indexes and triggers
        assert comparable(schema_text(again, section)) == comparable(schema_text(first, section))
    assert again.manifest()["sequences"] == first.manifest()["sequences"]
    # The application's next INSERT without an id takes the next value: no collision with a restored row.
    rows = target.fetch("INSERT INTO people (mail) VALUES ('new@x.io') RETURNING id")
    assert rows[0][0] == 9
    target.sql(
        "INSERT INTO pets (owner_id, name) VALUES (1, 'new'); "
        "INSERT INTO events (at, what) VALUES ('2026-03-01', 'new');"
    )
    assert target.fetch("SELECT what FROM events WHERE at = '2026-03-01'")[0][0] == "NEW"  # the trigger is back


def test_with_schema_refuses_a_target_that_is_not_empty(db: Database, target: Database) -> None:
    db.sql(RICH_SQL + RICH_DATA)
    first = db.dump()
    target.sql("CREATE TABLE leftover (x int); CREATE TYPE mood AS ENUM ('x');")
    refused = target.restore(first.run_dir, "--with-schema")
    assert refused.code == 2
    assert "the target is not empty, it holds public.leftover (relation), public.mood (type)" in refused.stderr
    assert "nothing was changed" in refused.stderr
    assert target.fetch("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace")[0][0] == 1


def test_without_with_schema_the_loaded_tables_sequences_are_set(db: Database, target: Database) -> None:
    db.sql(RICH_SQL + RICH_DATA)
    first = db.dump()
    target.sql(RICH_SQL)
    assert target.restore(first.run_dir, "--include", "public.people", "--include", "public.pets").code == 0
    assert target.fetch("SELECT last_value, is_called FROM people_id_seq")[0] == (8, True)
    assert target.fetch("SELECT last_value, is_called FROM events_id_seq")[0] == (1, False)  # not loaded: as it was
    target.sql("INSERT INTO pets (owner_id, name) VALUES (1, 'next')")


def test_no_sequences_leaves_them_where_they_were(db: Database, target: Database) -> None:
    db.sql(RICH_SQL + RICH_DATA)
    first = db.dump()
    target.sql(RICH_SQL)
    assert target.restore(first.run_dir, "--no-sequences").code == 0
    assert target.fetch("SELECT last_value, is_called FROM people_id_seq")[0] == (1, False)


def test_a_dump_without_schema_files_cannot_rebuild(db: Database, target: Database) -> None:
    db.sql(RICH_SQL + RICH_DATA)
    first = db.dump("--schema-files", "off")
    assert first.code == 0
    assert first.manifest()["schema_files"] == {"status": "absent", "reason": "--schema-files off"}
    assert not list(first.run_dir.glob("schema.*"))
    refused = target.restore(first.run_dir, "--with-schema")
    assert refused.code == 2
    assert "this dump has no schema files (--schema-files off)" in refused.stderr


def pg_dump_claiming(tmp: Path, version: str, real: Path) -> Path:
    """A pg_dump that says it is `version` (`--version`) and is the real one otherwise: a pg_dump
    older than the server, where none is installed (PostgreSQL 15 has no older one here)."""
    return fake_pg_dump(
        tmp / f"pg_dump-{version}",
        f'if [ "$1" = --version ]; then echo "pg_dump (PostgreSQL) {version}"; exit 0; fi\nexec {real} "$@"\n',
        real.parent,
    )


def older_pg_dump(db: Database, tmp: Path) -> tuple[Path, str]:
    """PostgreSQL 15's real pg_dump against the 18 server; against 15, one that says it is 14."""
    if db.cluster.major > 15:
        return Path("/usr/lib/postgresql/15/bin/pg_dump"), "15."
    return pg_dump_claiming(tmp, "14.13", db.cluster.bin / "pg_dump"), "14.13"


def test_an_older_pg_dump_is_named_and_the_rows_still_dumped(db: Database, tmp_path: Path) -> None:
    db.sql(RICH_SQL + RICH_DATA)
    path, version = older_pg_dump(db, tmp_path)
    old = {"DUMPER_PG_DUMP": str(path)}
    result = db.dump(env=old)
    assert result.code == 0, result.stderr
    warnings = [line for line in result.stdout.splitlines() if "no schema files in this run" in line]
    assert len(warnings) == 1
    assert f"pg_dump {version}" in warnings[0]
    assert f"older than the server (PostgreSQL {db.cluster.major}." in warnings[0]
    absent = result.manifest()["schema_files"]
    assert absent["status"] == "absent" and "no pg_dump at least the server's major" in absent["reason"]
    assert not list(result.run_dir.glob("schema.*"))
    assert result.entry("public", "people")["rows"] == 5

    required = db.dump("--schema-files", "require", "--run-id", "required", env=old)
    assert required.code == 2
    assert f"--schema-files require: pg_dump {version}" in required.stderr
    assert not (required.output / "required").exists()  # nothing was read or written


def test_the_newest_pg_dump_on_path_or_installed_is_found(db: Database, tmp_path: Path) -> None:
    """Without --pg-dump: the newest of PATH's and /usr/lib/postgresql/*/bin's (a real process,
    whose PATH is its own)."""
    db.sql(RICH_SQL + RICH_DATA)
    newer = pg_dump_claiming(tmp_path, "99.1", db.cluster.bin / "pg_dump")

    def manifest_of(run_id: str, path: str) -> tuple[dict[str, object], str]:
        proc = db.spawn("run", "--run-id", run_id, env={"DUMPER_PG_DUMP": "", "PATH": path})
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        return json.loads((db.tmp / "out" / run_id / "manifest.json").read_text())["schema_files"], stdout

    on_path, _ = manifest_of("on-path", f"{newer.parent}:/usr/bin:/bin")
    assert on_path["pg_dump"] == "99.1"
    installed, log = manifest_of("installed", "/nowhere")
    if db.cluster.major <= 15:  # Debian's /usr/lib/postgresql/15/bin/pg_dump
        assert installed["status"] == "written" and str(installed["pg_dump"]).startswith("15.")
    else:
        assert installed["status"] == "absent" and "older than the server" in log


def test_a_pg_dump_that_does_not_run_is_a_configuration_error(db: Database, tmp_path: Path) -> None:
    result = db.dump("--pg-dump", str(tmp_path / "nowhere" / "pg_dump"), "--run-id", "r")
    assert result.code == 2
    assert "--pg-dump:" in result.stderr and "is not a pg_dump that runs" in result.stderr


def test_a_pg_dump_without_its_pg_restore_is_a_configuration_error(db: Database, tmp_path: Path) -> None:
    """The schema files are pg_dump's archive turned into SQL by the same installation's pg_restore."""
    (tmp_path / "alone").mkdir()
    (tmp_path / "alone" / "pg_dump").symlink_to(db.cluster.bin / "pg_dump")
    result = db.dump("--pg-dump", str(tmp_path / "alone" / "pg_dump"), "--run-id", "r")
    assert result.code == 2, result.stderr
    assert "has no pg_restore beside it" in result.stderr
    assert not (result.output / "r").exists()


def test_hostile_names_in_the_schema_files(db: Database, target: Database) -> None:
    schema = 'we"ird sch.ema'
    db.sql(
        'CREATE SCHEMA "we""ird sch.ema"; '
        'CREATE TABLE "we""ird sch.ema"."Tab.le *?x" (id serial PRIMARY KEY, "Col ""a""" text); '
        'CREATE TABLE "we""ird sch.ema"."ex.cl*uded" (x int); '
        'CREATE TABLE "we""ird sch.ema"."ex.clXuded" (x int); '
        'INSERT INTO "we""ird sch.ema"."Tab.le *?x" ("Col ""a""") VALUES (\'one\'), (\'two\');'
    )
    first = db.dump("--schema", schema, "--exclude", f"{schema}.ex.cl[*]uded")
    assert first.code == 0, first.stderr
    pre = schema_text(first, "pre-data")
    assert '"ex.clXuded"' in pre and '"ex.cl*uded"' not in pre  # excluded by its exact name, not as a pattern
    restored = target.restore(first.run_dir, "--with-schema")
    assert restored.code == 0, restored.stderr
    rows = target.fetch('INSERT INTO "we""ird sch.ema"."Tab.le *?x" ("Col ""a""") VALUES (\'three\') RETURNING id')
    assert rows[0][0] == 3


def test_an_existing_schema_is_kept_and_the_restrict_lines_removed() -> None:
    script = (
        "\\restrict abc123\n\nSET x = 1;\n\n"
        "--\n-- Name: public; Type: SCHEMA; Schema: -; Owner: -\n--\n\nCREATE SCHEMA public;\n\n\n"
        "--\n-- Name: SCHEMA public; Type: COMMENT; Schema: -; Owner: -\n--\n\n"
        "COMMENT ON SCHEMA public IS 'standard public schema';\n\n\n"
        '--\n-- Name: Odd; Type: SCHEMA; Schema: -; Owner: -\n--\n\nCREATE SCHEMA "Odd";\n\n\n'
        "--\n-- Name: t; Type: TABLE; Schema: public; Owner: -\n--\n\nCREATE TABLE public.t (x int);\n\n"
        "\\unrestrict abc123\n\n"
    )
    out = schemasql.runnable(script, ["public"])
    assert "restrict" not in out
    assert "CREATE SCHEMA public;" not in out and "COMMENT ON SCHEMA public" not in out
    assert 'CREATE SCHEMA "Odd";' in out and "CREATE TABLE public.t (x int);" in out and "SET x = 1;" in out
    assert 'CREATE SCHEMA "Odd";' not in schemasql.runnable(script, ["Odd"])


def test_a_pg_dump_that_never_finishes_ends_the_run_and_is_killed(db: Database, tmp_path: Path) -> None:
    """pg_dump must finish within --stall-timeout plus --lock-timeout; here it is
    held on purpose, as by a server that answers nothing."""
    db.sql("CREATE TABLE t (x int); INSERT INTO t VALUES (1);")
    wrapper = fake_pg_dump(  # a pg_dump whose server answers nothing
        tmp_path / "held",
        f'if [ "$1" = --version ]; then exec {db.cluster.bin / "pg_dump"} "$@"; fi\nexec sleep 3599.25\n',
        db.cluster.bin,
    )
    result = db.dump("--pg-dump", str(wrapper), "--stall-timeout", "2", "--lock-timeout", "1", "--run-id", "r")
    assert result.code == 5, result.stderr
    assert "the schema files: pg_dump did not finish within 3 s (--stall-timeout" in result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    taken, failed = (next(e for e in events if e["event"] == name) for name in ("snapshot taken", "run failed"))
    within(seconds_between(taken, failed), 3, 2 * 3, "pg_dump")
    assert not (result.output / "r").exists(), "a failed run leaves no folder"
    left = subprocess.run(["pgrep", "-f", "sleep 3599.25"], capture_output=True, text=True, check=False)
    assert left.stdout == "", "the held pg_dump was killed"


def test_a_manifest_from_before_schema_files_reads_as_absent(db: Database, target: Database) -> None:
    """Manifests written before `schemas`, `schema_files` and `sequences` existed lack them:
    every reader takes that as "absent", and says so."""
    db.sql(RICH_SQL + RICH_DATA)
    first = db.dump("--run-id", "old", "--schema-files", "off")
    assert first.code == 0, first.stderr
    manifest_path = first.run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for key in ("schemas", "schema_files", "sequences"):
        del manifest[key]
    manifest_path.write_text(json.dumps(manifest))
    assert verify(first.run_dir)[0] == 0
    refused = target.restore(first.run_dir, "--with-schema")
    assert refused.code == 2
    assert "this dump has no schema files (the dump was taken before schema files existed)" in refused.stderr
    drilled = db.drill(first.run_dir)
    assert drilled.code == 7
    assert "this dump has no schema files (the dump was taken before schema files existed)" in drilled.stderr
    target.sql(RICH_SQL)
    loaded = target.restore(first.run_dir)  # into tables made another way: rows, no sequences to set
    assert loaded.code == 0, loaded.stderr
    assert target.fetch("SELECT count(*) FROM pets")[0][0] == 5
    assert target.fetch("SELECT last_value, is_called FROM people_id_seq")[0] == (1, False)
