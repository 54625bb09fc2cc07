"""Reading a hot standby: what the run must know, say and do about it.

On a standby, WAL replay cancels queries whose snapshot still needs rows that
the primary has since vacuumed away (or that hold locks replay needs), once
max_standby_streaming_delay / max_standby_archive_delay have passed. A long
dump outlives the 30 s default unless hot_standby_feedback is on. The run
records these settings, warns before the first table when a cancel is
possible, and names a cancel as what it is, with the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.errors import RecoveryConflict

_FACTS_SQL = """
SELECT pg_catalog.pg_is_in_recovery() AS standby,
       EXTRACT(EPOCH FROM pg_catalog.clock_timestamp()
               OPERATOR(pg_catalog.-) pg_catalog.pg_last_xact_replay_timestamp())::pg_catalog.float8 AS lag,
       pg_catalog.current_setting('hot_standby_feedback') AS feedback,
       pg_catalog.current_setting('max_standby_streaming_delay') AS streaming_delay,
       pg_catalog.current_setting('max_standby_archive_delay') AS archive_delay
"""

# pg_stat_database_conflicts' counters, and what fixes each kind of conflict.
_KINDS = {
    "snapshot": "set hot_standby_feedback = on on the standby (on RDS: in the replica's DB parameter "
    "group), so VACUUM on the primary keeps the rows the dump still reads",
    "lock": "set vacuum_truncate = off on the busy tables (VACUUM's truncation takes an ACCESS EXCLUSIVE "
    "lock that replay must apply), or a longer max_standby_streaming_delay",
    "bufferpin": "raise max_standby_streaming_delay",
    "deadlock": "raise max_standby_streaming_delay",
    "tablespace": "do not drop tablespaces on the primary while a dump runs",
}
_CONFLICTS_SQL = (
    "SELECT confl_snapshot AS snapshot, confl_lock AS lock, confl_bufferpin AS bufferpin, "
    "confl_deadlock AS deadlock, confl_tablespace AS tablespace "
    "FROM pg_catalog.pg_stat_database_conflicts "
    "WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database()"
)
RECOVERY_CONFLICT = "40001"  # SQLSTATE of a query cancelled or a session ended by replay


@dataclass(frozen=True)
class Standby:
    """What decides whether a long read on this standby can finish."""

    replay_lag_s: float | None
    hot_standby_feedback: str
    max_standby_streaming_delay: str
    max_standby_archive_delay: str

    @property
    def can_cancel(self) -> bool:
        return self.hot_standby_feedback != "on" and "-1" not in (
            self.max_standby_streaming_delay,
            self.max_standby_archive_delay,
        )

    def fields(self) -> dict[str, Any]:
        return {
            "standby": True,
            "replay_lag_s": None if self.replay_lag_s is None else round(self.replay_lag_s, 3),
            "hot_standby_feedback": self.hot_standby_feedback,
            "max_standby_streaming_delay": self.max_standby_streaming_delay,
            "max_standby_archive_delay": self.max_standby_archive_delay,
        }

    def warning(self) -> str:
        return (
            f"reading a standby with hot_standby_feedback = off: WAL replay cancels a query whose snapshot "
            f"the primary's VACUUM has moved past after max_standby_streaming_delay = "
            f"{self.max_standby_streaming_delay} (max_standby_archive_delay = {self.max_standby_archive_delay}), "
            "so a run longer than that can be cancelled; set hot_standby_feedback = on on the standby (on "
            "RDS: in the replica's DB parameter group), or dump from the primary"
        )


async def standby(conn: Any) -> Standby | None:
    """The standby's settings, or None on a primary."""
    row = await conn.fetchrow(_FACTS_SQL)
    if not row["standby"]:
        return None
    return Standby(row["lag"], row["feedback"], row["streaming_delay"], row["archive_delay"])


async def conflicts(conn: Any) -> dict[str, int]:
    """This database's recovery-conflict counters (pg_stat_database_conflicts)."""
    row = await conn.fetchrow(_CONFLICTS_SQL)
    return {kind: int(row[kind]) for kind in _KINDS} if row else {}


def explain(before: dict[str, int], after: dict[str, int], cause: BaseException) -> RecoveryConflict:
    """The one-line error for a run the standby cancelled: the kinds of conflict
    seen since the run began, and what fixes each."""
    kinds = [k for k in _KINDS if after.get(k, 0) > before.get(k, 0)]
    fixes = "; ".join(f"for {kind} conflicts, {_KINDS[kind]}" for kind in kinds or ("snapshot", "lock"))
    named = ", ".join(kinds) or "its kind not counted yet in pg_stat_database_conflicts"
    if not isinstance(cause, RecoveryConflict) and cause.__cause__ is not None:
        cause = cause.__cause__  # the server's words, not our guess (such as "the server restarted")
    return RecoveryConflict(
        f"the standby cancelled the dump: conflict with recovery ({named}): WAL replay from a busy primary "
        f"ended the run's queries or snapshot; {fixes}; or dump from the primary (last error: {cause})"
    )
