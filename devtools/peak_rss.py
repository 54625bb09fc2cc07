"""Run a command and report its peak RSS without counting the caller's memory.

Linux folds the pre-exec address space's high-water mark into a child's
ru_maxrss, and a forked child's pre-exec address space is a copy of its
parent's: a command started from a 150 MB pytest would "peak" at >= 150 MB.
So this small process forks the command itself and reads wait4's rusage.

    python -m devtools.peak_rss REPORT_FILE CMD [ARGS...]
writes `peak_rss_kb=N cpu_s=F` to REPORT_FILE and exits with the command's
exit code.
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - replaced by exec
        try:
            os.execvp(sys.argv[2], sys.argv[2:])  # noqa: S606 - runs the command it was given
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    with open(sys.argv[1], "w") as report:
        report.write(f"peak_rss_kb={usage.ru_maxrss} cpu_s={usage.ru_utime + usage.ru_stime:.3f}\n")
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
