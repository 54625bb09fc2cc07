"""A dump is the whole database, guarded like pg_dump guards it: no planted code
runs in our sessions, local output is private from the first byte and never
follows a symlink, IAM tokens go only to verified servers, secrets in URLs
never reach a log, and `verify` reads nothing outside the run folder."""

from __future__ import annotations

import contextlib
import gzip
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from devtools.pgcluster import ROOT_DIR
from dumper import cli
from dumper.core.settings import resolve

from .conftest import Database, wait_until
from .holds import replies_held
from .http_capture import capture
from .test_resilience import finish, wait_for_line

# Look-alikes in public for every function and operator our SQL calls, each an
# exact type match, as any role with CREATE on public could plant them (the
# default before PostgreSQL 15). With the default search_path they would run as
# the dump role; each raises, so a run that calls one fails.
PLANT_SQL = """
CREATE FUNCTION public.planted(what text) RETURNS void LANGUAGE plpgsql
    AS $$ BEGIN RAISE EXCEPTION 'PLANTED % ran as %', what, current_user; END $$;
CREATE FUNCTION public.unnest(oid[]) RETURNS SETOF oid LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.planted('unnest'); END $$;
CREATE FUNCTION public.format_type(oid, integer) RETURNS text LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.planted('format_type'); RETURN ''; END $$;
CREATE FUNCTION public.to_json(interval) RETURNS json LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.planted('to_json'); RETURN NULL; END $$;
CREATE FUNCTION public.current_setting(text) RETURNS text LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.planted('current_setting'); RETURN ''; END $$;
CREATE FUNCTION public.pg_relation_size(oid) RETURNS bigint LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.planted('pg_relation_size'); RETURN 0; END $$;
CREATE FUNCTION public.pg_table_size(oid) RETURNS bigint LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.planted('pg_table_size'); RETURN 0; END $$;
CREATE FUNCTION public.quote_ident(name) RETURNS text LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.planted('quote_ident'); RETURN ''; END $$;
CREATE FUNCTION public.pg_export_snapshot() RETURNS text LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.planted('pg_export_snapshot'); RETURN ''; END $$;
CREATE FUNCTION public.has_table_privilege(oid, text) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.planted('has_table_privilege'); RETURN true; END $$;
CREATE FUNCTION public.pg_has_role(oid, text) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.planted('pg_has_role'); RETURN true; END $$;
CREATE FUNCTION public.pg_backend_pid() RETURNS integer LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.planted('pg_backend_pid'); RETURN 0; END $$;
CREATE FUNCTION public.name_eq_text(name, text) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.planted('= (name, text)'); RETURN true; END $$;
CREATE OPERATOR public.= (LEFTARG = name, RIGHTARG = text, FUNCTION = public.name_eq_text);
CREATE FUNCTION public.oid_eq(oid, oid) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM public.planted('= (oid, oid)'); RETURN true; END $$;
CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = public.oid_eq);
"""


def planted(db: Database) -> None:
    db.sql(
        "CREATE TABLE t (id int, took interval, note text);"
        "INSERT INTO t VALUES (1, '1 day', 'a'), (2, NULL, NULL);" + PLANT_SQL
    )
    # The plant is live: a session with the default search_path runs it.
    with pytest.raises(RuntimeError, match="PLANTED unnest ran as postgres"):
        db.sql("SELECT unnest('{1}'::oid[])")


def test_planted_functions_never_run_in_a_dump(db: Database) -> None:
    planted(db)
    result = db.dump("--jobs", "2")
    assert result.code == 0, result.stderr
    assert "PLANTED" not in result.stdout + result.stderr
    assert result.rows("public", "t") == [
        {"id": 1, "took": "1 day", "note": "a"},
        {"id": 2, "took": None, "note": None},
    ]


def test_planted_functions_never_run_in_check(db: Database) -> None:
    planted(db)
    out, err = _cli(db, "check")
    assert "ok: a run would start" in out, err
    assert "PLANTED" not in out + err


