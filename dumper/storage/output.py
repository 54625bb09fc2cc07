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

from ..core.config import Settings, redact_url
from ..core.errors import ConfigError, OutputError, OutputStalled

CHUNK = 1 << 20
READ_RANGE = 8 << 20  # bytes per GET when reading back from an object store
MIB = 1 << 20
MAX_PART = 5 * 1024 * MIB  # S3's largest part
PARTS_PER_STEP = 1000  # part size doubles every 1000 parts (see part_size)
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


def part_size(base: int, parts_done: int) -> int:
    """The next part's size: doubles every PARTS_PER_STEP parts, never above S3's
    largest part; S3's 10,000 parts then hold ~13.9 TB at a 16 MiB base."""
    return min(MAX_PART, base << (parts_done // PARTS_PER_STEP))


def private_file(path: str) -> int:
    """A new file only its owner can read (0600 whatever the umask), never an
    existing file and never through a symlink; returns the descriptor."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def _bounded_s3(stall_timeout: float, options: dict[str, Any]) -> Any:
    """An s3fs filesystem whose every request ends after `stall_timeout` seconds.

    aiohttp's read timeout does not cover a peer that stops reading what we
    send, so an upload into a zero TCP window would wait forever. The bound is
    applied on fsspec's own event loop, so the stalled request is cancelled
    (its connection closed) rather than left running in a thread; an abort
    that follows goes over a new connection.
    """
    import s3fs
    from fsspec.asyn import sync_wrapper

    class BoundedS3FileSystem(s3fs.S3FileSystem):  # type: ignore[misc]
        async def _call_s3(self, method: str, *args: Any, **kwargs: Any) -> Any:
            call = super()._call_s3(method, *args, **kwargs)
            if not stall_timeout:
                return await call
            try:
                return await asyncio.wait_for(call, stall_timeout)
            except TimeoutError:
                raise OutputStalled(f"S3 {method} made no progress for {stall_timeout:g} s") from None

        # s3fs binds its blocking twin (used by file uploads) to the base class's coroutine.
        call_s3 = sync_wrapper(_call_s3)

    owner = options.pop("expected_bucket_owner", None)
    if owner:
        options["session"] = _owner_checking_session(owner)
    return BoundedS3FileSystem(**options)


def _owner_checking_session(owner: str) -> Any:
    """An AWS SDK session whose every S3 call that can carry ExpectedBucketOwner
    does (also the region look-ups s3fs makes on its own): S3 refuses the call
    when another account owns the bucket, e.g. one deleted and re-created."""
    from aiobotocore.session import AioSession

    def add_owner(params: dict[str, Any], model: Any, **_: Any) -> None:
        if "ExpectedBucketOwner" in model.input_shape.members:
            params.setdefault("ExpectedBucketOwner", owner)

    session = AioSession()
    session.register("before-parameter-build.s3", add_owner)
    return session


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
        # A reply that stops mid-body (a download) is bounded here: aiohttp's read timeout.
        "config_kwargs": {
            "retries": {"max_attempts": 3, "mode": "standard"},
            "connect_timeout": 10,
            "read_timeout": min(settings.stall_timeout or 60.0, 60.0),
        },
        "skip_instance_cache": True,
        "expected_bucket_owner": settings.s3_expected_bucket_owner,
    }


class TableFile:
    """One output file in progress: write, then commit or discard."""

    def __init__(self, output: Output, relpath: str, part_size: int, exclusive: bool = True) -> None:
        self._output = output
        self.final = output.path(relpath)
        self._local = output.local
        head, _, name = self.final.rpartition("/")
        # The temporary name is hidden and says what it is, should a kill -9 leave it behind.
        self._target = f"{head}/.{name}.{secrets.token_hex(4)}.partial" if self._local else self.final
        self._part_size = part_size * MIB
        self._busy: asyncio.Future[Any] | None = None
        if self._local:
            self._file: Any = output.guard(lambda: os.fdopen(private_file(self._target), "wb"), self.final)
        else:
            # "xb": the upload completes with If-None-Match: *, so it never replaces an object
            mode = "xb" if exclusive else "wb"
            self._file = output.guard(
                lambda: output.fs.open(self._target, mode, block_size=self._part_size), self.final
            )

    async def _blocking(self, action: Callable[[], T]) -> T:
        """Run a blocking object-store call in a thread; remember it until done."""
        self._busy = asyncio.ensure_future(asyncio.to_thread(self._output.guard, action, self.final))
        return await asyncio.shield(self._busy)

    async def write(self, data: bytes | bytearray) -> None:
        if not data:
            return
        if self._local:
            self._output.guard(lambda: self._file.write(data), self.final)
            return
        await self._blocking(lambda: self._file.write(data))
        self._file.blocksize = part_size(self._part_size, len(getattr(self._file, "parts", None) or ()))

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
    def __init__(
        self, url: str, options: dict[str, Any] | None = None, part_size: int = 16, stall_timeout: float = 0.0
    ) -> None:
        shown = redact_url(url)  # user:password@ or a query string never reach a log or an error
        protocol = url.split("://", 1)[0] if "://" in url else "file"
        if protocol not in fsspec.available_protocols():
            raise ConfigError(
                f"--output: {shown!r}: unknown protocol {protocol!r}; use a local path, s3:// or another fsspec URL"
            )
        try:
            if url.startswith(("s3://", "s3a://")):
                self.fs = _bounded_s3(stall_timeout, options or {})
                root = self.fs._strip_protocol(url)
            else:
                self.fs, root = fsspec.core.url_to_fs(url, **(options or {}))
        except Exception as exc:  # any backend, any failure: said without the URL's secrets
            text = str(exc).replace(url, shown)
            raise ConfigError(f"--output: cannot use {shown!r}: {type(exc).__name__}: {text}") from None
        self.local = isinstance(self.fs, LocalFileSystem)
        self.s3 = protocol in ("s3", "s3a")
        if hasattr(self.fs, "retries"):
            self.fs.retries = 3  # s3fs's own retries, on top of botocore's (default 5)
        self.root = root.rstrip("/")
        self.url = url
        self.part_size = part_size
        self.protocol = url.split("://", 1)[0] if "://" in url else "file"

    @classmethod
    def for_settings(cls, settings: Settings) -> Output:
        return cls(settings.output, storage_options(settings), settings.part_size, settings.stall_timeout)

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
        if self.protocol in ("s3", "s3a"):
            bucket = what.split("/", 1)[0]
            if "KMS" in text or "kms" in text:
                return (
                    f"cannot write {where}: KMS refused the key ({text}); the role needs "
                    "kms:GenerateDataKey (and kms:Decrypt for multipart uploads) on the "
                    "--s3-kms-key-id key"
                )
            if isinstance(exc, PermissionError):
                return (
                    f"access denied writing {where} ({text}); the role needs s3:PutObject, "
                    f"s3:AbortMultipartUpload and s3:ListBucket on bucket {bucket} (deploy/iam/policy.json)"
                )
            if isinstance(exc, FileNotFoundError):
                return f"cannot write {where}: bucket {bucket!r} does not exist ({text}); check --output"
        return f"cannot write {where}: {text}"

    def make_run_dir(self, relpath: str) -> None:
        """Create the run folder, which must not exist yet, and prove it is
        writable (fails fast, before any table). Locally it is private (0700):
        a folder someone made in advance (run ids are guessable) is refused."""
        path = self.path(relpath)
        taken = ConfigError(
            f"--run-id: {self.url_of(relpath)} already exists: a run writes only into a "
            "folder it creates itself, never over another run (choose another run id)"
        )
        if self.local:
            self.guard(lambda: os.makedirs(self.root, mode=0o700, exist_ok=True), self.root)
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                raise taken from None
            except OSError as exc:
                raise OutputError(self._explain(exc, path)) from exc
            os.chmod(path, 0o700)  # whatever the umask
        elif self._holds_objects(path) if self.s3 else self.guard(lambda: self.fs.exists(path), path):
            raise taken
        probe = self.path(f"{relpath}/.dumper-write-probe")
        if self.local:
            self.guard(lambda: os.close(private_file(probe)), probe)
            self.guard(lambda: os.unlink(probe), probe)
        elif not self.s3:
            self.guard(lambda: self.fs.pipe_file(probe, b"probe\n"), probe)
            self.guard(lambda: self.fs.rm_file(probe), probe)
        else:  # a multipart upload started and aborted: proves the write right, needs no delete right
            bucket, key, _ = self.fs.split_path(probe)
            upload = self.guard(lambda: self.fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key), probe)
            self.guard(
                lambda: self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload["UploadId"]),
                probe,
            )

    def _holds_objects(self, path: str) -> bool:
        """Whether any object is under the prefix `path/` (a listing: needs only s3:ListBucket)."""
        bucket, key, _ = self.fs.split_path(path)
        found = self.guard(lambda: self.fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=key + "/", MaxKeys=1), path)
        return bool(found.get("KeyCount"))

    def open_table(self, relpath: str, exclusive: bool = True) -> TableFile:
        return TableFile(self, relpath, self.part_size, exclusive)

    async def put(self, relpath: str, data: bytes, exclusive: bool = True) -> None:
        """Write a small file atomically (manifest; LATEST, which replaces the last one)."""
        table_file = self.open_table(relpath, exclusive)
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
            raise self.reading_error(exc, relpath) from exc

    def chunks(self, relpath: str) -> Iterator[bytes] | None:
        if not self.exists(relpath):
            return None
        return self._iter_chunks(self.path(relpath))

    def _iter_chunks(self, path: str) -> Iterator[bytes]:
        if self.local:  # never through a symlink: verify reads only what the run wrote
            with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
                while chunk := f.read(CHUNK):
                    yield chunk
            return
        # Ranged GETs, not fsspec's file object: s3fs's file read crashes on a read
        # timeout (IndexError on the error's args) instead of raising it.
        size = int(self.fs.info(path)["size"])
        for start in range(0, size, READ_RANGE):
            data = self.fs.cat_file(path, start=start, end=min(start + READ_RANGE, size))
            for at in range(0, len(data), CHUNK):
                yield data[at : at + CHUNK]

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
        path = self.path(relpath)
        with contextlib.suppress(OSError):
            if self.local and not self.fs.ls(path):
                self.fs.rmdir(path)
