"""A local directory: files private from the first byte, written under a hidden
partial name and renamed when complete; made durable (fsync) in one pass
before the manifest, not one file at a time.

A small file (most tables of a large catalog) is kept in memory until it is
complete, then created, written and renamed by one call in a worker thread:
creating a file is the slowest thing a file system does for a small table, and
it never blocks the event loop. A larger file is created, in a thread, once it
has SMALL_FILE bytes, and written to as its batches come.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

from ..format import layout

CHUNK = 1 << 20
SMALL_FILE = 256 << 10  # bytes a file holds in memory before it is created
DISCARD_WAIT = 60  # seconds a discard waits for the thread still creating or committing the file
Guard = Callable[[Callable[[], Any], str], Any]


def private_file(path: str) -> int:
    """A new file only its owner can read (0600 whatever the umask), never an
    existing file and never through a symlink; returns the descriptor."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def private_folder(path: str) -> None:
    """Create `path` (0700 whatever the umask); FileExistsError if it exists:
    a folder someone made in advance (run ids are guessable) is never used."""
    os.mkdir(path, 0o700)
    os.chmod(path, 0o700)


def probe(path: str) -> None:
    """Prove the folder writable: create the probe file and remove it."""
    os.close(private_file(path))
    os.unlink(path)


def read_chunks(path: str) -> Iterator[bytes]:
    """A file's bytes, never through a symlink: verify reads only what the run wrote."""
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def table_folder(path: str) -> None:
    """A table's folder in the (private) run folder, 0700 like it; one that exists already is
    a previous attempt's of this run, which must be a folder (never a symlink or a file)."""
    try:
        private_folder(path)
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise


def start_writeback(path: str) -> None:
    """Ask the kernel to start writing a file's pages out, without waiting: the
    fsync that follows then finds them written. (pg_dump's durability pass does the
    same with sync_file_range, which Python lacks; posix_fadvise's DONTNEED starts
    the writeback on Linux, and only drops pages already clean.)"""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def make_durable(files: Iterable[str], folders: Iterable[str]) -> None:
    """fsync every file, then every folder that holds them (their names). The
    writes are started for all files first (one pass), so that each fsync waits
    for little: measured on 3,000 small files, 0.19-0.34 s against 0.36-0.46 s for
    eight threads fsyncing at once."""
    files = list(files)
    if hasattr(os, "posix_fadvise"):  # not on macOS: the fsyncs alone then
        for path in files:
            start_writeback(path)
    for path in files:
        fsync_path(path)
    for folder in folders:
        fsync_path(folder)


class Handoff:
    """File work for a worker thread, handed over together: what callers submit while
    the thread is busy goes in its next call. A catalog of small tables commits many
    files at once (a group's), and each hand-off to a thread costs more than creating,
    writing and renaming a small file."""

    def __init__(self) -> None:
        self._waiting: list[tuple[Callable[[], None], asyncio.Future[None]]] = []
        self._draining: asyncio.Task[None] | None = None

    def submit(self, action: Callable[[], None]) -> asyncio.Future[None]:
        """A future of `action`'s outcome, set once the thread has run it (whatever
        became of the caller that asked)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((action, done))
        if self._draining is None:
            self._draining = asyncio.ensure_future(self._drain())
        return done

    async def _drain(self) -> None:
        batch: list[tuple[Callable[[], None], asyncio.Future[None]]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                outcomes = await asyncio.to_thread(_run_each, [action for action, _ in batch])
                for (_, done), error in zip(batch, outcomes, strict=True):
                    if not done.done():
                        done.set_result(None) if error is None else done.set_exception(error)
                batch = []
        finally:
            for _, done in batch + self._waiting:  # cancelled (the loop is closing): none is left waiting
                done.cancel()
            self._waiting = []
            self._draining = None


def _run_each(actions: list[Callable[[], None]]) -> list[BaseException | None]:
    outcomes: list[BaseException | None] = []
    for action in actions:
        try:
            action()
            outcomes.append(None)
        except Exception as exc:  # each caller gets its own error
            outcomes.append(exc)
    return outcomes


class LocalFile:
    """One file in progress under its partial name; commit renames it into place.
    `durable`: commit fsyncs the file, and its folder after the rename (the
    manifest, LATEST); table files are made durable together (make_durable)."""

    def __init__(self, final: str, guard: Guard, handoff: Handoff, durable: bool = False) -> None:
        self.final = final
        self._guard = guard
        self._handoff = handoff
        self._durable = durable
        self._target = layout.partial_name(final)
        self._held: list[bytes] = []  # what was written before the file exists
        self._held_bytes = 0
        self._file: BinaryIO | None = None
        self._busy: asyncio.Future[None] | None = None  # the thread creating or committing the file
        self._renamed = False

    async def write(self, data: bytes | bytearray) -> None:
        if not data:
            return
        if self._file is not None:  # into the page cache: as fast as a copy
            file = self._file
            self._guard(lambda: file.write(data), self.final)
            return
        self._held.append(bytes(data))
        self._held_bytes += len(data)
        if self._held_bytes >= SMALL_FILE:
            await self._in_thread(self._create)

    async def _in_thread(self, action: Callable[[], None]) -> None:
        """`action` in a worker thread; remembered, so that a cancelled caller's file
        is still removed by discard() once the thread is done with it."""
        self._busy = self._handoff.submit(lambda: self._guard(action, self.final))
        await asyncio.shield(self._busy)

    def _create(self) -> None:
        self._file = os.fdopen(private_file(self._target), "wb")
        held, self._held = self._held, []
        for data in held:
            self._file.write(data)

    async def commit(self) -> None:
        await self._in_thread(self._finish)

    def _finish(self) -> None:
        if self._file is None:
            self._create()
        assert self._file is not None
        self._file.flush()
        if self._durable:
            os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._target, self.final)
        self._renamed = True
        if self._durable:
            fsync_path(os.path.dirname(self.final) or ".")

    async def discard(self) -> None:
        """Best effort, never raises: used while another error is on its way out.
        Also a file whose commit finished after its caller was cancelled goes."""
        self._held = []
        try:
            if self._busy is not None:
                await asyncio.wait([self._busy], timeout=DISCARD_WAIT)
                if self._busy.done() and not self._busy.cancelled():
                    self._busy.exception()  # retrieved: the error on its way out is another
            if self._file is not None:
                self._file.close()
                os.unlink(self.final if self._renamed else self._target)
        except (Exception, asyncio.CancelledError):  # noqa: S110 - must not hide the original error
            pass