def _cli(db: Database, *argv: str, env: dict[str, str] | None = None) -> tuple[str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "dumper", *argv],
        cwd=db.tmp,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT_DIR), **db.base_env(), **(env or {})},
        timeout=120,
        check=False,
    )
    return proc.stdout, proc.stderr + f"\nexit {proc.returncode}"


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_local_output_is_private_whatever_the_umask(db: Database) -> None:
    db.sql("CREATE TABLE big AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 200000) g;")
    metrics = db.tmp / "metrics.prom"
    run = db.tmp / "out" / "r1"
    with replies_held(db) as hold:
        with umask(0):
            proc = db.spawn("run", "--run-id", "r1", "--jobs", "1", "--metrics-file", str(metrics), *hold.args)
        seen = wait_for_line(proc, '"event":"started"', "public.big")
        hold.wait()  # part way through big: once the rows received reach it, its file is a .partial

        def partials() -> list[Path]:
            return [p for p in run.iterdir() if p.name.endswith(".partial") and p.stat().st_size > 0]

        wait_until(partials)
        (partial,) = partials()
        assert partial.stat().st_size > 0 and mode(partial) == 0o600, "private from the first byte"
        hold.release()
        code, _, stderr = finish(proc, seen)
    assert code == 0, stderr
    assert mode(db.tmp / "out") == 0o700 and mode(run) == 0o700
    for path in [*run.iterdir(), db.tmp / "out" / "LATEST", metrics]:
        assert mode(path) == 0o600, f"{path.name}: {oct(mode(path))}"


def test_a_run_folder_made_in_advance_is_refused(db: Database) -> None:
    db.sql("CREATE TABLE t (i int); INSERT INTO t VALUES (1);")
    ambush = db.tmp / "out" / "20300101T000000Z"
    ambush.mkdir(parents=True)
    ambush.chmod(0o777)  # another local user's folder, open to them
    (ambush / "theirs").write_text("x")
    result = db.dump("--run-id", "20300101T000000Z")
    assert result.code == 2
    assert "already exists: a run writes only into a folder it creates" in result.stderr
    assert sorted(p.name for p in ambush.iterdir()) == ["theirs"], "nothing was written into it"
    assert not (db.tmp / "out" / "LATEST").exists()


def test_planted_symlinks_change_nothing_outside_the_output(db: Database) -> None:
    db.sql("CREATE TABLE t (i int); INSERT INTO t VALUES (1);")
    victim = db.tmp / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    out = db.tmp / "out"
    out.mkdir()
    (out / "LATEST").symlink_to(victim)
    metrics_dir = db.tmp / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "dumper.prom").symlink_to(victim)
    result = db.dump("--run-id", "r1", "--metrics-file", str(metrics_dir / "dumper.prom"))
    assert result.code == 0, result.stderr
    assert victim.read_text() == "precious\n"
    assert not (out / "LATEST").is_symlink() and (out / "LATEST").read_text() == "r1\n"
    assert not (metrics_dir / "dumper.prom").is_symlink()
    assert [p.name for p in metrics_dir.iterdir()] == ["dumper.prom"], "no temporary file left"


@contextlib.contextmanager
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP server that records what each connection sends (it never answers TLS)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    received: list[bytes] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                with conn:
                    conn.settimeout(2)
                    with contextlib.suppress(OSError):
                        received.append(conn.recv(65536))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], received
    finally:
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)  # wakes the accept() in the thread
        server.close()
        thread.join(5)


@pytest.mark.parametrize("sslmode", ["require", "verify-ca", "disable"])
def test_iam_tokens_go_only_to_verified_servers(db: Database, sslmode: str) -> None:
    with listener() as (port, received):
        result = db.dump(
            "--port",
            str(port),
            "--sslmode",
            sslmode,
            env={
                "DUMPER_AUTH": "iam",
                "AWS_REGION": "eu-central-1",
                "AWS_ACCESS_KEY_ID": "AKIATEST",
                "AWS_SECRET_ACCESS_KEY": "secret-test-key",
            },
        )
    assert result.code == 2
    assert f"--sslmode {sslmode}: --auth iam sends an IAM token" in result.stderr
    assert "verify-full" in result.stderr
    assert received == [], "nothing was sent to the server"


@pytest.mark.requires("tls")
def test_password_auth_below_verify_full_warns_naming_the_risk(db: Database) -> None:
    db.sql("CREATE TABLE t (i int);")
    result = db.dump("--sslmode", "require")
    assert result.code == 0, result.stderr
    warnings = [line for line in result.stdout.splitlines() if "--sslmode require" in line]
    assert len(warnings) == 1 and "receives the password" in warnings[0]


SECRET = "ftp-Pa55word"


