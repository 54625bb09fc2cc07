"""Errors an operator can act on, each with its own process exit code.

    DumperError                 1  (base; an unexpected failure is a bug)
    ├── ConfigError             2  bad option or environment value
    ├── ConnectError            3  cannot reach or log in to PostgreSQL (network, TLS, auth)
    ├── PermissionDenied        4  a table cannot be read (missing GRANT, row-level security)
    ├── DumpError               5  the server failed while the dump was reading
    │   ├── ConnectionLost      5    a connection died mid-table (the table is retried)
    │   ├── SnapshotLost        5    the run's snapshot is gone (the run is retried)
    │   │   ├── RecoveryConflict 5   a standby's WAL replay cancelled the run (retried, then named)
    │   │   ├── TableChanged    5    a table was rewritten after the snapshot (the run is retried)
    │   │   └── LockQueued      5    DDL waits behind the run's lock on an unread table (retried)
    │   └── LoadError           5    restore: the server refused a row or a schema file (drill: 7)
    ├── OutputError             6  the output location could not be written
    ├── VerifyError             7  `dumper verify` found a mismatch
    └── Interrupted           130  stopped by SIGINT/SIGTERM before the dump finished

Messages say what failed, which table or setting, and what to do next. They
never contain a password or token: callers pass only names and server text.
"""

from __future__ import annotations

import errno
from typing import Any


class DumperError(Exception):
    exit_code = 1


class ConfigError(DumperError):
    exit_code = 2


class ConnectError(DumperError):
    exit_code = 3


class PermissionDenied(DumperError):
    exit_code = 4


class DumpError(DumperError):
    exit_code = 5


class ConnectionLost(DumpError):
    """A connection died (server restart, terminated backend, network): can heal."""


class SnapshotLost(DumpError):
    """The exported snapshot cannot be joined any more: only a new run can heal."""


class RecoveryConflict(SnapshotLost):
    """A hot standby's WAL replay cancelled a query or ended a session of the run."""


class TableChanged(SnapshotLost):
    """A table was rewritten or replaced after the snapshot: a fresh snapshot reads it."""


class LockQueued(SnapshotLost):
    """Another session's ACCESS EXCLUSIVE request waits behind the run's lock on a table
    the run has still to read: the run starts again and lets it go first."""


class LoadError(DumpError):
    """The server refused what a restore sent (a row, a schema file): the dump does not load as it is."""


class OutputError(DumperError):
    exit_code = 6


class OutputStalled(TimeoutError):
    """An object-store request that made no progress within --stall-timeout (an
    OSError with errno ETIMEDOUT, as libraries that inspect args expect)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ETIMEDOUT, message)

    def __str__(self) -> str:
        return str(self.strerror)


class VerifyError(DumperError):
    exit_code = 7


class Interrupted(DumperError):
    exit_code = 130


def first_error(group: BaseExceptionGroup[Any]) -> BaseException:
    """The error to report from a TaskGroup: ours before anything else."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    return next((e for e in leaves if isinstance(e, DumperError)), leaves[0])
