"""PostgreSQL connections: TLS, session settings, the shared snapshot, codecs.

Every dump session runs with the settings that make values read exactly as
`to_json` writes them (UTC, ISO dates, postgres intervals, shortest-exact
floats, hex bytea) and with row security off, so that a table the user
cannot fully read fails instead of producing a silently short file.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import tenacity

from .. import __version__
from ..core.config import Settings
from ..core.errors import (
    ConfigError,
    ConnectError,
    ConnectionLost,
    DumperError,
    DumpError,
    PermissionDenied,
    RecoveryConflict,
    SnapshotLost,
)
from ..core.logs import log
from ..format import encode
from ..postgres import replica

PasswordProvider = Callable[[], Awaitable[str | None]]
T = TypeVar("T")

LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.InternalClientError,
    ConnectionError,
    TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    """Failures that heal by trying again: refused/reset connections, a server
    starting up or restarting, too many connections. Never auth, TLS or SQL errors."""
    if isinstance(exc, (ssl.SSLError, socket.gaierror)) or "rejected SSL upgrade" in str(exc):
        return False
    return isinstance(exc, (*LOST, asyncpg.TooManyConnectionsError, OSError))


async def with_retries(what: str, action: Callable[[], Awaitable[T]], attempts: int) -> T:
    """Retry `action` on transient failures, with bounded exponential backoff and
    jitter; one log line per failed attempt."""

    def log_attempt(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            f"{what} failed, retrying",
            extra={
                "attempt": state.attempt_number,
                "of": attempts,
                "error": f"{type(exc).__name__}: {exc}",
                "retry_in_s": round(state.upcoming_sleep, 2),
            },
        )

    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential_jitter(multiplier=0.5, max=8.0),
        retry=tenacity.retry_if_exception(is_transient),
        before_sleep=log_attempt,
        reraise=True,
    )

    async def attempt() -> T:  # tenacity awaits only coroutine functions, not lambdas
        return await action()

    return await retrying(attempt)


def ssl_context(sslmode: str, sslrootcert: str | None) -> ssl.SSLContext | bool:
    """TLS as libpq's sslmode means it; verify-full checks the CA and host name."""
    if sslmode == "disable":
        return False
    if sslmode == "require":  # encrypted, but the server is not authenticated
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    try:
        ctx = ssl.create_default_context(cafile=sslrootcert)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--sslrootcert: cannot load CA bundle {sslrootcert!r}: {exc}") from None
    ctx.check_hostname = sslmode == "verify-full"
    return ctx


def session_settings(settings: Settings) -> dict[str, str]:
    return {
        "application_name": f"dumper/{__version__}",
        "search_path": "",  # no code from a user schema runs in our sessions (CVE-2018-1058)
        "TimeZone": "UTC",
        "DateStyle": "ISO, MDY",
        "IntervalStyle": "postgres",
        "extra_float_digits": "1",
        "bytea_output": "hex",
        "row_security": "off",
        "synchronize_seqscans": "off",  # a re-read after a lost connection sees rows in the same order
        "lock_timeout": str(int(settings.lock_timeout * 1000)),
        "idle_in_transaction_session_timeout": "0",  # the snapshot holder idles for the whole run
        "statement_timeout": "0",  # --statement-timeout applies to table reads only (join_snapshot)
        # The server side of keepalive: a dump that died is noticed, its transaction ended.
        "tcp_keepalives_idle": "60",
        "tcp_keepalives_interval": "10",
        "tcp_keepalives_count": "6",
    }


def connect_kwargs(settings: Settings, password: PasswordProvider) -> dict[str, Any]:
    return {
        "host": settings.host,
        "port": settings.port,
        "user": settings.user,
        "database": settings.dbname,
        "password": password,  # called for every new connection (fresh IAM token)
        "ssl": ssl_context(settings.sslmode, settings.sslrootcert),
        "server_settings": session_settings(settings),
        "timeout": 30,
        "statement_cache_size": 0,  # each query runs once; nothing to cache
    }


