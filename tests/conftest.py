"""Shared fixtures: one real PostgreSQL 15 cluster with TLS per test session,
a fresh database per test, and a helper that runs the real `dumper` CLI."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from devtools.pgcluster import SUPERUSER, SUPERUSER_PASSWORD, Cluster, features
from dumper import cli

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "dumps"  # the bucket of the `s3` fixture


def parse_json(text: str | bytes) -> Any:
    """JSON with exact numbers: decimals stay Decimal, never float."""
    return json.loads(text, parse_float=Decimal, parse_constant=lambda c: pytest.fail(f"bare {c}"))


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    output: Path

    @property
    def run_dir(self) -> Path:
        return self.output / (self.output / "LATEST").read_text().strip()

    def manifest(self) -> dict[str, Any]:
        manifest: dict[str, Any] = parse_json((self.run_dir / "manifest.json").read_bytes())
        return manifest

    def entry(self, schema: str, table: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = [
            t for t in self.manifest()["tables"] if (t["schema"], t["table"]) == (schema, table)
        ]
        assert len(found) == 1, f"{schema}.{table} listed {len(found)} times"
        return found[0]

    def rows(self, schema: str, table: str) -> list[Any]:
        """The rows of one table's file, parsed exactly."""
        entry = self.entry(schema, table)
        return read_rows(self.run_dir / entry["path"])

    def files(self) -> list[str]:
        """Every file under the output folder, relative, sorted (hidden ones too)."""
        if not self.output.exists():
            return []
        return sorted(str(p.relative_to(self.output)) for p in self.output.rglob("*") if p.is_file())


def read_rows(path: Path) -> list[Any]:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    text = data.decode("utf-8")
    if ".json." in path.name or path.name.endswith(".json"):
        rows = parse_json(text)
        assert isinstance(rows, list)
        return rows
    assert text == "" or text.endswith("\n"), "JSON Lines must end each row with a newline"
    # Split on '\n' only: str.splitlines() would also split inside strings at U+2028 etc.
    return [parse_json(line) for line in text.split("\n")[:-1]]


class Lock:
    """A lock another session holds (Database.locked)."""

    def __init__(self, holder: subprocess.Popen[str]) -> None:
        self._holder = holder

    def commit(self, sql: str = "") -> None:
        """Run `sql` in the holding transaction, then commit it: the lock ends."""
        _, err = self._holder.communicate(f"{sql};\nCOMMIT;\n" if sql else "COMMIT;\n", timeout=60)
        assert self._holder.returncode == 0, err


