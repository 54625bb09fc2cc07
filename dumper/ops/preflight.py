"""`dumper check`: everything a run needs, checked before a run, step by step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..core.errors import PermissionDenied
from ..core.settings import Settings
from ..postgres import db, locks, replica, schemadeps
from ..postgres.auth import IamToken, StaticPassword
from ..postgres.catalog import discover

_READABLE_SQL = """
SELECT c.oid,
       pg_catalog.has_table_privilege(c.oid, 'SELECT') AS can_select,
       c.relrowsecurity AND NOT (r.rolbypassrls OR r.rolsuper
            OR pg_catalog.pg_has_role(c.relowner, 'USAGE')) AS rls_hides
FROM pg_catalog.pg_class c, pg_catalog.pg_roles r
WHERE c.oid OPERATOR(pg_catalog.=) ANY($1::pg_catalog.oid[]) AND r.rolname OPERATOR(pg_catalog.=) current_user
"""


@dataclass
class CheckReport:
    lines: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


async def check(settings: Settings, password: StaticPassword | IamToken, say: Callable[[str], None]) -> CheckReport:
    """Resolve credentials, sign a token, connect over TLS, list what would be
    dumped and whether each table is readable. Raises at the first blocker."""
    report = CheckReport()
    if isinstance(password, IamToken):
        source, arn = await password.identity()
        say(f"AWS credentials: {source} as {arn}")
        await password()
        say(f"IAM token: signed for {settings.user}@{settings.host}:{settings.port} in {settings.region}")
    else:
        say("auth: password from PGPASSWORD" if settings.password else "auth: no password (trust)")
    conn = await db.connect(settings, password)
    try:
        tls = await conn.fetchrow(
            "SELECT ssl, version FROM pg_catalog.pg_stat_ssl "
            "WHERE pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()"
        )
        say(
            f"connected: {settings.host}:{settings.port}/{settings.dbname} as {settings.user}, "
            f"TLS {tls['version'] if tls and tls['ssl'] else 'OFF'} (--sslmode {settings.sslmode}), "
            f"PostgreSQL {await db.server_version(conn)}"
        )
        standby = await replica.standby(conn)
        if standby:
            lag = "unknown" if standby.replay_lag_s is None else f"{standby.replay_lag_s:.1f} s"
            say(
                f"standby: a hot standby (replay lag {lag}), hot_standby_feedback = "
                f"{standby.hot_standby_feedback}, max_standby_streaming_delay = "
                f"{standby.max_standby_streaming_delay}, max_standby_archive_delay = "
                f"{standby.max_standby_archive_delay}"
            )
            if standby.can_cancel:
                say(f"  warning: {standby.warning()}")
        tables = await discover(
            conn,
            settings.schema,
            settings.include,
            settings.exclude,
            settings.extension_types,
            await schemadeps.extensions(conn, settings.schema),
            settings.as_text,
        )
        rows = {r["oid"]: r for r in await conn.fetch(_READABLE_SQL, [t.oid for t in tables])}
        locking = locks.plan(sum(t.relations for t in tables), await locks.lock_table(conn), settings.table_locks)
    finally:
        await db.close(conn)
    say(f"tables to dump: {len(tables)}")
    for table in tables:
        row = rows[table.oid]
        if not row["can_select"]:
            status = f"NOT READABLE: missing SELECT (GRANT pg_read_all_data TO {settings.user})"
        elif row["rls_hides"]:
            status = "NOT READABLE: row-level security would hide rows (needs BYPASSRLS)"
        else:
            status = "readable"
        if status != "readable":
            report.unreadable.append(table.qualified)
        say(f"  {table.qualified}: {status}")
    if report.unreadable:
        raise PermissionDenied(f"{len(report.unreadable)} table(s) cannot be read: " + ", ".join(report.unreadable))
    say("table locks: " + locking.described())
    say("ok: a run would start")
    return report