def connect_error(exc: BaseException, settings: Settings) -> DumperError:
    """Translate a failure to connect into an error an operator can act on."""
    where = f"{settings.user}@{settings.host}:{settings.port}/{settings.dbname}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConnectError(
            f"TLS: the server certificate of {settings.host} was not accepted ({exc.verify_message}); "
            "check --sslrootcert (the CA bundle, e.g. the RDS global-bundle.pem) and that --host is the "
            "name on the certificate (the real endpoint, not an IP or CNAME)"
        )
    if isinstance(exc, ssl.SSLError):
        return ConnectError(f"TLS handshake with {settings.host}:{settings.port} failed: {exc}")
    text = str(exc)
    if isinstance(exc, ConnectionError) and "rejected SSL upgrade" in text:
        return ConnectError(
            f"{settings.host}:{settings.port} does not accept TLS; --sslmode {settings.sslmode} requires it"
        )
    if isinstance(exc, asyncpg.InvalidPasswordError) or "authentication failed" in text:
        if settings.auth == "iam":
            hint = (
                f"the IAM token was refused: check that the database user has GRANT rds_iam TO "
                f"{settings.user}; that the role's policy allows rds-db:connect on "
                f"arn:aws:rds-db:{settings.region}:ACCOUNT:dbuser:DBI_RESOURCE_ID/{settings.user}; "
                f"that --region {settings.region} is the database's region; and that --host is the "
                "real instance or cluster endpoint, not a CNAME or IP"
            )
        else:
            hint = "check PGPASSWORD"
        return ConnectError(f"authentication failed for {where}: {text}; {hint}")
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        # "no pg_hba.conf entry ... no encryption": only TLS logins are allowed (a reject line says "rejects").
        if "no pg_hba.conf entry" in text and "no encryption" in text and settings.sslmode == "disable":
            return ConnectError(f"{where}: the server requires TLS; use --sslmode verify-full ({text})")
        return ConnectError(f"{where}: the server refused the connection: {text}")
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return ConnectError(f"--dbname: {text}")
    if isinstance(exc, socket.gaierror):
        return ConnectError(f"--host: cannot resolve {settings.host!r}: {exc}")
    if isinstance(exc, (OSError, TimeoutError, asyncpg.PostgresConnectionError)):
        return ConnectError(f"cannot connect to {settings.host}:{settings.port}: {exc or type(exc).__name__}")
    if isinstance(exc, asyncpg.PostgresError):
        return ConnectError(f"{where}: {text}")
    raise exc


def table_error(exc: BaseException, table: str) -> DumperError:
    """Translate a server error while reading `table`."""
    text = str(exc)
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        if "row-level security" in text:
            return PermissionDenied(
                f"table {table}: row-level security would hide rows from this user, so the dump "
                f"would be incomplete ({text}); give the dump role BYPASSRLS or make it the table owner"
            )
        return PermissionDenied(
            f"table {table}: {text}; grant read access, e.g. GRANT pg_read_all_data TO <user> "
            f"(PostgreSQL 14+) or GRANT SELECT ON {table} TO <user> (see sql/)"
        )
    if getattr(exc, "sqlstate", None) == replica.RECOVERY_CONFLICT:  # a standby's replay cancelled the read
        return RecoveryConflict(f"table {table}: {text}")
    if isinstance(exc, asyncpg.LockNotAvailableError):
        return DumpError(
            f"table {table}: could not lock it within --lock-timeout (another session holds "
            f"a conflicting lock, e.g. ALTER TABLE): {text}"
        )
    if isinstance(exc, (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)):
        return DumpError(f"table {table}: {type(exc).__name__}: {text}")
    raise exc


_CONNECT_FAILURES = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)

# The client side of TCP keepalive: a peer that vanished (a dropped NAT entry,
# a failover) is noticed between fetches in about KEEPIDLE + KEEPINTVL * KEEPCNT.
KEEPALIVE = {"TCP_KEEPIDLE": 30, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 3}


