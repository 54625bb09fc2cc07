"""Where files go: a local directory or any fsspec URL, written atomically.

A table file becomes visible under its final name only when complete:
locally it is written as '.<name>.partial' and renamed (after fsync); on
object stores the upload itself is the unit (multipart complete or abort).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .errors import OutputError

CHUNK = 1 << 20


class TableFile:
    """One output file in progress: write, then commit or discard."""

    def __init__(self, output: Output, relpath: str) -> None:
        self._output = output
        self.final = output.path(relpath)
        self._local = output.local
        head, _, name = self.final.rpartition("/")
        # The temporary name is hidden and says what it is, should a kill -9 leave it behind.
        self._target = f"{head}/.{name}.{secrets.token_hex(4)}.partial" if self._local else self.final
        self._file: Any = output.guard(lambda: output.fs.open(self._target, "wb"), self.final)

    def write(self, data: bytes) -> None:
        self._output.guard(lambda: self._file.write(data), self.final)

    def commit(self) -> None:
        def finish() -> None:
            if self._local:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                os.replace(self._target, self.final)
            else:
                self._file.close()  # completes the multipart upload
        self._output.guard(finish, self.final)

    def discard(self) -> None:
        """Best effort, never raises: used while another error is on its way out."""
        try:
            if self._local:
                self._file.close()
                os.unlink(self._target)
            else:
                self._file.discard()  # aborts the multipart upload
        except Exception:  # noqa: S110 - cleanup must not hide the original error
            pass


class Output:
    def __init__(self, url: str) -> None:
        try:
            self.fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            raise OutputError(f"--output: cannot use {url!r}: {exc}") from None
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = root.rstrip("/")
        self.url = url

    def path(self, relpath: str) -> str:
        return f"{self.root}/{relpath}"

    def guard(self, action: Any, what: str) -> Any:
        try:
            return action()
        except OutputError:
            raise
        except OSError as exc:
            raise OutputError(f"cannot write {what}: {exc}") from exc

    def make_dir(self, relpath: str) -> None:
        self.guard(lambda: self.fs.makedirs(self.path(relpath), exist_ok=True), self.path(relpath))

    def open_table(self, relpath: str) -> TableFile:
        return TableFile(self, relpath)

    def put(self, relpath: str, data: bytes) -> None:
        """Write a small file atomically (manifest, LATEST)."""
        table_file = self.open_table(relpath)
        try:
            table_file.write(data)
            table_file.commit()
        except BaseException:
            table_file.discard()
            raise

    def exists(self, relpath: str) -> bool:
        return bool(self.fs.exists(self.path(relpath)))

    def read(self, relpath: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(self.path(relpath)))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise OutputError(f"cannot read {self.path(relpath)}: {exc}") from exc

    def chunks(self, relpath: str) -> Iterator[bytes] | None:
        if not self.exists(relpath):
            return None
        return self._iter_chunks(self.path(relpath))

    def _iter_chunks(self, path: str) -> Iterator[bytes]:
        with self.fs.open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk

    def remove(self, relpath: str) -> None:
        with contextlib.suppress(FileNotFoundError, OSError):
            self.fs.rm(self.path(relpath))

    def remove_dir_if_empty(self, relpath: str) -> None:
        path = self.path(relpath)
        try:
            if self.local and not self.fs.ls(path):
                self.fs.rmdir(path)
        except (FileNotFoundError, OSError):
            pass
