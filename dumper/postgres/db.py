"""PostgreSQL sessions: TLS, session settings, connecting (retried while it can
heal), keepalives, codecs, bounds on every wait.

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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

import asyncpg
import tenacity

from .. import __version__
from ..core.errors import ConfigError, ConnectionLost, DumpError, RecoveryConflict
from ..core.retry import retrying
from ..core.settings import Settings
from ..format import encode
from ..format.parquet import mapping
from . import replica
from .translate import LOST, connect_error, is_transient, said

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


async def connect(
    settings: Settings,
    password: PasswordProvider,
    *,
    codecs: bool = False,
    setup: Sequence[str] = (),
    then: Callable[[Any], Awaitable[None]] | None = None,
) -> Any:
    """A new session (retried while the failure can heal), with keepalives; for
    table reads the codecs of encode.Kind; `setup` statements, then `then(conn)`
    (joining the snapshot). A session whose set-up fails is dropped, never handed
    out half made."""

    async def attempt() -> Any:
        conn = await asyncpg.connect(**connect_kwargs(settings, password))
        with dropped_on_failure(conn):
            _keepalive(conn)
            async with stall_guard(settings.stall_timeout, "while setting up a connection"):
                if codecs:
                    await register_codecs(conn, settings.format)
                for statement in setup:
                    await conn.execute(statement)
        return conn

    try:
        conn = await retrying(
            attempt,
            attempts=settings.connect_attempts,
            heals=is_transient,
            say="connect failed, retrying",
            wait=tenacity.wait_exponential_jitter(multiplier=0.5, max=8.0),
        )
    except _CONNECT_FAILURES as exc:
        raise connect_error(exc, settings) from exc
    if then is not None:
        with dropped_on_failure(conn):
            await then(conn)
    return conn


@contextlib.contextmanager
def dropped_on_failure(conn: Any) -> Iterator[None]:
    """Any failure in the block drops the connection (its socket closed at once:
    it may be mid-statement, and closing politely could wait on a stalled server)."""
    try:
        yield
    except BaseException:
        conn.terminate()
        raise


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
        raise stalled(where, seconds) from None


def stalled(where: str, seconds: float) -> DumpError:
    """The error of a wait past its --stall-timeout bound."""
    return DumpError(
        f"{where}: the database sent nothing for {seconds:g} s (--stall-timeout): the server, "
        "or the network to it, stalled; check the server's health and load, or raise "
        "--stall-timeout"
    )


async def close(conn: Any) -> None:
    """Close politely, or drop the socket if the server or network is gone."""
    try:
        await asyncio.wait_for(conn.close(), timeout=5)
    except (Exception, asyncio.CancelledError):
        conn.terminate()


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
        raise DumpError(f"{where}: {type(exc).__name__}: {said(exc)}") from exc


def lock_wait_bound(settings: Settings) -> float:
    """The stall bound of a statement that may first wait for a lock: the server
    ends the wait at --lock-timeout, so past lock + stall timeout the server is
    stalled (0, no bound, when either is 0: waiting forever was asked for)."""
    return settings.lock_timeout + settings.stall_timeout if settings.lock_timeout and settings.stall_timeout else 0


async def register_codecs(conn: Any, fmt: str) -> None:
    """Read the types whose exact form is their text (see encode.Kind); for a Parquet file
    (format/parquet/mapping.py) numeric and json as their text, dates and times as their
    raw binary values."""
    if fmt == "parquet":
        for name in mapping.TEXT_READ:
            await conn.set_type_codec(name, schema="pg_catalog", encoder=str, decoder=str, format="text")
        for name in mapping.RAW_READ:
            await conn.set_type_codec(name, schema="pg_catalog", encoder=bytes, decoder=bytes, format="binary")
        return
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
