"""S3 through s3fs: the file system (every request bounded, the bucket owner
checked), its options from the settings, the write probe and what its errors
mean to an operator."""

from __future__ import annotations

import asyncio
from typing import Any

from ..core.errors import OutputStalled
from ..core.settings import Settings

PROTOCOLS = ("s3", "s3a")


def is_s3(url: str) -> bool:
    return url.split("://", 1)[0] in PROTOCOLS if "://" in url else False


def filesystem(stall_timeout: float, options: dict[str, Any]) -> Any:
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

    options = dict(options)
    owner = options.pop("expected_bucket_owner", None)
    if owner:
        options["session"] = _owner_checking_session(owner)
    fs = BoundedS3FileSystem(**options)
    fs.retries = 3  # s3fs's own retries, on top of botocore's (default 5)
    return fs


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
    """s3fs's options from the settings (the --s3-* options)."""
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


def holds_objects(fs: Any, path: str) -> bool:
    """Whether any object is under the prefix `path/` (a listing: needs only s3:ListBucket)."""
    bucket, key, _ = fs.split_path(path)
    found = fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=key + "/", MaxKeys=1)
    return bool(found.get("KeyCount"))


def probe(fs: Any, path: str) -> None:
    """A multipart upload started and aborted: proves the write right, needs no delete right."""
    bucket, key, _ = fs.split_path(path)
    upload = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)
    fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload["UploadId"])


def explain(exc: BaseException, where: str, bucket: str) -> str | None:
    """What a failed write means on S3, or None when nothing S3-specific applies."""
    text = str(exc) or type(exc).__name__
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
    return None
