"""The `dumper` command: parse options, set up logging, call one library
function, print the report and turn the outcome into an exit code."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import signal
import sys
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, TypeVar

from . import __version__
from .core.errors import ConfigError, DumperError, Interrupted, VerifyError
from .core.logs import log, setup
from .core.malloc import tune_malloc
from .core.options import OPTIONS
from .core.settings import Settings, resolve, with_url_files
from .core.urls import redact_url
from .ops import describe, drill, job, preflight, prune, report, verify
from .ops.notify import Outcome
from .postgres import auth
from .restore import run as restore
from .storage.output import Output

if TYPE_CHECKING:
    from .ops.progress import LiveDisplay

# The live display (rich) and the scheduler (apscheduler) are imported by the commands that use
# them: a run in a pod needs neither, and their imports were a third of its start-up (issue #30).

EXIT_CODES = """exit codes:
  0    success
  1    unexpected error (a bug: please report it with the traceback)
  2    usage or configuration error (nothing was written)
  3    cannot connect or authenticate (network, TLS, IAM, password)
  4    permission denied on a table (missing GRANT, row-level security)
  5    the dump failed while reading (server error, lock timeout, lost connection, stall,
       a standby's conflict with recovery); restore: a table failed to load
  6    the output could not be written (or stalled); verify/restore: the dump could not be
       read; prune: a run could not be removed
  7    verify (or restore, before loading) found a mismatch; drill: the dump did not come
       back (a table differs, the restore failed, no schema files)
  130  interrupted by SIGINT, 143 by SIGTERM (no manifest was written)"""


T = TypeVar("T")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def _add_options(command: argparse.ArgumentParser, name: str) -> None:
    """The flags of command `name`: the options whose table entry names it."""
    for option in OPTIONS:
        if name not in option.commands:
            continue
        if option.switch:
            command.add_argument(
                option.flag,
                dest=option.name,
                action="store_true",
                default=None,
                help=f"{option.help} (env {option.env}=true)",
            )
            continue
        env = option.env + (f", {option.pg_env}" if option.pg_env else "")
        default = option.default if not option.repeatable else ",".join(option.default) or None
        shown = f"; default: {default}" if default not in (None, "") else ""
        choices = f" [{'|'.join(option.choices)}]" if option.choices else ""
        command.add_argument(
            option.flag,
            dest=option.name,
            metavar=option.name.upper(),
            action="append" if option.repeatable else "store",
            help=f"{option.help}{choices} (env {env}{shown})",
        )


# name -> (summary, the positional argument and its help, or None)
COMMANDS: dict[str, tuple[str, tuple[str, str] | None]] = {
    "run": ("dump the database", None),
    "schedule": ("run the dump on a cron schedule, in this process, until stopped", None),
    "check": ("preflight: credentials, token, TLS connection, readable tables", None),
    "token": ("print an RDS IAM auth token (for psql while debugging)", None),
    "verify": ("check a dump against its manifest", ("source", "the run's folder or URL: <output>/<run_id>")),
    "prune": ("keep the N newest complete runs of --output, remove older runs and a killed run's leftovers", None),
    "restore": (
        "load a dump back into a database: verified first, parents before children (docs/restore.md)",
        ("source", "the run's folder or URL: <output>/<run_id>"),
    ),
    "drill": (
        "prove a dump: restore it into a scratch database, dump that again, compare every table (docs/drill.md)",
        ("source", "the run's folder or URL, <output>/<run_id>; or <output>, its newest run"),
    ),
    "describe": (
        "print what loads the dump exactly in a client: DuckDB views, Athena DDL, a Spark schema, a JSON Schema "
        "per table (docs/file-format.md)",
        ("source", "the run's folder or URL: <output>/<run_id>"),
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dumper",
        description=(
            "Dump every table of a PostgreSQL database, from one consistent snapshot, to per-table "
            "JSON files with a manifest. Every option can also be set as DUMPER_<NAME> in the environment."
        ),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dumper {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (summary, positional) in COMMANDS.items():
        command = commands.add_parser(
            name,
            help=summary.partition(" (docs/")[0],
            description=summary,
            epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if positional:
            command.add_argument(positional[0], help=positional[1])
        _add_options(command, name)
    return parser


def _run_main(coro: Coroutine[Any, Any, T], grace_seconds: float = 20.0, left: str = "no manifest was written") -> T:
    """asyncio.run, with SIGTERM/SIGINT cancelling the work: clean-up (aborting
    uploads, removing partial files) runs in finally blocks; if it takes longer
    than `grace_seconds`, the process exits anyway with the signal's code."""
    received: list[int] = []

    async def guarded() -> T:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()

        def give_up() -> None:
            sys.stderr.write(f"dumper: error: clean-up took longer than --grace-seconds {grace_seconds:g}\n")
            sys.stderr.flush()
            os._exit(128 + received[0])

        def stop(sig: int) -> None:
            if not received:
                loop.call_later(grace_seconds, give_up)
            received.append(sig)
            task.cancel()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop, sig)
        try:
            return await coro
        except asyncio.CancelledError:
            if received:
                error = Interrupted(f"stopped by {signal.Signals(received[0]).name}; {left}")
                error.exit_code = 128 + received[0]
                raise error from None
            raise

    return asyncio.run(guarded())