@dataclass
class Database:
    cluster: Cluster
    name: str
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)
    spawned: list[subprocess.Popen[str]] = field(default_factory=list)  # killed when the test ends

    def sql(self, text: str, *, user: str = SUPERUSER) -> str:
        return self.cluster.psql(text, self.name, user=user)

    def fetch(self, query: str, *args: Any) -> list[Any]:
        async def go() -> list[Any]:
            conn = await asyncpg.connect(
                host=str(self.cluster.socket_dir),
                port=self.cluster.port,
                user=SUPERUSER,
                database=self.name,
                server_settings={"TimeZone": "UTC"},
            )
            try:
                return list(await conn.fetch(query, *args))
            finally:
                await conn.close()

        return asyncio.run(go())

    def base_env(self, user: str = SUPERUSER, password: str = SUPERUSER_PASSWORD) -> dict[str, str]:
        # `make coverage` measures the CLI processes tests spawn: they need coverage's own variables.
        measured = {k: v for k, v in os.environ.items() if k.startswith("COVERAGE_")}
        return {
            **measured,
            **self.cluster.env(self.name, user, password),
            "DUMPER_LOG_FORMAT": "json",
            "DUMPER_PG_DUMP": str(self.cluster.bin / "pg_dump"),  # the server's own major (18: no TLS)
            "DUMPER_OUTPUT": str(self.tmp / "out"),
            **self.env,
        }

    def dump(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        user: str = SUPERUSER,
        password: str = SUPERUSER_PASSWORD,
    ) -> Result:
        """Run `dumper run ARGS` in this process, as the CLI would."""
        environ = {**self.base_env(user, password), **(env or {})}
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err):
            code = cli.main(["run", *args], environ, stdout=out)
        return Result(code, out.getvalue(), err.getvalue(), Path(environ["DUMPER_OUTPUT"]))

    def restore(
        self,
        source: Path | str,
        *args: str,
        env: Mapping[str, str] | None = None,
        user: str = SUPERUSER,
        password: str = SUPERUSER_PASSWORD,
    ) -> Result:
        """Run `dumper restore SOURCE ARGS` into this database, in this process."""
        environ = {**self.base_env(user, password), **(env or {})}
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err):
            code = cli.main(["restore", str(source), *args], environ, stdout=out)
        return Result(code, out.getvalue(), err.getvalue(), Path(environ["DUMPER_OUTPUT"]))

    def drill(
        self,
        source: Path | str,
        *args: str,
        env: Mapping[str, str] | None = None,
        user: str = SUPERUSER,
        password: str = SUPERUSER_PASSWORD,
    ) -> Result:
        """Run `dumper drill SOURCE ARGS` against this database's server, in this process."""
        environ = {**self.base_env(user, password), **(env or {})}
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err):
            code = cli.main(["drill", str(source), *args], environ, stdout=out)
        return Result(code, out.getvalue(), err.getvalue(), Path(environ["DUMPER_OUTPUT"]))

    @contextlib.contextmanager
    def locked(self, table: str, mode: str = "ACCESS EXCLUSIVE", by: str | None = None) -> Iterator[Lock]:
        """A lock on `table` (default ACCESS EXCLUSIVE; SHARE blocks writers only),
        held by another session for the block: a run that reaches the table
        waits, as long as the test wants. `by`: the statement that takes it, where
        LOCK TABLE cannot (a sequence: ALTER SEQUENCE ... RENAME, never committed).
        The block ends the session (its transaction rolled back) unless the test ran
        `lock.commit(sql)` first: more statements in that transaction, committed."""
        statement = by or f"LOCK TABLE {table} IN {mode} MODE"
        holder = subprocess.Popen(
            self.psql_argv(),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert holder.stdin is not None
        holder.stdin.write(f"BEGIN; {statement};\n")
        holder.stdin.flush()
        lock_name = mode.title().replace(" ", "") + "Lock"  # pg_locks' spelling: AccessExclusiveLock
        held = (
            "SELECT l.pid FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            f"WHERE c.relname = $1 AND l.mode = '{lock_name}' AND l.granted"
        )
        try:
            wait_until(lambda: self.fetch(held, table) or holder.poll() is not None)
            assert holder.poll() is None, f"the lock on {table} was not taken"
            yield Lock(holder)
        finally:
            if holder.poll() is None:
                with contextlib.suppress(Exception):  # the server may have been restarted meanwhile
                    self.fetch(f"SELECT pg_terminate_backend(pid) FROM ({held}) h", table)
                holder.kill()
            holder.communicate()

    def waiting_for_lock(self, table: str) -> int:
        """How many sessions wait for a lock on `table`."""
        return len(
            self.fetch(
                "SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = $1 AND NOT l.granted",
                table,
            )
        )

    def psql_argv(self) -> list[str]:
        """psql as the superuser over the socket, stopping at the first error."""
        return [
            *("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.cluster.socket_dir)),
            *("-p", str(self.cluster.port), "-U", SUPERUSER, "-d", self.name),
        ]

    def spawn_psql(self, sql: str) -> subprocess.Popen[str]:
        """`sql` in a session of its own, running in the background (killed when the test ends)."""
        proc = subprocess.Popen(
            [*self.psql_argv(), "-c", sql], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.spawned.append(proc)
        return proc

    def spawn(
        self, *argv: str, env: Mapping[str, str] | None = None, prefix: tuple[str, ...] = ()
    ) -> subprocess.Popen[str]:
        """Start the real CLI (`dumper ARGV`, after a `prefix` such as taskset) in a subprocess,
        for signals and mid-run faults. It is killed when the test ends if it is still running."""
        environ = {"PATH": "/usr/bin:/bin", **self.base_env(), **(env or {})}
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "dumper", *argv],
            env=environ,
            cwd=self.tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.spawned.append(proc)
        return proc

    def end_spawned(self) -> None:
        """Kill (SIGCONT first: it may be stopped) and reap what this test started and left running."""
        for proc in self.spawned:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired, ValueError, OSError):
                proc.communicate(timeout=30)


def fake_pg_dump(folder: Path, script: str, real_bin: Path) -> Path:
    """A stand-in pg_dump (`script`, a shell body) in `folder`, with the real pg_restore of
    `real_bin` beside it (dumper demands an installation's pair: pg_restore turns pg_dump's
    archive into the schema files)."""
    folder.mkdir(parents=True, exist_ok=True)
    wrapper = folder / "pg_dump"
    wrapper.write_text("#!/bin/sh\n" + script)
    wrapper.chmod(0o700)
    (folder / "pg_restore").symlink_to(real_bin / "pg_restore")
    return wrapper


def wait_until(condition: Any, seconds: float = 30) -> None:
    """Poll until condition() is true (a bound, not a timing assumption: it fails loudly)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


# The PostgreSQL majors every database test runs against: DUMPER_TEST_MAJORS=15
# (or `make test MAJORS=15`) runs one alone.
MAJORS = [int(m) for m in os.environ.get("DUMPER_TEST_MAJORS", "15,18").split(",") if m.strip()]


# What makes a test need a server: a PostgreSQL cluster or moto (S3, STS). Every test that asks for
# one of these is marked `server`; `make unit` runs the others (pytest -m "not server"), and there a
# server that starts anyway fails the test, so the marking cannot drift.
SERVER_FIXTURES = frozenset({"cluster", "db", "target", "moto", "s3"})
UNIT_ONLY = os.environ.get("DUMPER_TEST_UNIT") == "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)


def _no_server_in_unit_runs(what: str) -> None:
    if UNIT_ONLY:
        pytest.fail(
            f"{what} started in a `make unit` run: the test needs a server, so it must ask for a fixture "
            f"of {sorted(SERVER_FIXTURES)}"
        )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """@pytest.mark.requires("tls", ...): a server feature that PostgreSQL 18 from the
    wheel lacks. Skipped before any fixture runs, so none changes that cluster."""
    callspec = getattr(item, "callspec", None)
    major = callspec.params.get("cluster") if callspec else None
    if major is None:
        return
    for marker in item.iter_markers("requires"):
        missing = set(marker.args) - features(major)
        if missing:
            pytest.skip(f"PostgreSQL {major} here is built without {', '.join(sorted(missing))}")


# Tables over NBuffers / 4 pages are scanned with synchronized scans when a session allows them:
# 16 MB of shared buffers puts that at 4 MB, so that the tests of re-reads (a few MB) would see it.
SERVER_SETTINGS = {"shared_buffers": "16MB"}


@pytest.fixture(scope="session", params=MAJORS, ids=[f"pg{m}" for m in MAJORS])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    _no_server_in_unit_runs("PostgreSQL")
    c = Cluster(major=request.param, settings=SERVER_SETTINGS).start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def db(cluster: Cluster, tmp_path: Path) -> Iterator[Database]:
    name = "t_" + uuid.uuid4().hex[:12]
    cluster.psql(f"CREATE DATABASE {name}")
    database = Database(cluster, name, tmp_path)
    try:
        yield database
    finally:
        database.end_spawned()
        drop_scratch_databases(cluster, name)
        cluster.psql(f"DROP DATABASE {name} WITH (FORCE)")


def drop_scratch_databases(cluster: Cluster, name: str) -> None:
    """Drill scratch databases this test's drills left (their names hold `name`, tests make sure):
    one failed test leaves nothing for the next one to find."""
    from dumper.ops.drill import MARKER

    for (left,) in [
        row.split("|")
        for row in cluster.psql(
            "SELECT datname FROM pg_database WHERE shobj_description(oid, 'pg_database') = "
            f"'{MARKER}' AND strpos(datname, '{name}') > 0"
        ).split()
    ]:
        cluster.psql(f'DROP DATABASE "{left}" WITH (FORCE)')


@pytest.fixture
def target(cluster: Cluster, tmp_path: Path) -> Iterator[Database]:
    """A second fresh database, to restore into."""
    name = "r_" + uuid.uuid4().hex[:12]
    cluster.psql(f"CREATE DATABASE {name}")
    (tmp_path / "target").mkdir()
    database = Database(cluster, name, tmp_path / "target")
    try:
        yield database
    finally:
        database.end_spawned()
        cluster.psql(f"DROP DATABASE {name} WITH (FORCE)")


@dataclass
class Moto:
    """moto's real HTTP server (STS, S3, ...) on 127.0.0.1."""

    endpoint: str

    @staticmethod
    def credentials_for(access_key: str) -> tuple[str, str] | None:
        """(secret key, session token) that moto's STS issued for an access key."""
        from moto.sts.models import sts_backends

        for account in list(sts_backends):
            for backend in sts_backends[account].values():
                for role in backend.assumed_roles:
                    if role.access_key_id == access_key:
                        return role.secret_access_key, role.session_token
        return None


@pytest.fixture(scope="session")
def moto() -> Iterator[Moto]:
    _no_server_in_unit_runs("moto")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # the kernel picks a free port
    server.start()
    try:
        yield Moto(f"http://127.0.0.1:{server.get_host_and_port()[1]}")
    finally:
        server.stop()


@pytest.fixture
def s3(moto: Moto, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A clean moto S3 with one bucket; static test keys (moto accepts any)."""
    urllib.request.urlopen(urllib.request.Request(f"{moto.endpoint}/moto-api/reset", method="POST"))  # noqa: S310
    for var in (
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    import boto3

    client = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    yield client
    client.close()


# A login the server refuses: asyncpg closes that TLS connection asynchronously (close_notify, then
# the socket), and when the event loop ends right after the error, a busy machine can leave the socket
# to the garbage collector (harmless at exit; seen in CI on 2026-12-02, 3 tests in one run). Only the
# tests of refused logins ignore that warning; every other test still fails on a leaked socket.
REFUSED_LOGIN = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect after every test, so a leaked socket or file is reported by the
    test that leaked it (warnings are errors), not by whichever runs next."""
    yield
    import gc

    gc.collect()
