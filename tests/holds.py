"""How tests hold a run.

A test that needs a run in progress (to send it a signal, kill its backend,
restart the server, take a lock against it, look at its files) holds it
there on purpose, with one of the holds below, and releases it when it has
looked. Never a big table, a sleep, or a hope that the machine is slow
enough: on a faster machine the run would be over, on a slower one not yet
begun. The hold makes the moment, whatever the machine's speed.

- Before a table is read: `Database.locked(table)` (conftest) holds an
  ACCESS EXCLUSIVE lock in another session; the run waits in its LOCK TABLE
  (a restore in its INSERT) for as long as the block lasts. Pass
  `--lock-timeout 0` when the hold may outlast the default 60 s.
- In the middle of a table: `replies_held(db, after)` puts a proxy in front
  of the server; the run connects to its port (`hold.args`). Each
  connection's replies stop after `after` bytes and stay stopped until
  `hold.release()`; `hold.wait()` returns once a connection is held. A table
  of a few times `after` bytes is then read part way, its file a `.partial`,
  and no further: the catalog queries and pg_dump's connections stay below
  the bound.
- A process doing nothing: `frozen(pid)` SIGSTOPs a process (the dumper, a
  worker, a backend) for the block.
- Worker processes stopped as soon as they exist: `stopped_workers()` in
  test_workers.

Processes started with `Database.spawn` are killed and reaped when the test
ends, however it ends (an assertion before `communicate()` leaks nothing).

Bounds on time: a test asserts the bound the product promises
(`within(took, promised)`: not before it, when the run was held, and not
long after it), never a number picked to suit this machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

from devtools.cutting_proxy import CuttingProxy

if TYPE_CHECKING:
    from .conftest import Database

HOLD_AFTER = 4 << 20  # bytes of replies a connection gets before it is held: far above pg_dump's ~0.7 MB


class ReplyHold:
    """A proxy to the test server whose connections' replies stop after `after` bytes."""

    def __init__(self, proxy: CuttingProxy) -> None:
        self._proxy = proxy
        self.port = proxy.port

    @property
    def args(self) -> list[str]:
        """The run's options to connect through the hold."""
        return ["--port", str(self.port)]

    def wait(self, seconds: float = 120) -> None:
        """Until some connection is held (its run is part way through a table)."""
        assert self._proxy.held.wait(seconds), "no connection was held: the table is smaller than the hold"

    @property
    def holding(self) -> int:
        """How many connections were held so far."""
        return self._proxy.stalls

    def release(self, hold_next: bool = False) -> None:
        """Held connections go on where they stopped; nothing is held from now on, or with
        hold_next the next connection past the bound is (a re-read, held as the first read was)."""
        self._proxy.release(hold_next)


@contextlib.contextmanager
def replies_held(db: Database, after: int = HOLD_AFTER, port: int | None = None) -> Iterator[ReplyHold]:
    """A run that connects through this hold is stopped part way through a table (see above);
    `port`: another server than the test's own (a standby)."""
    proxy = CuttingProxy("127.0.0.1", port or db.cluster.port, stall_replies_after=after).start()
    try:
        yield ReplyHold(proxy)
    finally:
        proxy.stop()


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """SIGSTOP a process for the block: what it was doing, it does not do."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A port of 127.0.0.1 where nothing listens, kept so for the block: it is
    bound (so nothing else can take it) but not listening (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def within(took: float, at_least: float, at_most: float, what: str) -> None:
    """A wait the product bounds ended between the bound that ends it (`at_least`:
    the run was held, it did not end before) and the bound the product promises
    at worst (`at_most`, e.g. --lock-timeout plus --stall-timeout: the client's
    own bound, should the server not end the wait)."""
    assert took >= at_least * 0.95, f"{what} ended after {took:.1f} s, before its bound of {at_least:g} s"
    assert took < at_most, f"{what} ended after {took:.1f} s, past the promised {at_most:g} s"


def seconds_between(first: dict[str, object], last: dict[str, object]) -> float:
    """Seconds between two JSON log events (their `ts`): the run's own clock, not the test's."""
    import datetime as dt

    def at(event: dict[str, object]) -> dt.datetime:
        return dt.datetime.fromisoformat(str(event["ts"]))

    return (at(last) - at(first)).total_seconds()
