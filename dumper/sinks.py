"""Where files go: a local directory or any fsspec URL (s3:// through s3fs),
written atomically.

A table file becomes visible under its final name only when complete:
locally it is written as '.<name>.<random>.partial', fsynced and renamed; on
object stores the upload is the unit: a multipart upload that is completed,
or aborted on any failure, so no partial object and no pending upload stays.
Object-store calls block, so they run in a worker thread, never on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .config import Settings
from .errors import OutputError

CHUNK = 1 << 20
MIB = 1 << 20
MAX_PART = 5 * 1024 * MIB  # S3's largest part
PARTS_PER_STEP = 1000  # part size doubles every 1000 parts: 10,000 parts hold ~1M x --part-size
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


def storage_options(settings: Settings) -> dict[str, Any]:
    """fsspec options for the output URL's protocol (only s3:// has any)."""
    if not settings.output.startswith(("s3://", "s3a://")):
        return {}
    extra: dict[str, str] = {}
    if settings.s3_sse != "none":
        extra["ServerSideEncryption"] = settings.s3_sse
    if settings.s3_kms_key_id:
        extra["SSEKMSKeyId"] = settings.s3_kms_key_id
    if settings.s3_storage_class:
        extra["StorageClass"] = settings.s3_storage_class
    client: dict[str, Any] = {}
    if settings.s3_region:
        client["region_name"] = settings.s3_region
    return {
        "endpoint_url": settings.s3_endpoint_url,
        "s3_additional_kwargs": extra,
        "client_kwargs": client,
        "cache_regions": not settings.s3_region,
        # A dying endpoint must fail the run in seconds, not retry for many minutes.
        "config_kwargs": {"retries": {"max_attempts": 3, "mode": "standard"},
                          "connect_timeout": 10, "read_timeout": 60},
        "skip_instance_cache": True,
    }


class TableFile:
    """One output file in progress: write, then commit or discard."""

    def __init__(self, output: Output, relpath: str, part_size: int) -> None:
        self._output = output
        self.final = output.path(relpath)
        self._local = output.local
        head, _, name = self.final.rpartition("/")
        # The temporary name is hidden and says what it is, should a kill -9 leave it behind.
        self._target = f"{head}/.{name}.{secrets.token_hex(4)}.partial" if self._local else self.final
        self._part_size = part_size * MIB
        self._busy: asyncio.Future[Any] | None = None
        options = {} if self._local else {"block_size": self._part_size}
        self._file: Any = output.guard(lambda: output.fs.open(self._target, "wb", **options), self.final)

    async def _blocking(self, action: Callable[[], T]) -> T:
        """Run a blocking object-store call in a thread; remember it until done."""
        self._busy = asyncio.ensure_future(asyncio.to_thread(self._output.guard, action, self.final))
        return await asyncio.shield(self._busy)

    async def write(self, data: bytes) -> None:
        if not data:
            return
        if self._local:
            self._output.guard(lambda: self._file.write(data), self.final)
            return
        await self._blocking(lambda: self._file.write(data))
        parts = len(getattr(self._file, "parts", None) or ())
        self._file.blocksize = min(MAX_PART, self._part_size << (parts // PARTS_PER_STEP))

    async def commit(self) -> None:
        if self._local:
            def finish() -> None:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                os.replace(self._target, self.final)
            self._output.guard(finish, self.final)
        else:
            await self._blocking(self._file.close)  # completes the multipart upload

    async def discard(self) -> None:
        """Best effort, never raises: used while another error is on its way out."""
        try:
            if self._local:
                self._file.close()
                os.unlink(self._target)
                return
            if self._busy is not None and not self._busy.done():
                await asyncio.wait([self._busy], timeout=120)  # a part in flight, then abort
            await asyncio.to_thread(self._file.discard)  # aborts the multipart upload
            self._file.closed = True  # or fsspec's __del__ would try to upload the rest
        except (Exception, asyncio.CancelledError):  # noqa: S110 - must not hide the original error
            pass


class Output:
    def __init__(self, url: str, options: dict[str, Any] | None = None, part_size: int = 16) -> None:
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **(options or {}))
        except (ImportError, ValueError) as exc:
            raise OutputError(f"--output: cannot use {url!r}: {exc}") from None
        self.local = isinstance(self.fs, LocalFileSystem)
        if hasattr(self.fs, "retries"):
            self.fs.retries = 3  # s3fs's own retries, on top of botocore's (default 5)
        self.root = root.rstrip("/")
        self.url = url
        self.part_size = part_size
        self.protocol = url.split("://", 1)[0] if "://" in url else "file"

    @classmethod
    def for_settings(cls, settings: Settings) -> Output:
        return cls(settings.output, storage_options(settings), settings.part_size)

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
        if self.protocol in ("s3", "s3a"):
            bucket = what.split("/", 1)[0]
            if "KMS" in text or "kms" in text:
                return (f"cannot write {where}: KMS refused the key ({text}); the role needs "
                        "kms:GenerateDataKey (and kms:Decrypt for multipart uploads) on the "
                        "--s3-kms-key-id key")
            if isinstance(exc, PermissionError):
                return (f"access denied writing {where} ({text}); the role needs s3:PutObject, "
                        f"s3:AbortMultipartUpload, s3:DeleteObject and s3:ListBucket on bucket {bucket}")
            if isinstance(exc, FileNotFoundError):
                return f"cannot write {where}: bucket {bucket!r} does not exist ({text}); check --output"
        return f"cannot write {where}: {text}"

    def make_dir(self, relpath: str) -> None:
        """Create the run folder and prove it is writable (fails fast, before any table)."""
        if self.local:
            self.guard(lambda: self.fs.makedirs(self.path(relpath), exist_ok=True), self.path(relpath))
        probe = f"{relpath}/.dumper-write-probe"
        self.guard(lambda: self.fs.pipe_file(self.path(probe), b"probe\n"), self.path(probe))
        self.guard(lambda: self.fs.rm_file(self.path(probe)), self.path(probe))

    def open_table(self, relpath: str) -> TableFile:
        return TableFile(self, relpath, self.part_size)

    async def put(self, relpath: str, data: bytes) -> None:
        """Write a small file atomically (manifest, LATEST)."""
        table_file = self.open_table(relpath)
        try:
            await table_file.write(data)
            await table_file.commit()
        except BaseException:
            await table_file.discard()
            raise

    def exists(self, relpath: str) -> bool:
        return bool(self.guard(lambda: self.fs.exists(self.path(relpath)), self.path(relpath)))

    def read(self, relpath: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(self.path(relpath)))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise OutputError(f"cannot read {self.url_of(relpath)}: {exc}") from exc

    def chunks(self, relpath: str) -> Iterator[bytes] | None:
        if not self.exists(relpath):
            return None
        return self._iter_chunks(self.path(relpath))

    def _iter_chunks(self, path: str) -> Iterator[bytes]:
        with self.fs.open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk

    def remove(self, relpath: str) -> None:
        with contextlib.suppress(OSError):
            self.fs.rm_file(self.path(relpath))

    def remove_dir_if_empty(self, relpath: str) -> None:
        path = self.path(relpath)
        with contextlib.suppress(OSError):
            if self.local and not self.fs.ls(path):
                self.fs.rmdir(path)
