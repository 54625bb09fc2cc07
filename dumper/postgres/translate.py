"""One translation point for PostgreSQL's errors: asyncpg's exceptions (and the
network's) become errors an operator can act on, naming the table, the setting
and the fix (httpx's map_httpcore_exceptions, in spirit).
"""

from __future__ import annotations

import socket
import ssl

import asyncpg

from ..core.errors import (
    ConnectError,
    ConnectionLost,
    DumperError,
    DumpError,
    LoadError,
    PermissionDenied,
    RecoveryConflict,
)
from ..core.settings import Settings
from . import replica

LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.InternalClientError,
    ConnectionError,
    TimeoutError,
)


def said(exc: BaseException) -> str:
    """A server error in its own words, with its DETAIL and HINT (the HINT often names
    the setting to change, e.g. max_locks_per_transaction)."""
    text = str(exc)
    for label in ("detail", "hint"):
        extra = getattr(exc, label, None)
        if extra and extra not in text:
            text += f" ({label.upper()}: {extra})"
    return text


def is_transient(exc: BaseException) -> bool:
    """Failures that heal by trying again: refused/reset connections, a server
    starting up or restarting, too many connections. Never auth, TLS or SQL errors."""
    if isinstance(exc, (ssl.SSLError, socket.gaierror)) or "rejected SSL upgrade" in str(exc):
        return False
    return isinstance(exc, (*LOST, asyncpg.TooManyConnectionsError, OSError))


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
        return ConnectError(f"{where}: {said(exc)}")
    raise exc


def table_error(exc: BaseException, table: str) -> DumperError:
    """Translate a server error while reading `table`."""
    text = said(exc)
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


def is_lost(exc: BaseException) -> bool:
    """The connection is gone (a terminated backend, a restart, the network)."""
    return isinstance(exc, LOST) or (isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc))


def load_error(exc: BaseException, table: str) -> DumperError:
    """A server error while loading `table` (restore), said so an operator can act on it."""
    text = said(exc)
    if is_lost(exc):
        return ConnectionLost(f"table {table}: the connection to the server was lost ({type(exc).__name__}: {exc})")
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        if "row-level security" in text:
            return PermissionDenied(
                f"table {table}: {text}; give the restoring role BYPASSRLS or make it the table's owner"
            )
        return PermissionDenied(
            f"table {table}: {text}; the restoring role needs INSERT on it, e.g. GRANT "
            f"pg_write_all_data TO <user> (PostgreSQL 14+) or GRANT INSERT ON {table} TO <user>"
        )
    if isinstance(exc, asyncpg.LockNotAvailableError):
        return table_error(exc, table)  # the same words as when a dump waits for its lock
    constraint = getattr(exc, "constraint_name", None)
    named = f" (constraint {constraint})" if constraint else ""
    return LoadError(f"table {table}: {type(exc).__name__}{named}: {text}")