def _json_mode(settings_format: str, stdout: TextIO) -> bool:
    return settings_format == "json" or (settings_format == "auto" and not stdout.isatty())


def _start_logging(settings: Settings, stdout: TextIO) -> bool:
    json_lines = _json_mode(settings.log_format, stdout)
    setup(json_lines, stdout if json_lines else sys.stderr)
    _warn_about_tls(settings)
    return json_lines


def _warn_about_tls(settings: Settings) -> None:
    """Once per process: a password sent to a server nobody authenticated.
    (--auth iam below verify-full is refused outright by config.resolve.)"""
    if settings.sslmode == "disable":
        log.warning(
            "WARNING: --sslmode disable: the connection is NOT encrypted and the password goes in "
            "clear text; use it only against a local development server"
        )
    elif settings.sslmode != "verify-full":
        log.warning(
            f"WARNING: --sslmode {settings.sslmode}: the server's identity is not verified "
            f"({'no certificate check' if settings.sslmode == 'require' else 'any certificate of the CA'}), "
            "so a server that impersonates it receives the password; use --sslmode verify-full"
        )


def cmd_run(settings: Settings, stdout: TextIO) -> int:
    json_lines = _start_logging(settings, stdout)
    password = auth.password_provider(settings)  # configuration errors before anything starts
    log.info(
        "run started",
        extra={
            "run_id": settings.run_id,
            "host": settings.host,
            "dbname": settings.dbname,
            "output": redact_url(settings.output),
        },
    )
    live = _live_display(stdout) if not json_lines and stdout.isatty() else None
    with live or contextlib.nullcontext():
        outcome = _run_main(job.run_job(settings, password, live.update if live else None), settings.grace_seconds)
    if outcome.status != "success":
        print(f"dumper: error: {outcome.error}", file=sys.stderr)
        return outcome.exit_code
    report.dump(outcome, json_lines, stdout)
    return 0


def _live_display(stdout: TextIO) -> LiveDisplay:
    from .ops import progress

    return progress.LiveDisplay(stdout)


def cmd_schedule(settings: Settings, stdout: TextIO) -> int:
    from .ops import schedule

    _start_logging(settings, stdout)
    # One provider for every run: the SDK session keeps its credentials, a valid token is reused.
    password = auth.password_provider(settings)
    Output.for_settings(settings)  # a bad --output is a configuration error now, not at the first tick
    job_run: schedule.Job = functools.partial(job.run_job, password=password)
    if not _json_mode(settings.log_format, stdout) and stdout.isatty():

        async def job_run_shown(run_settings: Settings) -> Outcome:  # the live display during each run
            with _live_display(stdout) as live:
                return await job.run_job(run_settings, password, live.update)

        job_run = job_run_shown
    scheduler = schedule.Scheduler(settings, job_run)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await scheduler.serve(stop)

    asyncio.run(serve())
    log.info("schedule stopped", extra={"runs": scheduler.runs, "skipped": scheduler.skipped})
    return 0


