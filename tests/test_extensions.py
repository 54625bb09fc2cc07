"""Real databases come back exactly: extensions as pg_dump treats them (created by
the schema files, their own tables left to CREATE EXTENSION, the user's rows of
their configuration tables dumped), extension types written as their text
output (exact), every row equal (row::text) after restore --with-schema, and
a drill that passes. PostgreSQL 15 with Debian's PostGIS and contrib; 18 with
the contrib extensions of its wheel (built without PostGIS, pgcrypto and
uuid-ossp: those are left out there, saying so)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import Database, Result

POSTGIS = Path("/usr/share/postgresql/15/extension/postgis.control")

# Every contrib extension in both majors' builds here.
CONTRIB_SQL = """
CREATE EXTENSION hstore; CREATE EXTENSION citext; CREATE EXTENSION pg_trgm; CREATE EXTENSION ltree;
CREATE EXTENSION earthdistance CASCADE;  -- requires cube: created first
CREATE TABLE things (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name citext NOT NULL, tags hstore,
                     path ltree, box cube, tag_list hstore[]);
CREATE INDEX things_name_trgm ON things USING gin (name gin_trgm_ops);
CREATE INDEX things_path ON things USING gist (path);
INSERT INTO things (name, tags, path, box, tag_list) VALUES
    ('Ünïcode', 'a=>1, "b c"=>NULL, "q\\"uote"=>"x,y"', 'top.middle.leaf', '(1,2),(3,4)',
     ARRAY['k=>v'::hstore, 'e=>NULL']),
    ('empty', '', '', '(0)', '{}'),
    ('nulls', NULL, NULL, NULL, NULL);
"""

POSTGIS_SQL = """
CREATE EXTENSION postgis; CREATE EXTENSION pgcrypto; CREATE EXTENSION "uuid-ossp";
CREATE TABLE places (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text,
                     geom geometry, geog geography, uid uuid NOT NULL DEFAULT uuid_generate_v4(),
                     salt bytea DEFAULT gen_random_bytes(8), polys geometry(Polygon, 3857)[]);
CREATE INDEX places_geom ON places USING gist (geom);
INSERT INTO places (name, geom, geog, polys) VALUES
    ('point', 'SRID=4326;POINT(13.4 52.5)', 'SRID=4326;POINT(13.4 52.5)', NULL),
    ('polygon', 'SRID=3857;POLYGON((0 0, 4 0, 4 4, 0 4, 0 0))', NULL,
     ARRAY['SRID=3857;POLYGON((0 0, 1 0, 1 1, 0 0))'::geometry(Polygon, 3857)]),
    ('M', 'POINT M (1 2 3)', NULL, NULL),
    ('ZM', 'SRID=2056;POINT ZM (2600000 1200000 500 7)', NULL, NULL),
    ('curve', 'CIRCULARSTRING(0 0, 1 1, 2 0)', NULL, NULL),
    ('empty', 'GEOMETRYCOLLECTION EMPTY', 'SRID=4326;POINT EMPTY', NULL),
    ('custom srid', 'SRID=990001;POINT(1 1)', NULL, NULL);
INSERT INTO spatial_ref_sys (srid, auth_name, auth_srid, srtext, proj4text)
    VALUES (990001, 'dumper-test', 990001, '', '+proj=longlat +datum=WGS84 +no_defs');
"""


def with_postgis(db: Database) -> bool:
    """PostgreSQL 15: Debian's PostGIS (make test installs it); 18's wheel has none."""
    if db.cluster.major != 15:
        return False
    assert POSTGIS.exists(), "PostGIS for PostgreSQL 15 is installed by make test (postgresql-15-postgis-3)"
    return True


def rich(db: Database) -> list[str]:
    """The extensions' database; the tables whose rows are compared."""
    db.sql(CONTRIB_SQL)
    if not with_postgis(db):
        return ["things"]
    db.sql(POSTGIS_SQL)
    return ["things", "places"]


def rows_as_text(db: Database, table: str) -> list[str]:
    return [r[0] for r in db.fetch(f"SELECT t::text FROM {table} t ORDER BY id")]


def dumped(db: Database, *args: str) -> Result:
    result = db.dump("--run-id", f"ext_{db.name}", *args)
    assert result.code == 0, result.stderr
    return result


