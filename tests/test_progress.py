"""The live display: `dumper run` (and each run of `dumper schedule`) on a real
pseudo-terminal shows the running table's rows and percentage, redrawn in
place, warnings above it, then the usual report. The run is held part way
through its table (tests/holds.py) while the test looks."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import threading

from dumper.dump.progress import TableProgress
from dumper.ops.progress import render

from .conftest import Database, wait_until
from .holds import ReplyHold, replies_held
from .test_resilience import ROWS, big, terminate_reader

LINE = re.compile(r"public\.big\s+([\d,]+) / (~?[\d,]+) rows\s+(\d+)%")


class Terminal:
    """A pseudo-terminal (160 x 40) whose output is collected in a thread."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
        self.output = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # the last writer closed the terminal
                return
            if not data:
                return
            self.output += data

    def text(self) -> str:
        return self.output.decode(errors="replace")

    def close(self) -> None:
        os.close(self.master)
        self._reader.join(10)


def on_a_terminal(db: Database, term: Terminal, *argv: str) -> subprocess.Popen[bytes]:
    """The real CLI with a pseudo-terminal as stdin, stdout and stderr (log format auto: text)."""
    env = {"PATH": "/usr/bin:/bin", **db.base_env(), "DUMPER_LOG_FORMAT": "auto", "TERM": "xterm-256color"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dumper", *argv],
        env=env,
        cwd=db.tmp,
        stdin=term.slave,
        stdout=term.slave,
        stderr=term.slave,
    )
    os.close(term.slave)
    db.spawned.append(proc)  # type: ignore[arg-type]  # killed at the test's end, if it is still running
    return proc


def frames(text: str) -> list[tuple[int, int]]:
    """(rows, percent) of every line of public.big the display drew."""
    return [(int(m[1].replace(",", "")), int(m[3])) for m in LINE.finditer(text)]


def held_frames(db: Database, term: Terminal, hold: ReplyHold) -> list[tuple[int, int]]:
    """The display's lines of big while the run is held part way through it: redrawn every second."""
    hold.wait()
    shown = len(term.output)
    wait_until(lambda: any(rows > 0 for rows, _ in frames(term.text()[shown:])), 30)
    return [(rows, pct) for rows, pct in frames(term.text()[shown:]) if rows > 0]


WARNING = "warning: public.big: connection lost; reading the rest again in the same snapshot"


def test_a_terminal_shows_live_rows_and_percentages_then_the_report(db: Database) -> None:
    big(db)
    db.sql("ANALYZE big;")
    term = Terminal()
    with replies_held(db) as hold:
        proc = on_a_terminal(db, term, "run", "--jobs", "1", "--split-mib", "0", *hold.args)
        seen = held_frames(db, term, hold)
        # The percentage is the rows read of the catalog's estimate (ANALYZE: exact here), below 100 mid-table.
        assert all(0 < pct < 100 and abs(pct - rows * 100 / ROWS) <= 1 for rows, pct in seen), seen
        terminate_reader(db, hold)  # a warning, while the display is up: it is printed above it
        hold.release()
        code = proc.wait(120)
    term.close()
    text = term.text()
    assert code == 0, text[-3000:]
    assert WARNING in text, text[-3000:]
    report = text[text.rindex("table ") :]
    assert re.search(rf"public\.big\s+{ROWS:,}", report) and "dump complete:" in report


def test_the_schedule_shows_the_same_during_each_run(db: Database) -> None:
    big(db)
    db.sql("ANALYZE big;")
    term = Terminal()
    with replies_held(db) as hold:
        proc = on_a_terminal(
            db, term, "schedule", "--cron", "0 3 * * *", "--run-now", "--jobs", "1", "--split-mib", "0", *hold.args
        )
        seen = held_frames(db, term, hold)
        assert all(0 < pct < 100 for _, pct in seen), seen
        terminate_reader(db, hold)
        hold.release()
        wait_until(lambda: "scheduled run ended" in term.text(), 120)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
    term.close()
    text = term.text()
    assert code == 0, text[-3000:]
    assert WARNING in text, text[-3000:]
    assert "status=success" in text[text.index("scheduled run ended") :], text[-3000:]


def test_an_estimate_that_is_missing_or_low_says_so_and_never_passes_100() -> None:
    low = TableProgress("public.grown", estimate=1000, started=1.0, rows=5000, bytes=10)
    unknown = TableProgress("public.fresh", estimate=-1, started=1.0, rows=42, bytes=10)
    assert low.fraction() == 0.99 and not low.exact()
    assert unknown.fraction() is None
    from rich.console import Console

    console = Console(width=160, record=True)
    console.print(render([low, unknown], now=10.0))
    text = console.export_text()
    grown, fresh = (
        next(line.split() for line in text.splitlines() if line.startswith(name))
        for name in ("public.grown", "public.fresh")
    )
    assert grown[1:6] == ["5,000", "/", "~5,000", "rows", "99%"], grown
    assert fresh[1:5] == ["42", "/", "~", "rows"] and not any(cell.endswith("%") for cell in fresh), fresh
