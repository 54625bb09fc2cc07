"""Run a command and report its memory and CPU without counting the caller's.

Linux folds the pre-exec address space's high-water mark into a child's
ru_maxrss, and a forked child's pre-exec address space is a copy of its
parent's: a command started from a 150 MB pytest would "peak" at >= 150 MB.
So this small process forks the command itself and reads wait4's rusage
(CPU includes every descendant the command waited for).

ru_maxrss is one process's peak. A command with worker processes needs the
sum over its process tree, so the tree's RSS (VmRSS of the command and every
descendant, from /proc) is also sampled every SAMPLE_EVERY seconds and the
largest sum reported.

    python -m devtools.peak_rss REPORT_FILE CMD [ARGS...]
writes `peak_rss_kb=N tree_rss_kb=N cpu_s=F` to REPORT_FILE and exits with
the command's exit code.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

SAMPLE_EVERY = 0.05


def _children(pid: int) -> list[int]:
    """Children of every thread of `pid` (cheaper than scanning all of /proc)."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found.extend(int(child) for child in (task / "children").read_text().split())
    except OSError:
        pass
    return found


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kb(root: int) -> int:
    """RSS of `root` and all its descendants, now."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += _rss_kb(pid)
        todo.extend(_children(pid))
    return total


def main() -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - replaced by exec
        try:
            os.execvp(sys.argv[2], sys.argv[2:])  # noqa: S606 - runs the command it was given
        finally:
            os._exit(127)
    tree_peak = 0
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        tree_peak = max(tree_peak, tree_rss_kb(pid))
        time.sleep(SAMPLE_EVERY)
    with open(sys.argv[1], "w") as report:
        report.write(
            f"peak_rss_kb={usage.ru_maxrss} tree_rss_kb={max(tree_peak, usage.ru_maxrss)} "
            f"cpu_s={usage.ru_utime + usage.ru_stime:.3f}\n"
        )
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
