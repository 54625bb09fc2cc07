"""The live display: `dumper run` on a real pseudo-terminal shows the running
table's rows and percentage, redrawn in place, then the usual report."""

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
import time

from dumper.progress import TableProgress, render

from .conftest import Database, wait_until

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


def backends(db: Database) -> list[int]:
    return [r[0] for r in db.fetch("SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'dumper/%' "
                                   "AND query LIKE '%FROM ONLY \"public\".\"big\"%'")]


def test_a_terminal_shows_live_rows_and_percentages_then_the_report(db: Database) -> None:
    db.sql("CREATE TABLE big AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 1500000) g; ANALYZE big;"
           "CREATE TABLE small (id int); INSERT INTO small VALUES (1);")
    term = Terminal()
    env = {"PATH": "/usr/bin:/bin", **db.base_env(), "DUMPER_LOG_FORMAT": "auto", "TERM": "xterm-256color"}
    proc = subprocess.Popen([sys.executable, "-m", "dumper", "run", "--jobs", "1", "--split-mib", "0"], env=env,
                            cwd=db.tmp, stdin=term.slave, stdout=term.slave, stderr=term.slave)
    os.close(term.slave)
    stopped: list[int] = []
    try:
        wait_until(lambda: backends(db))
        stopped = backends(db)
        # The reading backend runs in short bursts, frozen in between: a frame
        # drawn while it is frozen shows the table part-way, whatever the speed.
        seen: list[tuple[int, int]] = []
        deadline = time.monotonic() + 60
        while not seen:
            assert time.monotonic() < deadline, term.text()[-2000:]
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)
            shown = len(term.output)
            wait_until(lambda shown=shown: len(term.output) > shown + 50, 10)  # a new frame, drawn while frozen
            time.sleep(1.5)  # at least one full redraw (the display updates every second)
            frames = [(int(m[1].replace(",", "")), int(m[3])) for m in LINE.finditer(term.text()[shown:])]
            seen = [(rows, pct) for rows, pct in frames if rows > 0]
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
            if not seen:
                time.sleep(0.05)
        # The percentage is the rows read of the catalog's estimate (ANALYZE: exact here), below 100 mid-table.
        assert all(0 <= pct < 100 and abs(pct - rows * 100 / 1_500_000) <= 1 for rows, pct in seen), seen
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        code = proc.wait(120)
        term.close()
    text = term.text()
    assert code == 0, text[-3000:]
    report = text[text.rindex("table "):]
    assert re.search(r"public\.big\s+1,500,000", report) and "dump complete:" in report


def test_an_estimate_that_is_missing_or_low_says_so_and_never_passes_100() -> None:
    low = TableProgress("public.grown", estimate=1000, started=1.0, rows=5000, bytes=10)
    unknown = TableProgress("public.fresh", estimate=-1, started=1.0, rows=42, bytes=10)
    assert low.fraction() == 0.99 and not low.exact()
    assert unknown.fraction() is None
    from rich.console import Console

    console = Console(width=160, record=True)
    console.print(render([low, unknown], now=10.0))
    text = console.export_text()
    grown, fresh = (next(line.split() for line in text.splitlines() if line.startswith(name))
                    for name in ("public.grown", "public.fresh"))
    assert grown[1:6] == ["5,000", "/", "~5,000", "rows", "99%"], grown
    assert fresh[1:5] == ["42", "/", "~", "rows"] and not any(cell.endswith("%") for cell in fresh), fresh
