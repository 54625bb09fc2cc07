"""S3 output against moto's real HTTP S3 endpoint: streamed multipart uploads,
atomic objects, manifest last, verify, and failures that leave nothing behind."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import time
from typing import Any

import boto3
import fsspec
import pytest

from devtools.cutting_proxy import CuttingProxy
from dumper import cli

from .conftest import BUCKET, Database, Moto
from .test_memory import peak_rss_mb

MIB = 1 << 20


def s3_env(moto: Moto, **extra: str) -> dict[str, str]:
    return {"DUMPER_OUTPUT": f"s3://{BUCKET}/nightly", "DUMPER_S3_ENDPOINT_URL": moto.endpoint,
            "DUMPER_PART_SIZE": "5", **extra}


def keys(client: Any, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def pending_uploads(client: Any) -> list[str]:
    return [u["Key"] for u in client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])]


def body(client: Any, key: str) -> bytes:
    return bytes(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def big_table(db: Database, rows: int = 200_000) -> None:
    # ~180 bytes of poorly compressible JSON per row: ~36 MB, several 5 MiB parts even gzipped.
    db.sql(f"CREATE TABLE big AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS a, "
           f"md5((g * 13)::text) || md5((g * 17)::text) AS b FROM generate_series(1, {rows}) g;"
           "CREATE TABLE small (id int, note text); INSERT INTO small VALUES (1, 'x'), (2, NULL);")


@pytest.mark.parametrize("fmt,compression", [("jsonl", "none"), ("json", "gzip")])
def test_s3_objects_equal_the_local_files(db: Database, s3: Any, moto: Moto, fmt: str,
                                          compression: str) -> None:
    big_table(db)
    args = ("--run-id", "r1", "--format", fmt, "--compression", compression, "--gzip-level", "1")
    remote = db.dump(*args, env=s3_env(moto))
    assert remote.code == 0, remote.stderr
    local = db.dump(*args)
    assert local.code == 0, local.stderr
    manifest = local.manifest()
    assert keys(s3) == sorted(["nightly/LATEST", "nightly/r1/manifest.json"]
                              + [f"nightly/r1/{t['path']}" for t in manifest["tables"]])
    remote_manifest = cli.parse(body(s3, "nightly/r1/manifest.json"))  # type: ignore[attr-defined]
    for t, r in zip(manifest["tables"], remote_manifest["tables"], strict=True):
        assert body(s3, f"nightly/r1/{t['path']}") == (local.run_dir / t["path"]).read_bytes()
        assert (r["sha256"], r["bytes"], r["rows"]) == (t["sha256"], t["bytes"], t["rows"])
    etag = s3.head_object(Bucket=BUCKET, Key=f"nightly/r1/{manifest['tables'][0]['path']}")["ETag"]
    assert int(etag.strip('"').rsplit("-", 1)[1]) >= 3, "the big table went up in several parts"
    assert body(s3, "nightly/LATEST") == b"r1\n"
    assert pending_uploads(s3) == []


def _verify(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(["verify", *args], {}, stdout=out)
    return code, out.getvalue()


@pytest.mark.slow
def test_s3_upload_memory_stays_bounded(db: Database, s3: Any, moto: Moto) -> None:
    """~300 MB through 16 MiB parts (the default): the parts' buffers are
    returned to the OS, so peak RSS stays under 150 MB (211 MB without)."""
    db.sql("CREATE TABLE t AS SELECT g AS id, md5(g::text) || repeat('x', 200) AS pad "
           "FROM generate_series(1, 1000000) g;")
    aws = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    peak = peak_rss_mb(db, "--jobs", "1", env={**s3_env(moto, DUMPER_PART_SIZE="16"), **aws})
    assert len(keys(s3)) == 3, "table, manifest and LATEST were uploaded"
    assert peak < 150, f"S3 upload peaked at {peak:.0f} MB"


def test_verify_reads_s3(db: Database, s3: Any, moto: Moto) -> None:
    big_table(db, 1000)
    assert db.dump("--run-id", "r1", env=s3_env(moto)).code == 0
    url = f"s3://{BUCKET}/nightly/r1"
    code, out = _verify(url, "--s3-endpoint-url", moto.endpoint)
    assert code == 0 and "OK" in out and "1,002 rows" in out
    s3.put_object(Bucket=BUCKET, Key="nightly/r1/public.small.jsonl", Body=b'{"id":1}\n')
    code, out = _verify(url, "--s3-endpoint-url", moto.endpoint)
    assert code == 7 and "MISMATCH public.small (public.small.jsonl)" in out


def test_encryption_and_storage_class_are_applied(db: Database, s3: Any, moto: Moto) -> None:
    big_table(db, 1000)
    kms = boto3.client("kms", endpoint_url=moto.endpoint, region_name="us-east-1")
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    result = db.dump("--run-id", "k", "--s3-sse", "aws:kms", "--s3-kms-key-id", key_id,
                     "--s3-storage-class", "STANDARD_IA", env=s3_env(moto))
    assert result.code == 0, result.stderr
    head = s3.head_object(Bucket=BUCKET, Key="nightly/k/public.big.jsonl")
    assert head["ServerSideEncryption"] == "aws:kms" and key_id in head["SSEKMSKeyId"]
    assert head["StorageClass"] == "STANDARD_IA"
    result = db.dump("--run-id", "a", "--s3-sse", "AES256", env=s3_env(moto))
    assert s3.head_object(Bucket=BUCKET, Key="nightly/a/manifest.json")["ServerSideEncryption"] == "AES256"


def test_part_size_grows_to_stay_under_the_part_limit(db: Database, s3: Any, moto: Moto,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from dumper import sinks
    monkeypatch.setattr(sinks, "PARTS_PER_STEP", 2)  # double every 2 parts instead of every 1000
    big_table(db, 300_000)
    result = db.dump("--run-id", "g", env=s3_env(moto))
    assert result.code == 0, result.stderr
    key = "nightly/g/public.big.jsonl"
    sizes = [s3.head_object(Bucket=BUCKET, Key=key, PartNumber=n)["ContentLength"] for n in (1, 2, 3, 4)]
    assert 5 * MIB <= sizes[0] < 10 * MIB and 5 * MIB <= sizes[1] < 10 * MIB
    assert 10 * MIB <= sizes[2] < 20 * MIB, f"part 3 should be twice the size: {sizes}"


def test_missing_bucket_fails_fast_naming_it(db: Database, s3: Any, moto: Moto) -> None:
    big_table(db, 10)
    result = db.dump(env=s3_env(moto, DUMPER_OUTPUT="s3://no-such-bucket/x"))
    assert result.code == 6
    assert "bucket 'no-such-bucket' does not exist" in result.stderr
    assert '"event":"started"' not in result.stdout, "fails before reading any table"


def test_access_denied_names_the_bucket_and_the_permissions(db: Database, s3: Any, moto: Moto,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """moto enforces IAM policies inside enable_iam_authentication(): a user who may
    only read the bucket gets S3's real AccessDenied on the write probe."""
    from moto.core import enable_iam_authentication

    big_table(db, 10)
    iam = boto3.client("iam", endpoint_url=moto.endpoint, region_name="us-east-1")
    iam.create_user(UserName="reader")
    iam.put_user_policy(UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}]}))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    with enable_iam_authentication():
        result = db.dump(env=s3_env(moto))
    assert result.code == 6, result.stderr
    assert "access denied writing s3://dumps/nightly/" in result.stderr
    assert "s3:PutObject" in result.stderr and "on bucket dumps" in result.stderr
    assert '"event":"started"' not in result.stdout, "fails before reading any table"
    assert keys(s3) == []