def _keepalive(conn: Any) -> None:
    # asyncpg has no option for it; its transport's socket is the only handle.
    transport = getattr(conn, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # a Unix socket has no keepalive
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in KEEPALIVE.items():
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


async def connect(settings: Settings, password: PasswordProvider, *, codecs: bool = False) -> Any:
    """A new session (retried while the failure can heal), with keepalives and,
    for table reads, the codecs of encode.Kind."""

    async def attempt() -> Any:
        conn = await asyncpg.connect(**connect_kwargs(settings, password))
        try:
            _keepalive(conn)
            if codecs:
                async with stall_guard(settings.stall_timeout, "while setting up a connection"):
                    await register_codecs(conn)
        except BaseException:
            conn.terminate()
            raise
        return conn

    try:
        return await with_retries("connect", attempt, settings.connect_attempts)
    except _CONNECT_FAILURES as exc:
        raise connect_error(exc, settings) from exc


@contextlib.asynccontextmanager
async def stall_guard(seconds: float, where: str) -> AsyncIterator[None]:
    """Ends the block with DumpError when the database sends nothing for
    `seconds` (0: no limit). The caller must then terminate the connection."""
    deadline = asyncio.timeout(seconds or None)
    try:
        async with deadline:
            yield
    except TimeoutError:
        if not deadline.expired():
            raise
        raise DumpError(
            f"{where}: the database sent nothing for {seconds:g} s (--stall-timeout): the server, "
            "or the network to it, stalled; check the server's health and load, or raise "
            "--stall-timeout"
        ) from None


async def close(conn: Any) -> None:
    """Close politely, or drop the socket if the server or network is gone."""
    try:
        await asyncio.wait_for(conn.close(), timeout=5)
    except (Exception, asyncio.CancelledError):
        conn.terminate()


async def export_snapshot(conn: Any) -> str:
    """Start the run's one transaction and share its snapshot."""
    await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    return str(await conn.fetchval("SELECT pg_catalog.pg_export_snapshot()"))


async def import_snapshot(conn: Any, snapshot_id: str, settings: Settings) -> None:
    """Join the run's snapshot; SnapshotLost once its exporting transaction is gone."""
    try:
        async with stall_guard(settings.stall_timeout, f"while joining snapshot {snapshot_id}"):
            await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            await conn.execute("SET TRANSACTION SNAPSHOT " + _quote_literal(snapshot_id))
            await conn.execute(f"SET LOCAL statement_timeout = {int(settings.statement_timeout * 1000)}")
    except LOST as exc:
        raise ConnectionLost(f"the connection was lost while joining snapshot {snapshot_id}: {exc}") from exc
    except asyncpg.PostgresError as exc:
        raise SnapshotLost(
            f"could not join the run's snapshot {snapshot_id} (its transaction has "
            f"ended, e.g. the server restarted): {exc}"
        ) from exc


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@contextlib.asynccontextmanager
async def preparing(
    settings: Settings, where: str = "while taking the snapshot and reading the catalog"
) -> AsyncIterator[None]:
    """Errors while taking the snapshot and reading the catalog (or `where`), said plainly."""
    try:
        async with stall_guard(settings.stall_timeout, where):
            yield
    except LOST as exc:
        raise ConnectionLost(f"the connection was lost {where}: {exc}") from exc
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        if getattr(exc, "sqlstate", None) == replica.RECOVERY_CONFLICT:
            raise RecoveryConflict(f"while taking the snapshot: {exc}") from exc
        raise DumpError(f"{where}: {type(exc).__name__}: {exc}") from exc


def lock_wait_bound(settings: Settings) -> float:
    """The stall bound of a statement that may first wait for a lock: the server
    ends the wait at --lock-timeout, so past lock + stall timeout the server is
    stalled (0, no bound, when either is 0: waiting forever was asked for)."""
    return settings.lock_timeout + settings.stall_timeout if settings.lock_timeout and settings.stall_timeout else 0


async def lock_table(conn: Any, relation_sql: str, table: str, settings: Settings) -> None:
    """ACCESS SHARE, as pg_dump takes: no DROP/ALTER until the run ends."""
    try:
        async with stall_guard(lock_wait_bound(settings), f"table {table}: while locking it"):
            await conn.execute(f"LOCK TABLE {relation_sql} IN ACCESS SHARE MODE")
    except LOST as exc:
        raise ConnectionLost(f"table {table}: the connection was lost while locking it: {exc}") from exc
    except asyncpg.PostgresError as exc:
        raise table_error(exc, table) from exc


async def register_codecs(conn: Any) -> None:
    """Read the types whose exact form is their text (see encode.Kind)."""
    for name, decoder in encode.TEXT_DECODERS.items():
        await conn.set_type_codec(name, schema="pg_catalog", encoder=str, decoder=decoder, format="text")


async def server_version(conn: Any) -> str:
    return str(await conn.fetchval("SHOW server_version"))


async def scan_facts(conn: Any) -> tuple[int, int]:
    """server_version_num and block_size: can pages be read by range, and how big is one."""
    row = await conn.fetchrow(
        "SELECT pg_catalog.current_setting('server_version_num')::pg_catalog.int4, "
        "pg_catalog.current_setting('block_size')::pg_catalog.int4"
    )
    return int(row[0]), int(row[1])


async def stream(
    conn: Any, sql: str, table: str, next_size: Callable[[], int], stall_timeout: float
) -> AsyncIterator[list[Any]]:
    """Batches of records from a server-side cursor, each as large as
    `next_size()` says at that moment (so the caller can bound bytes, not rows).
    A fetch that gets no data for `stall_timeout` seconds ends the read."""
    where = f"table {table}"
    try:
        async with stall_guard(stall_timeout, where):
            cursor = await conn.cursor(sql)
        while True:
            size = next_size()
            async with stall_guard(stall_timeout, where):
                records = await cursor.fetch(size)
            last = len(records) < size  # before the caller sees (and may clear) the list
            if records:
                yield records
            if last:
                return
            del records  # not alive during the next fetch
    except LOST as exc:
        # Terminated backend, server restart, network: the connection object is
        # unusable now (InternalClientError when the notice came between fetches).
        raise ConnectionLost(
            f"table {table}: the connection to the server was lost ({type(exc).__name__}: {exc})"
        ) from exc
    except asyncpg.InterfaceError as exc:
        if "closed" not in str(exc):  # "the underlying connection is closed": lost, as above
            raise table_error(exc, table) from exc
        raise ConnectionLost(f"table {table}: the connection to the server was lost ({exc})") from exc
    except (asyncpg.PostgresError, OSError) as exc:
        raise table_error(exc, table) from exc