def test_the_dump_carries_the_extensions_and_only_the_users_rows_of_their_tables(db: Database) -> None:
    rich(db)
    result = dumped(db)
    manifest = result.manifest()
    names = [e["name"] for e in manifest["extensions"]]
    assert names.index("cube") < names.index("earthdistance"), "required ones first"
    assert {"hstore", "citext", "pg_trgm", "ltree", "cube", "earthdistance"} <= set(names)
    pre = (result.run_dir / "schema.pre-data.sql").read_text()
    for name in names:
        assert (
            f"CREATE EXTENSION IF NOT EXISTS {name if name.isidentifier() else json.dumps(name)} WITH SCHEMA "
            "public;" in pre
        ), name
    tables = {(t["schema"], t["table"]): t for t in manifest["tables"]}
    if with_postgis(db):
        assert {"postgis", "pgcrypto", "uuid-ossp"} <= set(names)
        srs = tables[("public", "spatial_ref_sys")]
        assert srs["extension"] == "postgis"
        assert [r["srid"] for r in result.rows("public", "spatial_ref_sys")] == [990001], "the custom row only"
        (places,) = [t for t in manifest["tables"] if t["table"] == "places"]
        written = {c["name"]: c["written"] for c in places["columns"]}
        assert written["geom"] == written["polys"] == "text" and written["geog"] == "json"  # geography: no cast
    assert all(t.get("extension") is None for k, t in tables.items() if k != ("public", "spatial_ref_sys"))
    written = {c["name"]: c["written"] for c in tables[("public", "things")]["columns"]}
    assert written == {"id": "json", "name": "json", "tags": "text", "path": "json", "box": "json", "tag_list": "text"}
    first = result.rows("public", "things")[0]
    assert first["tags"] == '"a"=>"1", "b c"=>NULL, "q\\"uote"=>"x,y"', "hstore's own text, not an object"
    assert first["tag_list"] == ['"k"=>"v"', '"e"=>NULL']


def test_restore_with_schema_into_an_empty_database_gives_every_row_back(db: Database, target: Database) -> None:
    compared = rich(db)
    result = dumped(db)
    restored = target.restore(result.run_dir, "--with-schema")
    assert restored.code == 0, restored.stderr
    for table in compared:
        assert rows_as_text(target, table) == rows_as_text(db, table), table
    indexes = "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
    assert target.fetch(indexes) == db.fetch(indexes)
    extensions = "SELECT extname FROM pg_extension ORDER BY 1"
    assert target.fetch(extensions) == db.fetch(extensions)
    # Sequence positions: the next row gets the next id, in both.
    for table in compared:
        new = "INSERT INTO {t} (name) VALUES ('next') RETURNING id"
        assert target.fetch(new.format(t=table)) == db.fetch(new.format(t=table)), table
    if with_postgis(db):
        srids = "SELECT count(*), count(*) FILTER (WHERE srid = 990001) FROM spatial_ref_sys"
        assert target.fetch(srids) == db.fetch(srids), "the shipped rows from CREATE EXTENSION, the custom one loaded"


def test_a_drill_of_the_extensions_database_passes_and_leaves_nothing(db: Database) -> None:
    rich(db)
    result = dumped(db)
    drilled = db.drill(result.run_dir)
    assert drilled.code == 0, drilled.stderr
    left = db.fetch("SELECT datname FROM pg_database WHERE strpos(datname, $1) > 0", db.name)
    assert left == [(db.name,)], "no scratch database left"


