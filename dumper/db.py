"""PostgreSQL connections: TLS, session settings, the shared snapshot, codecs.

Every dump session runs with the settings that make values read exactly as
`to_json` writes them (UTC, ISO dates, postgres intervals, shortest-exact
floats, hex bytea) and with row security off, so that a table the user
cannot fully read fails instead of producing a silently short file.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg

from . import __version__, encode
from .config import Settings
from .errors import ConfigError, ConnectError, DumperError, DumpError, PermissionDenied

PasswordProvider = Callable[[], Awaitable[str | None]]


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
        "TimeZone": "UTC",
        "DateStyle": "ISO, MDY",
        "IntervalStyle": "postgres",
        "extra_float_digits": "1",
        "bytea_output": "hex",
        "row_security": "off",
        "lock_timeout": str(int(settings.lock_timeout * 1000)),
        "idle_in_transaction_session_timeout": "0",  # the snapshot holder idles for the whole run
        "statement_timeout": "0",
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
            "name on the certificate (the real endpoint, not an IP or CNAME)")
    if isinstance(exc, ssl.SSLError):
        return ConnectError(f"TLS handshake with {settings.host}:{settings.port} failed: {exc}")
    text = str(exc)
    if isinstance(exc, ConnectionError) and "rejected SSL upgrade" in text:
        return ConnectError(f"{settings.host}:{settings.port} does not accept TLS; "
                            f"--sslmode {settings.sslmode} requires it")
    if isinstance(exc, asyncpg.InvalidPasswordError) or "authentication failed" in text:
        if settings.auth == "iam":
            hint = (f"the IAM token was refused: check that the database user has GRANT rds_iam TO "
                    f"{settings.user}; that the role's policy allows rds-db:connect on "
                    f"arn:aws:rds-db:{settings.region}:ACCOUNT:dbuser:DBI_RESOURCE_ID/{settings.user}; "
                    f"that --region {settings.region} is the database's region; and that --host is the "
                    "real instance or cluster endpoint, not a CNAME or IP")
        else:
            hint = "check PGPASSWORD"
        return ConnectError(f"authentication failed for {where}: {text}; {hint}")
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        if "no encryption" in text and settings.sslmode == "disable":
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
                f"would be incomplete ({text}); give the dump role BYPASSRLS or make it the table owner")
        return PermissionDenied(
            f"table {table}: {text}; grant read access, e.g. GRANT pg_read_all_data TO <user> "
            f"(PostgreSQL 14+) or GRANT SELECT ON {table} TO <user> (see sql/)")
    if isinstance(exc, asyncpg.LockNotAvailableError):
        return DumpError(f"table {table}: could not lock it within --lock-timeout (another session holds "
                         f"a conflicting lock, e.g. ALTER TABLE): {text}")
    if isinstance(exc, (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)):
        return DumpError(f"table {table}: {type(exc).__name__}: {text}")
    raise exc


async def connect(settings: Settings, password: PasswordProvider) -> Any:
    try:
        return await asyncpg.connect(**connect_kwargs(settings, password))
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise connect_error(exc, settings) from exc


async def create_pool(settings: Settings, password: PasswordProvider, size: int) -> Any:
    try:
        return await asyncpg.create_pool(
            **connect_kwargs(settings, password), min_size=size, max_size=size, init=register_codecs)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise connect_error(exc, settings) from exc


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


async def import_snapshot(conn: Any, snapshot_id: str) -> None:
    await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        await conn.execute("SET TRANSACTION SNAPSHOT " + _quote_literal(snapshot_id))
    except asyncpg.PostgresError as exc:
        raise DumpError(f"could not join the run's snapshot {snapshot_id}: {exc}") from exc


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def lock_table(conn: Any, relation_sql: str, table: str) -> None:
    """ACCESS SHARE, as pg_dump takes: no DROP/ALTER until the run ends."""
    try:
        await conn.execute(f"LOCK TABLE {relation_sql} IN ACCESS SHARE MODE")
    except asyncpg.PostgresError as exc:
        raise table_error(exc, table) from exc


async def register_codecs(conn: Any) -> None:
    """Read the types whose exact form is their text (see encode.Kind)."""
    for name, decoder in encode.TEXT_DECODERS.items():
        await conn.set_type_codec(name, schema="pg_catalog", encoder=str, decoder=decoder, format="text")


async def server_version(conn: Any) -> str:
    return str(await conn.fetchval("SHOW server_version"))


async def stream(conn: Any, sql: str, table: str,
                 next_size: Callable[[], int]) -> AsyncIterator[list[Any]]:
    """Batches of records from a server-side cursor, each as large as
    `next_size()` says at that moment (so the caller can bound bytes, not rows)."""
    try:
        cursor = await conn.cursor(sql)
        while True:
            size = next_size()
            records = await cursor.fetch(size)
            if records:
                yield records
            if len(records) < size:
                return
    except asyncpg.InternalClientError as exc:
        # The server ended the session while it sat idle between fetches (terminated,
        # restarted); the connection object is unusable now, so do not touch it.
        raise DumpError(f"table {table}: the connection to the server was lost ({exc})") from exc
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise table_error(exc, table) from exc