def test_other_fsspec_urls_work(db: Database) -> None:
    big_table(db, 100)
    result = db.dump(env={"DUMPER_OUTPUT": "memory://dumps", "DUMPER_RUN_ID": "m"})
    assert result.code == 0, result.stderr
    fs = fsspec.filesystem("memory")
    assert fs.cat_file("/dumps/LATEST") == b"m\n"
    assert fs.cat_file("/dumps/m/public.small.jsonl") == b'{"id":1,"note":"x"}\n{"id":2,"note":null}\n'


def _nothing_left(s3: Any) -> None:
    assert keys(s3) == [], "a failed run leaves no object (and no manifest)"
    assert pending_uploads(s3) == [], "every multipart upload was aborted"


def test_s3_endpoint_failing_mid_upload_leaves_nothing(db: Database, s3: Any, moto: Moto) -> None:
    big_table(db)
    host, port = moto.endpoint.removeprefix("http://").split(":")
    proxy = CuttingProxy(host, int(port), cut_after=2 * MIB).start()  # parts are 5 MiB
    try:
        result = db.dump(env=s3_env(moto, DUMPER_S3_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}"))
    finally:
        proxy.stop()
    assert proxy.cuts > 0
    assert result.code == 6, result.stdout[-3000:] + result.stderr
    assert "cannot write s3://dumps/nightly/" in result.stderr and "public.big" in result.stderr
    _nothing_left(s3)


def _dump_until_an_upload_is_pending(db: Database, s3: Any, moto: Moto) -> subprocess.Popen[str]:
    """Start the real CLI in a subprocess; return once the big table's upload is under way."""
    big_table(db, 600_000)
    proc = db.spawn("run", env={**s3_env(moto), "AWS_ACCESS_KEY_ID": "testing",
                                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                                "AWS_EC2_METADATA_DISABLED": "true"})
    deadline = time.monotonic() + 60
    while not pending_uploads(s3):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"no upload started: {proc.communicate()}")
        time.sleep(0.05)
    return proc


def test_database_dying_mid_table_leaves_nothing_on_s3(db: Database, s3: Any, moto: Moto) -> None:
    """The database goes away for good (no new connections): retries cannot heal it."""
    proc = _dump_until_an_upload_is_pending(db, s3, moto)
    try:
        db.cluster.psql(f"ALTER DATABASE {db.name} ALLOW_CONNECTIONS false")
        killed = db.cluster.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 f"WHERE datname = '{db.name}' AND application_name LIKE 'dumper/%'")
        assert "t" in killed.split(), "the dumper's backends were found"
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 3, stdout[-1500:] + stderr
    assert "is not currently accepting connections" in stderr
    assert "connection lost; reading the rest again in the same snapshot" in stdout
    _nothing_left(s3)


def test_sigterm_aborts_the_upload(db: Database, s3: Any, moto: Moto) -> None:
    proc = _dump_until_an_upload_is_pending(db, s3, moto)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    _nothing_left(s3)