def test_a_role_that_cannot_create_the_extension_is_refused_before_anything_changes(
    db: Database, target: Database
) -> None:
    rich(db)
    result = dumped(db)
    role = f"r_{db.name}"
    target.cluster.psql(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
    target.cluster.psql(f"GRANT CREATE ON DATABASE {target.name} TO {role}")
    target.sql(f"GRANT CREATE ON SCHEMA public TO {role}")
    try:
        refused = target.restore(result.run_dir, "--with-schema", user=role, password="pw")
    finally:
        target.sql(f"DROP OWNED BY {role}")
        target.cluster.psql(f"DROP OWNED BY {role}; DROP ROLE {role}")
    assert refused.code == 4, refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    # hstore, citext, pg_trgm, ltree and cube are trusted (CREATE on the database is enough); earthdistance and
    # PostGIS are not.
    assert f"{role} may not create the extension(s) " in line and "earthdistance" in line and "hstore" not in line
    assert "postgis" in line or not with_postgis(db)
    assert "rds_superuser" in line and "nothing was changed" in line
    assert target.fetch("SELECT count(*) FROM pg_extension WHERE extname <> 'plpgsql'")[0][0] == 0
    assert target.fetch("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace")[0][0] == 0


def test_extension_types_cast_writes_the_casts_form_which_restore_and_drill_refuse(
    db: Database, target: Database
) -> None:
    db.sql("CREATE EXTENSION hstore; CREATE TABLE kv (id int, tags hstore); INSERT INTO kv VALUES (1, 'a=>1');")
    result = dumped(db, "--extension-types", "cast")
    (entry,) = result.manifest()["tables"]
    assert [c["written"] for c in entry["columns"]] == ["json", "cast"]
    assert result.rows("public", "kv") == [{"id": 1, "tags": {"a": "1"}}], "the cast's object"
    refused = target.restore(result.run_dir, "--with-schema")
    assert refused.code == 2, refused.stderr
    assert "public.kv.tags (public.hstore)" in refused.stderr and "--extension-types cast" in refused.stderr
    assert target.fetch("SELECT count(*) FROM pg_extension WHERE extname = 'hstore'")[0][0] == 0
    drilled = db.drill(result.run_dir)
    assert drilled.code == 7, drilled.stderr
    assert "public.kv.tags (public.hstore)" in drilled.stderr


def test_a_curve_dumps_with_text_and_fails_only_through_the_cast(db: Database) -> None:
    if not with_postgis(db):
        pytest.skip("PostGIS is Debian's, for PostgreSQL 15 (the 18 wheel has none)")
    db.sql(
        "CREATE EXTENSION postgis; CREATE TABLE c (g geometry); "
        "INSERT INTO c VALUES ('CIRCULARSTRING(0 0, 1 1, 2 0)'), ('POINT M (1 2 3)');"
    )
    result = dumped(db)
    assert [r["g"] for r in result.rows("public", "c")] == [r[0] for r in db.fetch("SELECT g::text FROM c")]
    cast = db.dump("--run-id", "cast", "--extension-types", "cast")
    assert cast.code == 5 and "CircularString" in cast.stderr, "GeoJSON has no curves: the user asked for it"


def test_objects_outside_the_dumped_schemas_are_named_before_anything_changes(db: Database, target: Database) -> None:
    """A table access method (database-wide), a type of a schema that is not dumped, a role a
    policy is for: the schema files name them, a dump of schemas cannot carry them."""
    role = f"reader_{db.name}"
    db.sql(
        f"CREATE ACCESS METHOD heap2 TYPE TABLE HANDLER heap_tableam_handler; CREATE SCHEMA other;"
        f"CREATE TYPE other.mood AS ENUM ('ok'); CREATE ROLE {role};"
        f"CREATE TABLE t (id int, m other.mood) USING heap2; INSERT INTO t VALUES (1, 'ok');"
        f"ALTER TABLE t ENABLE ROW LEVEL SECURITY; CREATE POLICY p ON t TO {role} USING (true);"
    )
    try:
        result = dumped(db)
    finally:
        db.sql(f"DROP POLICY p ON t; DROP ROLE {role}")  # gone from the cluster before the restore
    required = {r["description"] for r in result.manifest()["requires"]}
    assert required == {"access method heap2", "type other.mood", f"role {role}"}
    (warning,) = [line for line in result.stdout.splitlines() if "outside the dumped schemas" in line]
    assert "access method heap2" in warning
    refused = target.restore(result.run_dir, "--with-schema")
    assert refused.code == 2, refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert "the schema files name 3 object(s) outside the dumped schemas that the target lacks" in line
    assert "access method heap2 (CREATE ACCESS METHOD" in line and f"role {role} (CREATE ROLE" in line
    assert "type other.mood (create it in the target first, or dump schema other too" in line
    assert target.fetch("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace")[0][0] == 0
    drilled = db.drill(result.run_dir)
    assert drilled.code == 7, drilled.stderr
    assert "did not come back" in drilled.stderr and "access method heap2" in drilled.stderr
    # With the other schema dumped too, only the database-wide and cluster-wide objects are missing.
    both = db.dump("--run-id", "both", "--schema", "public", "--schema", "other")
    assert {r["description"] for r in both.manifest()["requires"]} == {"access method heap2"}


def test_an_extension_in_a_schema_that_is_not_dumped_is_created_there(db: Database, target: Database) -> None:
    db.sql(
        'CREATE SCHEMA "Ext ""Schema"""; CREATE EXTENSION hstore SCHEMA "Ext ""Schema""";'
        'CREATE TABLE t (id int, h "Ext ""Schema""".hstore); INSERT INTO t VALUES (1, \'k=>v\');'
    )
    result = dumped(db)  # --schema public only
    assert result.manifest()["extensions"] == [
        {"name": "hstore", "schema": 'Ext "Schema"', "version": "1.8", "requires": []}
    ]
    assert result.manifest()["requires"] == [], "the type is the extension's: CREATE EXTENSION makes it"
    restored = target.restore(result.run_dir, "--with-schema")
    assert restored.code == 0, restored.stderr
    assert target.fetch("SELECT h::text FROM t") == [('"k"=>"v"',)]
    assert target.fetch("SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'hstore'") == [
        ('"Ext ""Schema"""',)
    ]