def test_a_secret_in_the_output_url_is_never_shown(db: Database) -> None:
    result = db.dump("--output", f"ftp://backup:{SECRET}@127.0.0.1:9/d")
    assert result.code == 2, result.stderr
    assert "ftp://***@127.0.0.1:9/d" in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_a_webhook_url_without_scheme_is_a_usage_error_that_hides_it(db: Database) -> None:
    url = "hooks.slack.com/services/T000/B000/XOXB-SECRET-TOKEN"
    result = db.dump("--notify-url", url)
    assert result.code == 2
    assert result.stderr.count("\n") == 1 and "--notify-url: not an http(s):// URL" in result.stderr
    assert "XOXB-SECRET-TOKEN" not in result.stdout + result.stderr
    assert result.files() == []


def test_webhook_and_pushgateway_urls_from_files_stay_out_of_logs_and_repr(db: Database) -> None:
    db.sql("CREATE TABLE t (i int);")
    with capture() as hook:
        url = f"{hook.url}/services/T000/B000/XOXB-SECRET-TOKEN?token=QUERY-SECRET"
        url_file = db.tmp / "webhook-url"
        url_file.write_text(url + "\n")
        result = db.dump(
            "--notify-url-file", str(url_file), "--pushgateway-url", "http://user:PUSH-SECRET@127.0.0.1:9/"
        )
    assert result.code == 0, result.stderr
    assert hook.requests and hook.requests[0].path.endswith("XOXB-SECRET-TOKEN?token=QUERY-SECRET")
    shown = result.stdout + result.stderr
    assert "could not publish to the pushgateway" in shown  # nothing listens there: the error is logged
    for secret in ("XOXB-SECRET-TOKEN", "QUERY-SECRET", "PUSH-SECRET"):
        assert secret not in shown
    settings = resolve({"notify_url": url, "pushgateway_url": "http://user:PUSH-SECRET@gw:9091/"}, {"USER": "u"})
    assert "SECRET" not in repr(settings) and "SECRET" not in str(settings.public_dict())


def test_verify_refuses_paths_that_leave_the_run_folder(db: Database) -> None:
    db.sql("CREATE TABLE t (i int); INSERT INTO t VALUES (1);")
    result = db.dump("--run-id", "r1")
    assert result.code == 0, result.stderr
    outside = db.tmp / "outside.txt"
    outside.write_text("guess me\n")
    run = db.tmp / "out" / "r1"
    (run / "link.jsonl").symlink_to(outside)
    manifest = orjson.loads((run / "manifest.json").read_bytes())
    good = manifest["tables"][0]
    manifest["tables"] = [
        good,
        {**good, "path": "../../outside.txt"},
        {**good, "path": str(outside)},
        {**good, "path": "link.jsonl"},
        {**good, "path": "..\\outside.txt"},
    ]
    (run / "manifest.json").write_bytes(orjson.dumps(manifest))
    code, out = _verify(str(run))
    assert code == 7
    mismatches = [line for line in out.splitlines() if line.startswith("MISMATCH")]
    assert len(mismatches) == 4, out
    assert sum("not a file name in the run folder" in m for m in mismatches) == 3
    assert sum("link.jsonl" in m and "cannot be read as a plain file" in m for m in mismatches) == 1
    sha = __import__("hashlib").sha256(b"guess me\n").hexdigest()
    assert sha not in out and "9 bytes" not in out, "nothing about the outside file is told"


def _verify(path: str) -> tuple[int, str]:
    out = __import__("io").StringIO()
    code = cli.main(["verify", path], {}, stdout=out)
    return code, out.getvalue()


@pytest.mark.slow
def test_verify_reads_a_gzip_bomb_in_bounded_memory(db: Database) -> None:
    db.sql("CREATE TABLE t (i int); INSERT INTO t VALUES (1);")
    result = db.dump("--run-id", "r1", "--compression", "gzip")
    assert result.code == 0, result.stderr
    run = db.tmp / "out" / "r1"
    (entry,) = orjson.loads((run / "manifest.json").read_bytes())["tables"]
    with gzip.open(run / entry["path"], "wb", compresslevel=9) as bomb:  # one endless line, ~6 GB
        chunk = b"x" * (64 << 20)
        for _ in range(96):
            bomb.write(chunk)
    report = db.tmp / "rss.txt"
    proc = subprocess.run(
        [sys.executable, "-m", "devtools.peak_rss", str(report), sys.executable, "-m", "dumper", "verify", str(run)],
        cwd=db.tmp,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT_DIR)},
        check=False,
    )
    assert proc.returncode == 7, proc.stderr
    assert "MISMATCH" in proc.stdout
    peak_mb = int(report.read_text().split("peak_rss_kb=")[1].split()[0]) / 1024
    assert peak_mb < 150, f"verify took {peak_mb:.0f} MB"
