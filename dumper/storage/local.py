"""A local directory: files private from the first byte, written under a hidden
partial name, fsynced and renamed when complete."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ..format import layout

CHUNK = 1 << 20
T = TypeVar("T")
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


class LocalFile:
    """One file in progress under its partial name; commit renames it into place."""

    def __init__(self, final: str, guard: Guard) -> None:
        self.final = final
        self._guard = guard
        self._target = layout.partial_name(final)
        self._file = guard(lambda: os.fdopen(private_file(self._target), "wb"), final)

    async def write(self, data: bytes | bytearray) -> None:
        if data:
            self._guard(lambda: self._file.write(data), self.final)

    async def commit(self) -> None:
        def finish() -> None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._target, self.final)

        self._guard(finish, self.final)

    async def discard(self) -> None:
        """Best effort, never raises: used while another error is on its way out."""
        try:
            self._file.close()
            os.unlink(self._target)
        except Exception:  # noqa: S110 - must not hide the original error
            pass
