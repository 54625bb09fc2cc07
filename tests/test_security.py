"""Permissions and TLS: a dump that cannot see everything fails loudly, and
connections are verified. Real server, real certificates (trustme CA)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from .conftest import REFUSED_LOGIN, Database
from .holds import closed_port

ROLE_SQL = """
CREATE ROLE reader LOGIN PASSWORD 'reader-pw';
GRANT CONNECT ON DATABASE {db} TO reader;
CREATE TABLE open_data (id int); INSERT INTO open_data SELECT generate_series(1, 3000);
CREATE TABLE secret (id int); INSERT INTO secret VALUES (1);
GRANT SELECT ON open_data TO reader;
"""


def _reader(db: Database) -> None:
    db.sql(ROLE_SQL.format(db=db.name))


def test_missing_grant_fails_naming_the_table_and_the_grant(db: Database) -> None:
    _reader(db)
    try:
        result = db.dump(user="reader", password="reader-pw")
        assert result.code == 4
        assert "table public.secret: permission denied for table secret" in result.stderr
        assert "GRANT pg_read_all_data TO <user>" in result.stderr
        assert "GRANT SELECT ON public.secret" in result.stderr
        assert result.files() == [], "a failed run leaves nothing behind"
    finally:
        db.sql("DROP OWNED BY reader; DROP ROLE reader;")


def test_row_level_security_refuses_instead_of_a_short_file(db: Database) -> None:
    _reader(db)
    db.sql(
        "GRANT SELECT ON secret TO reader; ALTER TABLE secret ENABLE ROW LEVEL SECURITY;"
        "CREATE POLICY none_for_you ON secret USING (false);"
    )
    try:
        result = db.dump(user="reader", password="reader-pw")
        assert result.code == 4
        assert "table public.secret: row-level security would hide rows" in result.stderr
        assert "BYPASSRLS" in result.stderr
        assert result.files() == []
        db.sql("ALTER ROLE reader BYPASSRLS;")
        result = db.dump(user="reader", password="reader-pw")
        assert result.code == 0, result.stderr
        assert result.rows("public", "secret") == [{"id": 1}]
    finally:
        db.sql("DROP OWNED BY reader; DROP ROLE reader;")


def test_failure_in_one_table_removes_the_files_of_finished_ones(db: Database) -> None:
    """--jobs 1: open_data (larger, dumped first) completes, then secret fails (RLS)."""
    _reader(db)
    try:
        db.sql("ANALYZE open_data; GRANT SELECT ON secret TO reader;ALTER TABLE secret ENABLE ROW LEVEL SECURITY;")
        result = db.dump("--jobs", "1", user="reader", password="reader-pw")
        assert result.code == 4
        assert '"event":"done"' in result.stdout and "public.open_data" in result.stdout
        assert result.files() == []
    finally:
        db.sql("DROP OWNED BY reader; DROP ROLE reader;")


LEAK_PROBE = "Pw-leak-probe-7f3a9c"  # a wrong password no message could hold by chance


@REFUSED_LOGIN
def test_wrong_password_is_an_auth_error(db: Database) -> None:
    result = db.dump(password=LEAK_PROBE)
    assert result.code == 3
    assert "authentication failed" in result.stderr and "check PGPASSWORD" in result.stderr
    assert LEAK_PROBE not in result.stdout + result.stderr
    assert result.files() == []


@pytest.mark.requires("tls")
def test_verify_full_rejects_an_unknown_ca(db: Database, tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    result = db.dump("--sslrootcert", str(other_ca))
    assert result.code == 3
    assert "TLS: the server certificate of localhost was not accepted" in result.stderr
    assert "--sslrootcert" in result.stderr
    assert result.files() == []


@pytest.mark.requires("tls")
def test_verify_full_rejects_a_host_name_mismatch(db: Database) -> None:
    result = db.dump("--host", "127.0.0.1")  # the certificate names only 'localhost'
    assert result.code == 3
    assert "not accepted" in result.stderr and "IP address mismatch" in result.stderr


@pytest.mark.requires("tls")
def test_verify_ca_accepts_the_same_mismatch(db: Database) -> None:
    db.sql("CREATE TABLE t (i int); INSERT INTO t VALUES (1);")
    result = db.dump("--host", "127.0.0.1", "--sslmode", "verify-ca")
    assert result.code == 0, result.stderr
    assert result.rows("public", "t") == [{"i": 1}]


@pytest.mark.requires("tls")
def test_plaintext_is_refused_by_a_tls_only_server(db: Database) -> None:
    result = db.dump("--sslmode", "disable")
    assert result.code == 3
    assert "the server requires TLS" in result.stderr
    assert "NOT encrypted" in result.stdout  # the loud warning


@pytest.mark.requires("tls")
def test_missing_ca_file_is_a_usage_error(db: Database) -> None:
    result = db.dump("--sslrootcert", "/nonexistent/ca.pem")
    assert result.code == 2
    assert "--sslrootcert: cannot load CA bundle '/nonexistent/ca.pem'" in result.stderr


def test_nothing_listening_is_a_connection_error_after_retries(db: Database) -> None:
    with closed_port() as port:
        result = db.dump("--port", str(port), "--connect-attempts", "2")
    assert result.code == 3
    assert "cannot connect to localhost" in result.stderr
    assert result.stdout.count('"event":"connect failed, retrying"') == 1
    assert '"attempt":2,"of":2' in result.stdout, "the attempt about to start, as every retry says"


@REFUSED_LOGIN
@pytest.mark.requires("tls")
def test_auth_and_tls_failures_are_not_retried(db: Database) -> None:
    for refused in (db.dump(password=LEAK_PROBE), db.dump("--host", "127.0.0.1")):
        assert refused.code == 3, refused.stderr
        assert "retrying" not in refused.stdout


@pytest.mark.requires("tls")
def test_sslmode_require_encrypts_without_checking_the_certificate(db: Database) -> None:
    import subprocess
    import sys

    from devtools.pgcluster import ROOT_DIR

    db.sql("CREATE TABLE t (i int);")
    # 127.0.0.1 is not the certificate's name: verify-full refuses it (above), require does not check.
    proc = subprocess.run(
        [sys.executable, "-m", "dumper", "check", "--host", "127.0.0.1", "--sslmode", "require"],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT_DIR), **db.base_env()},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "TLS TLSv1." in proc.stdout and "(--sslmode require)" in proc.stdout, "encrypted all the same"
    assert "--sslmode require: the server's identity is not verified" in proc.stderr


@REFUSED_LOGIN
def test_a_database_that_does_not_exist_is_exit_3_naming_the_option(db: Database) -> None:
    result = db.dump("--dbname", "no_such_db")
    assert result.code == 3
    assert '--dbname: database "no_such_db" does not exist' in result.stderr


def test_a_host_that_does_not_resolve_is_exit_3_naming_the_option(db: Database) -> None:
    result = db.dump("--host", "no-such-host.invalid", "--connect-attempts", "1")
    assert result.code == 3
    assert "--host: cannot resolve 'no-such-host.invalid'" in result.stderr


@pytest.mark.requires("tls")
def test_a_server_that_refuses_tls_is_exit_3(db: Database) -> None:
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def refuse_tls() -> None:  # a PostgreSQL server built without TLS answers SSLRequest with 'N'
        conn, _ = server.accept()
        with conn:
            conn.recv(8)
            conn.sendall(b"N")
            conn.recv(1024)

    thread = threading.Thread(target=refuse_tls, daemon=True)
    thread.start()
    port = server.getsockname()[1]
    try:
        result = db.dump("--port", str(port), "--connect-attempts", "1")
    finally:
        server.close()
        thread.join(5)
    assert result.code == 3
    assert f"localhost:{port} does not accept TLS; --sslmode verify-full requires it" in result.stderr


@REFUSED_LOGIN
def test_a_server_that_refuses_the_login_is_exit_3(db: Database) -> None:
    db.sql("CREATE ROLE shut_out LOGIN PASSWORD 'pw';")
    try:
        host = db.cluster.hba_host
        with db.cluster.hba_rule(f"{host} all shut_out 127.0.0.1/32 reject\n{host} all shut_out ::1/128 reject"):
            result = db.dump(user="shut_out", password="pw")
    finally:
        db.sql("DROP ROLE shut_out;")
    assert result.code == 3
    assert "the server refused the connection" in result.stderr and "pg_hba.conf rejects" in result.stderr


def test_check_that_cannot_connect_exits_3(db: Database) -> None:
    import contextlib
    import io

    from dumper import cli

    out, err = io.StringIO(), io.StringIO()
    with closed_port() as port, contextlib.redirect_stderr(err):
        code = cli.main(["check", "--port", str(port), "--connect-attempts", "1"], db.base_env(), stdout=out)
    assert code == 3, err.getvalue()
    assert f"dumper: error: cannot connect to localhost:{port}" in err.getvalue()
    assert "ok: a run would start" not in out.getvalue()
