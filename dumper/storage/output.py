"""Where files go: a local directory (local.py) or any fsspec URL (remote.py;
s3:// through s3fs, s3.py), written atomically.

A table file becomes visible under its final name only when complete: locally
it is written under a hidden partial name, fsynced and renamed; on object
stores the upload is the unit, completed or aborted on any failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ..core.errors import ConfigError, OutputError
from ..core.settings import Settings
from ..core.urls import redact_url
from ..format import layout
from . import local, remote, s3

T = TypeVar("T")


def _failures() -> tuple[type[BaseException], ...]:
    """What an output backend raises for I/O problems: OSError, and botocore's
    own families (s3fs passes network failures through untranslated)."""
    try:
        import botocore.exceptions as bx
    except ImportError:  # pragma: no cover - botocore is a dependency
        return (OSError,)
    return (OSError, bx.BotoCoreError, bx.ClientError)


FAILURES = _failures()


class TableFile(Protocol):
    """One output file in progress: write, then commit or discard."""

    final: str

    async def write(self, data: bytes | bytearray) -> None: ...

    async def commit(self) -> None: ...

    async def discard(self) -> None: ...


class Output:
    def __init__(
        self, url: str, options: dict[str, Any] | None = None, part_size: int = 16, stall_timeout: float = 0.0
    ) -> None:
        shown = redact_url(url)  # user:password@ or a query string never reach a log or an error
        self.protocol = url.split("://", 1)[0] if "://" in url else "file"
        if self.protocol not in fsspec.available_protocols():
            raise ConfigError(
                f"--output: {shown!r}: unknown protocol {self.protocol!r}; use a local path, s3:// or another "
                "fsspec URL"
            )
        self.s3 = s3.is_s3(url)
        try:
            if self.s3:
                self.fs = s3.filesystem(stall_timeout, options or {})
                root = self.fs._strip_protocol(url)
            else:
                self.fs, root = fsspec.core.url_to_fs(url, **(options or {}))
        except Exception as exc:  # any backend, any failure: said without the URL's secrets
            text = str(exc).replace(url, shown)
            raise ConfigError(f"--output: cannot use {shown!r}: {type(exc).__name__}: {text}") from None
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = root.rstrip("/")
        self.url = url
        self.part_size = part_size
        self._handoff = local.Handoff()  # local files' work, for a worker thread

    @classmethod
    def for_settings(cls, settings: Settings) -> Output:
        options = s3.storage_options(settings) if s3.is_s3(settings.output) else {}
        return cls(settings.output, options, settings.part_size, settings.stall_timeout)

    def path(self, relpath: str) -> str:
        return f"{self.root}/{relpath}"

    def url_of(self, relpath: str) -> str:
        return self.path(relpath) if self.local else f"{self.protocol}://{self.path(relpath)}"

    def guard(self, action: Callable[[], T], what: str) -> T:
        """Run `action`; an OSError becomes an OutputError that says what to fix."""
        try:
            return action()
        except OutputError:
            raise
        except FAILURES as exc:
            raise OutputError(self._explain(exc, what)) from exc

    def _explain(self, exc: BaseException, what: str) -> str:
        where = what if self.local else f"{self.protocol}://{what}"
        text = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):  # OutputStalled, or a response that never came (read timeout)
            return (
                f"cannot write {where}: the output accepted nothing for the --stall-timeout ({text}): the "
                "object store, or the network to it, stalled; the upload was aborted"
            )
        said = s3.explain(exc, where, bucket=what.split("/", 1)[0]) if self.s3 else None
        return said or f"cannot write {where}: {text}"

    def make_run_dir(self, relpath: str, shared: bool = False) -> None:
        """Create the run folder, which must not exist yet, and prove it is
        writable (fails fast, before any table). Locally it is private (0700):
        a folder someone made in advance (run ids are guessable) is refused.
        `shared` (a sharded run's coordinator): one without a manifest is this run's,
        made by an earlier attempt of it."""
        path = self.path(relpath)
        taken = ConfigError(
            f"--run-id: {self.url_of(relpath)} already exists: a run writes only into a "
            "folder it creates itself, never over another run (choose another run id)"
        )
        if shared and self.exists(relpath):
            if self.exists(f"{relpath}/{layout.MANIFEST_NAME}") or not self.exists(f"{relpath}/{layout.SHARDS}"):
                raise ConfigError(
                    f"--run-id: {self.url_of(relpath)} already exists and is not an unfinished sharded run of "
                    "this id: a sharded run starts again only in its own folder (choose another run id)"
                )
            return
        probe = self.path(f"{relpath}/{layout.WRITE_PROBE}")
        if self.local:
            self.guard(lambda: os.makedirs(self.root, mode=0o700, exist_ok=True), self.root)
            try:
                local.private_folder(path)
            except FileExistsError:
                raise taken from None
            except OSError as exc:
                raise OutputError(self._explain(exc, path)) from exc
            self.guard(lambda: local.probe(probe), probe)
        elif self.s3:
            if self.guard(lambda: s3.holds_objects(self.fs, path), path):
                raise taken
            self.guard(lambda: s3.probe(self.fs, probe), probe)
        else:
            if self.guard(lambda: self.fs.exists(path), path):
                raise taken
            self.guard(lambda: self.fs.pipe_file(probe, b"probe\n"), probe)
            self.guard(lambda: self.fs.rm_file(probe), probe)

    def open_table(self, relpath: str, exclusive: bool = True, durable: bool = False) -> TableFile:
        """A file written atomically. Locally a table file is made durable later, with
        the others (make_durable); a `durable` one is fsynced as it is committed."""
        final = self.path(relpath)
        if self.local:
            return local.LocalFile(final, self.guard, self._handoff, durable)
        return remote.RemoteFile(self.fs, final, self.guard, self.part_size, exclusive)

    def make_folders(self, relpaths: list[str]) -> None:
        """The folders the files of `relpaths` go in, under the run folder: new and private
        (an object store has none to make)."""
        if self.local:
            for folder in sorted({os.path.dirname(relpath) for relpath in relpaths if relpath.count("/") > 1}):
                self.guard(functools.partial(local.table_folder, self.path(folder)), self.url_of(folder))

    async def make_durable(self, relpaths: list[str]) -> None:
        """Every file of `relpaths` on disk, and the names of their folders (and those folders'
        in the run folder), before the manifest says they are a dump (an object store's
        completed upload already is)."""
        if self.local:
            paths = [self.path(relpath) for relpath in relpaths]
            folders = sorted({self.path(p) for relpath in relpaths for p in _folders_of(relpath)})
            await asyncio.to_thread(self.guard, lambda: local.make_durable(paths, folders), self.root)

    async def put(self, relpath: str, data: bytes, exclusive: bool = True) -> None:
        """Write a small file atomically and durably (manifest; LATEST, which replaces the last one)."""
        table_file = self.open_table(relpath, exclusive, durable=True)
        try:
            await table_file.write(data)
            await table_file.commit()
        except BaseException:
            await table_file.discard()
            raise

    def names(self, relpath: str) -> list[str]:
        """The names in a folder (none when it does not exist)."""
        path = self.path(relpath)

        def listed() -> list[str]:
            self.fs.invalidate_cache(path)  # s3fs keeps listings: another process adds names meanwhile
            try:
                return list(self.fs.ls(path, detail=False))
            except FileNotFoundError:
                return []

        return sorted(str(name).rstrip("/").rpartition("/")[2] for name in self.guard(listed, path))

    def remove_tree(self, relpath: str) -> bool:
        """Best effort (a sharded run's shared state, once the run has ended); False if not removed.
        Another process may remove a file of it meanwhile (which stops a local removal halfway,
        FileNotFoundError): then what is left is removed again."""
        path = self.path(relpath)
        for _ in range(3):
            try:
                self.fs.rm(path, recursive=True)
                return True
            except FileNotFoundError:
                pass
            except FAILURES:
                return False
            try:
                self.fs.invalidate_cache(path)
                if not self.fs.exists(path):
                    return True
            except FAILURES:
                return False
        return False

    def exists(self, relpath: str) -> bool:
        path = self.path(relpath)

        def found() -> bool:
            self.fs.invalidate_cache(path)  # (as in names(): another process may have written it since)
            return bool(self.fs.exists(path))

        return bool(self.guard(found, path))

    def read(self, relpath: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(self.path(relpath)))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise self.reading_error(exc, relpath) from exc

    def chunks(self, relpath: str) -> Iterator[bytes] | None:
        if not self.exists(relpath):
            return None
        path = self.path(relpath)
        return local.read_chunks(path) if self.local else remote.read_chunks(self.fs, path)

    def reading_error(self, exc: BaseException, relpath: str | None = None) -> OutputError:
        """A failure to read a stored file (or, without relpath, the location), said
        so an operator can act on it."""
        where = self.url_of(relpath) if relpath else redact_url(self.url)
        if isinstance(exc, TimeoutError):  # a stalled request, or a reply that stopped mid-body
            return OutputError(
                f"cannot read {where}: the object store sent nothing for the --stall-timeout "
                f"({type(exc).__name__}: {exc}); check the endpoint and the network to it"
            )
        return OutputError(f"cannot read {where}: {type(exc).__name__}: {exc}")

    def remove(self, relpath: str) -> bool:
        """Best effort (a failed run's clean-up); False if it could not be removed."""
        try:
            self.fs.rm_file(self.path(relpath))
        except FileNotFoundError:
            return True
        except FAILURES:
            return False
        return True

    def remove_dir_if_empty(self, relpath: str) -> None:
        """The folder, if nothing but empty folders is left in it (a failed run's, locally)."""
        if not self.local:
            return
        for folder, _, _ in os.walk(self.path(relpath), topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # refused while it holds anything


def _folders_of(relpath: str) -> list[str]:
    """The folders above a file, 'run/t/t.jsonl' -> ['run', 'run/t']."""
    parts = relpath.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]