def cmd_check(settings: Settings, stdout: TextIO) -> int:
    setup(False, sys.stderr)
    _warn_about_tls(settings)
    password = auth.password_provider(settings)
    _run_main(preflight.check(settings, password, lambda line: print(line, file=stdout, flush=True)))
    return 0


def cmd_token(settings: Settings, stdout: TextIO) -> int:
    if settings.auth != "iam":
        raise ConfigError("--auth: `dumper token` signs RDS IAM tokens; it needs --auth iam")
    print(_run_main(auth.IamToken(settings)()), file=stdout)
    return 0


def cmd_restore(settings: Settings, stdout: TextIO) -> int:
    json_lines = _start_logging(settings, stdout)
    password = auth.password_provider(settings)
    log.info(
        "restore started",
        extra={"source": redact_url(settings.output), "host": settings.host, "dbname": settings.dbname},
    )
    left = "tables committed before it stay loaded, the others are as they were"
    report.restore(_run_main(restore.run(settings, password), settings.grace_seconds, left), json_lines, stdout)
    return 0


def cmd_drill(settings: Settings, stdout: TextIO) -> int:
    json_lines = _start_logging(settings, stdout)
    password = auth.password_provider(settings)
    log.info("drill started", extra={"source": redact_url(settings.output), "host": settings.host})
    left = "the scratch database and the temporary files were removed"
    report.drill(_run_main(drill.run(settings, password), settings.grace_seconds, left), json_lines, stdout)
    return 0


def cmd_prune(settings: Settings, stdout: TextIO) -> int:
    json_lines = _json_mode(settings.log_format, stdout)
    setup(json_lines, stdout if json_lines else sys.stderr)
    if settings.keep < 1:
        raise ConfigError("--keep: `dumper prune` needs --keep N (N >= 1), the number of complete runs to keep")
    output = Output.for_settings(settings)
    result = prune.prune(output, settings.keep, settings.dry_run)
    report.prune(
        result, settings.dry_run, {d.name: output.url_of(d.name) for d in result.decisions}, json_lines, stdout
    )
    prune.refuse_failures(result)
    return 0


def cmd_verify(settings: Settings, stdout: TextIO) -> int:
    manifest, problems = verify.check(Output.for_settings(settings))
    if problems:
        for problem in problems:
            print(f"MISMATCH {problem}", file=stdout)
        raise VerifyError(f"{len(problems)} mismatch(es) in {redact_url(settings.output)}")
    rows = sum(t.rows for t in manifest.tables)
    print(f"OK {settings.output}: {len(manifest.tables)} tables, {rows:,} rows match the manifest", file=stdout)
    return 0


def cmd_describe(settings: Settings, stdout: TextIO) -> int:
    text, inexact = describe.describe(Output.for_settings(settings), settings.describe_as)
    stdout.write(text)
    for column in inexact:  # what the client will not hold exactly, said where a person looks
        print(f"dumper: not exact in {settings.describe_as}: {column}", file=sys.stderr)
    return 0


RUNNERS = {
    "run": cmd_run,
    "schedule": cmd_schedule,
    "check": cmd_check,
    "token": cmd_token,
    "verify": cmd_verify,
    "prune": cmd_prune,
    "restore": cmd_restore,
    "drill": cmd_drill,
    "describe": cmd_describe,
}
FILES_ONLY = ("verify", "prune", "describe")  # they need no database user


def main(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None, stdout: TextIO | None = None
) -> int:
    environ = os.environ if environ is None else environ
    tune_malloc()
    stdout = stdout or sys.stdout
    try:
        args = build_parser().parse_args(argv)
        flags = {**vars(args), **({"output": args.source} if getattr(args, "source", None) else {})}
        settings = resolve(flags, environ, database=args.command not in FILES_ONLY)
        settings = with_url_files(settings, lambda path: Path(path).read_text())
        return RUNNERS[args.command](settings, stdout)
    except DumperError as exc:
        print(f"dumper: error: {exc}", file=sys.stderr)
        if log.handlers and not isinstance(exc, ConfigError):
            log.error("run failed", extra={"status": "failed", "error": str(exc), "exit_code": exc.exit_code})
        return exc.exit_code
    except Exception:
        log.exception("unexpected error")
        if not log.handlers:
            raise
        return 1


if __name__ == "__main__":  # pragma: no cover
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
