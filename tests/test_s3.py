"""S3 output against moto's real HTTP S3 endpoint: streamed multipart uploads,
atomic objects, manifest last, verify, and failures that leave nothing behind."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import boto3
import fsspec
import pytest

from devtools.cutting_proxy import CuttingProxy, http_requests
from dumper import cli

from .conftest import BUCKET, ROOT, Database, Moto, wait_until
from .holds import ReplyHold, replies_held, within
from .test_memory import peak_rss_mb

MIB = 1 << 20


def s3_env(moto: Moto, **extra: str) -> dict[str, str]:
    return {
        "DUMPER_OUTPUT": f"s3://{BUCKET}/nightly",
        "DUMPER_S3_ENDPOINT_URL": moto.endpoint,
        "DUMPER_PART_SIZE": "5",
        **extra,
    }


def keys(client: Any, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def pending_uploads(client: Any) -> list[str]:
    return [u["Key"] for u in client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])]


def body(client: Any, key: str) -> bytes:
    return bytes(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def big_table(db: Database, rows: int = 200_000) -> None:
    # ~180 bytes of poorly compressible JSON per row: ~36 MB, several 5 MiB parts even gzipped.
    db.sql(
        f"CREATE TABLE big AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS a, "
        f"md5((g * 13)::text) || md5((g * 17)::text) AS b FROM generate_series(1, {rows}) g;"
        "CREATE TABLE small (id int, note text); INSERT INTO small VALUES (1, 'x'), (2, NULL);"
    )


@pytest.mark.parametrize("fmt,compression", [("jsonl", "none"), ("json", "gzip")])
def test_s3_objects_equal_the_local_files(db: Database, s3: Any, moto: Moto, fmt: str, compression: str) -> None:
    big_table(db)
    args = ("--run-id", "r1", "--format", fmt, "--compression", compression, "--gzip-level", "1")
    remote = db.dump(*args, env=s3_env(moto))
    assert remote.code == 0, remote.stderr
    local = db.dump(*args)
    assert local.code == 0, local.stderr
    manifest = local.manifest()
    schema = ["nightly/r1/schema.pre-data.sql", "nightly/r1/schema.post-data.sql"]
    assert keys(s3) == sorted(
        ["nightly/LATEST", "nightly/r1/manifest.json", *schema]
        + [f"nightly/r1/{t['path']}" for t in manifest["tables"]]
    )
    remote_manifest = json.loads(body(s3, "nightly/r1/manifest.json"))
    for listed in remote_manifest["schema_files"]["files"]:
        stored = body(s3, f"nightly/r1/{listed['path']}")
        assert (hashlib.sha256(stored).hexdigest(), len(stored)) == (listed["sha256"], listed["bytes"])
    assert b"CREATE TABLE public.big (" in body(s3, schema[0])
    for t, r in zip(manifest["tables"], remote_manifest["tables"], strict=True):
        stored = body(s3, f"nightly/r1/{t['path']}")
        assert (hashlib.sha256(stored).hexdigest(), len(stored)) == (r["sha256"], r["bytes"]), "as the manifest says"
        # The same content; gzip bytes may differ: ISA-L's output depends on how the batches of a split
        # table were grouped when written, which depends on timing (the decompressed bytes never do).
        content = gzip.decompress(stored) if compression == "gzip" else stored
        want = (local.run_dir / t["path"]).read_bytes()
        want = gzip.decompress(want) if compression == "gzip" else want
        assert hashlib.sha256(content).digest() == hashlib.sha256(want).digest(), t["path"]
        assert r["rows"] == t["rows"]
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
    db.sql(
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) || repeat('x', 200) AS pad FROM generate_series(1, 1000000) g;"
    )
    aws = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    peak = peak_rss_mb(db, "--jobs", "1", env={**s3_env(moto, DUMPER_PART_SIZE="16"), **aws})
    assert len(keys(s3)) == 5, "table, two schema files, manifest and LATEST were uploaded"
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
    result = db.dump(
        "--run-id",
        "k",
        "--s3-sse",
        "aws:kms",
        "--s3-kms-key-id",
        key_id,
        "--s3-storage-class",
        "STANDARD_IA",
        env=s3_env(moto),
    )
    assert result.code == 0, result.stderr
    head = s3.head_object(Bucket=BUCKET, Key="nightly/k/public.big.jsonl")
    assert head["ServerSideEncryption"] == "aws:kms" and key_id in head["SSEKMSKeyId"]
    assert head["StorageClass"] == "STANDARD_IA"
    result = db.dump("--run-id", "a", "--s3-sse", "AES256", env=s3_env(moto))
    assert result.code == 0, result.stderr
    assert s3.head_object(Bucket=BUCKET, Key="nightly/a/manifest.json")["ServerSideEncryption"] == "AES256"


def test_part_size_grows_to_stay_under_the_part_limit(
    db: Database, s3: Any, moto: Moto, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dumper.storage import remote

    monkeypatch.setattr(remote, "PARTS_PER_STEP", 2)  # double every 2 parts instead of every 1000
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


def test_access_denied_names_the_bucket_and_the_permissions(
    db: Database, s3: Any, moto: Moto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto enforces IAM policies inside enable_iam_authentication(): a user who may
    only read the bucket gets S3's real AccessDenied on the write probe."""
    from moto.core import enable_iam_authentication

    big_table(db, 10)
    iam = boto3.client("iam", endpoint_url=moto.endpoint, region_name="us-east-1")
    iam.create_user(UserName="reader")
    iam.put_user_policy(
        UserName="reader",
        PolicyName="read-only",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}],
            }
        ),
    )
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


def test_kms_refusing_the_key_is_said_with_the_permissions(db: Database, s3: Any, moto: Moto) -> None:
    """moto does not check KMS keys; a real S3 endpoint in front of it answers an
    SSE-KMS write as S3 does when the role may not use the key."""
    from .http_capture import kms_refusing_s3

    big_table(db, 10)
    with kms_refusing_s3(moto.endpoint) as front:
        result = db.dump(
            env=s3_env(
                moto, DUMPER_S3_ENDPOINT_URL=front.url, DUMPER_S3_SSE="aws:kms", DUMPER_S3_KMS_KEY_ID="alias/dumper"
            )
        )
    assert result.code == 6, result.stderr
    assert "KMS refused the key" in result.stderr and "kms:GenerateDataKey" in result.stderr
    assert "--s3-kms-key-id" in result.stderr
    assert any(r.headers.get("x-amz-server-side-encryption") == "aws:kms" for r in front.requests)
    assert '"event":"started"' not in result.stdout, "fails before reading any table"
    assert keys(s3) == [] and pending_uploads(s3) == []


def test_other_fsspec_urls_work(db: Database) -> None:
    big_table(db, 100)
    fs = fsspec.filesystem("memory")
    try:
        result = db.dump(env={"DUMPER_OUTPUT": "memory://dumps", "DUMPER_RUN_ID": "m"})
        assert result.code == 0, result.stderr
        assert fs.cat_file("/dumps/LATEST") == b"m\n"
        assert fs.cat_file("/dumps/m/public.small.jsonl") == b'{"id":1,"note":"x"}\n{"id":2,"note":null}\n'
    finally:
        fs.rm("/dumps", recursive=True)  # the memory store lives as long as the test session


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


@contextlib.contextmanager
def _dump_with_an_upload_pending(
    db: Database, s3: Any, moto: Moto
) -> Iterator[tuple[subprocess.Popen[str], ReplyHold]]:
    """The real CLI in a subprocess, held part way through the big table (tests/holds.py) once
    more than a part's worth of it was read: its multipart upload is under way, and stays so."""
    big_table(db, 200_000)  # ~36 MB of JSON
    with replies_held(db, after=16 * MIB) as hold:  # ~16 MB of rows: a 5 MiB part or more is up
        proc = db.spawn(
            "run",
            "--jobs",
            "1",
            *hold.args,
            env={
                **s3_env(moto),
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true",
            },
        )
        hold.wait()
        wait_until(lambda: any(key.endswith("public.big.jsonl") for key in pending_uploads(s3)))  # not a schema file's
        yield proc, hold


def test_database_dying_mid_table_leaves_nothing_on_s3(db: Database, s3: Any, moto: Moto) -> None:
    """The database goes away for good (no new connections): retries cannot heal it."""
    with _dump_with_an_upload_pending(db, s3, moto) as (proc, hold):
        db.cluster.psql(f"ALTER DATABASE {db.name} ALLOW_CONNECTIONS false")
        killed = db.cluster.psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{db.name}' AND application_name LIKE 'dumper/%'"
        )
        assert "t" in killed.split(), "the dumper's backends were found"
        hold.release()
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 3, stdout[-1500:] + stderr
    assert "is not currently accepting connections" in stderr
    assert "connection lost; reading the rest again in the same snapshot" in stdout
    _nothing_left(s3)


def test_sigterm_aborts_the_upload(db: Database, s3: Any, moto: Moto) -> None:
    with _dump_with_an_upload_pending(db, s3, moto) as (proc, _):
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    _nothing_left(s3)


def test_every_request_names_the_expected_bucket_owner_and_run_objects_are_never_replaced(
    db: Database, s3: Any, moto: Moto
) -> None:
    big_table(db, 40_000)  # ~7 MB: a multipart upload at 5 MiB parts
    host, port = moto.endpoint.removeprefix("http://").split(":")
    proxy = CuttingProxy(host, int(port)).start()  # records what the dump sends
    try:
        env = s3_env(
            moto,
            DUMPER_S3_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}",
            DUMPER_S3_EXPECTED_BUCKET_OWNER="123456789012",
        )
        result = db.dump("--run-id", "r1", "--jobs", "1", env=env)
    finally:
        proxy.stop()
    assert result.code == 0, result.stderr
    requests = [r for stream in proxy.sent for r in http_requests(bytes(stream))]
    assert len(requests) >= 8, [line for line, _ in requests]
    for line, headers in requests:
        assert headers.get("x-amz-expected-bucket-owner") == "123456789012", line
    # Objects of the run are created only if absent; LATEST replaces the previous one.
    writes = {
        line.split()[1].split("?")[0].removeprefix(f"/{BUCKET}/"): headers
        for line, headers in requests
        if (line.startswith("PUT ") and "partNumber=" not in line) or (line.startswith("POST ") and "uploadId=" in line)
    }
    assert writes["nightly/r1/public.big.jsonl"].get("if-none-match") == "*"
    assert writes["nightly/r1/public.small.jsonl"].get("if-none-match") == "*"
    assert writes["nightly/r1/manifest.json"].get("if-none-match") == "*"
    assert "if-none-match" not in writes["nightly/LATEST"]
    # An object smaller than a part is one PutObject; a larger one a multipart upload.
    lines = [line for line, _ in requests]
    assert [line for line in lines if "public.small.jsonl" in line] == [
        f"PUT /{BUCKET}/nightly/r1/public.small.jsonl HTTP/1.1"
    ]
    assert any(line.startswith(f"POST /{BUCKET}/nightly/r1/public.big.jsonl?uploads") for line in lines)


def test_a_run_folder_that_holds_an_object_is_refused(db: Database, s3: Any, moto: Moto) -> None:
    big_table(db, 10)
    s3.put_object(Bucket=BUCKET, Key="nightly/r1/someone-elses", Body=b"x")
    result = db.dump("--run-id", "r1", env=s3_env(moto))
    assert result.code == 2, result.stderr
    assert "s3://dumps/nightly/r1 already exists: a run writes only into a folder it creates" in result.stderr
    assert keys(s3) == ["nightly/r1/someone-elses"] and pending_uploads(s3) == []


def test_a_bad_expected_bucket_owner_is_a_usage_error(db: Database, s3: Any, moto: Moto) -> None:
    result = db.dump("--s3-expected-bucket-owner", "12345", env=s3_env(moto))
    assert result.code == 2 and "--s3-expected-bucket-owner: '12345' must be a 12-digit AWS account id" in result.stderr
    assert result.stderr.count("\n") == 1 and keys(s3) == [], "one line, nothing written"


def _user_with_policy(moto: Moto, name: str, policy_file: str) -> dict[str, str]:
    """An IAM user holding a policy from deploy/iam/, bucket and prefix swapped for the test's."""
    text = (ROOT / "deploy" / "iam" / policy_file).read_text()
    doc = json.loads(
        text.replace("my-db-dumps", BUCKET)
        .replace("/app/", "/nightly/")
        .replace('"app/"', '"nightly/"')
        .replace('"app/*"', '"nightly/*"')
    )
    doc["Statement"] = [s for s in doc["Statement"] if str(s["Resource"]).startswith("arn:aws:s3")]
    iam = boto3.client("iam", endpoint_url=moto.endpoint, region_name="us-east-1")
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName=policy_file, PolicyDocument=json.dumps(doc))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


def test_the_shipped_policy_dumps_but_cannot_read_or_delete_history(
    db: Database, s3: Any, moto: Moto, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.core import enable_iam_authentication

    big_table(db, 40_000)
    dumper_keys = _user_with_policy(moto, "dumper", "policy.json")
    for var, value in dumper_keys.items():
        monkeypatch.setenv(var, value)
    with enable_iam_authentication():
        first = db.dump("--run-id", "r1", env=s3_env(moto))
        assert first.code == 0, first.stderr
        # A failed run (the table is gone by the time it reads... here: RLS refuses) cannot delete
        # what it wrote: it says so, writes no manifest, and leaves LATEST alone.
        db.sql(
            "ALTER TABLE small ENABLE ROW LEVEL SECURITY; ALTER TABLE small FORCE ROW LEVEL SECURITY;"
            "CREATE ROLE limited LOGIN PASSWORD 'pw' NOBYPASSRLS; GRANT SELECT ON big, small TO limited;"
            f"GRANT CONNECT ON DATABASE {db.name} TO limited;"
        )
        try:
            failed = db.dump(
                "--run-id", "r2", "--jobs", "1", env={**s3_env(moto), "PGUSER": "limited", "PGPASSWORD": "pw"}
            )
        finally:
            db.sql("DROP OWNED BY limited; DROP ROLE limited;")
        client: Any = boto3.client(
            "s3",
            endpoint_url=moto.endpoint,
            region_name="us-east-1",
            **{
                "aws_access_key_id": dumper_keys["AWS_ACCESS_KEY_ID"],
                "aws_secret_access_key": dumper_keys["AWS_SECRET_ACCESS_KEY"],
            },
        )
        for denied in (client.get_object, client.delete_object):
            with pytest.raises(client.exceptions.ClientError, match="AccessDenied"):
                denied(Bucket=BUCKET, Key="nightly/r1/manifest.json")
        client.close()
    assert failed.code == 4, failed.stderr
    assert "could not remove the files a failed run wrote" in failed.stdout
    assert "nightly/r2/manifest.json" not in keys(s3)
    assert body(s3, "nightly/LATEST") == b"r1\n"
    assert "nightly/r1/manifest.json" in keys(s3)


def test_part_sizes_at_the_real_step_fit_any_table_in_10000_parts() -> None:
    from dumper.storage.remote import MAX_PART, PARTS_PER_STEP, part_size

    base = 16 * MIB
    assert PARTS_PER_STEP == 1000
    assert [part_size(base, n) for n in (0, 999, 1000, 1999, 2000)] == [base, base, 2 * base, 2 * base, 4 * base]
    # 10,000 parts at the default base hold more than S3's largest object (5 TiB): ~13.9 TB.
    assert sum(part_size(base, n) for n in range(10_000)) >= 5 * (1 << 40)
    assert part_size(5 * 1024 * MIB, 9_999) == MAX_PART


def test_the_sdks_s3_endpoint_variable_is_honoured(
    db: Database, s3: Any, moto: Moto, monkeypatch: pytest.MonkeyPatch
) -> None:
    big_table(db, 10)
    env = {**s3_env(moto), "DUMPER_S3_ENDPOINT_URL": "", "AWS_ENDPOINT_URL_S3": moto.endpoint}
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto.endpoint)  # the SDK reads it from the process environment
    result = db.dump("--run-id", "e1", env=env)
    assert result.code == 0, result.stderr
    assert "nightly/e1/manifest.json" in keys(s3)


def test_the_bucket_region_option_signs_for_that_region(db: Database, s3: Any, moto: Moto) -> None:
    big_table(db, 10)
    host, port = moto.endpoint.removeprefix("http://").split(":")
    proxy = CuttingProxy(host, int(port)).start()
    try:
        result = db.dump(
            "--s3-region", "eu-west-3", env=s3_env(moto, DUMPER_S3_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}")
        )
    finally:
        proxy.stop()
    assert result.code == 0, result.stderr
    requests = [r for stream in proxy.sent for r in http_requests(bytes(stream))]
    assert requests and all("/eu-west-3/s3/aws4_request" in h["authorization"] for _, h in requests)


def test_a_failed_manifest_write_leaves_no_latest_pointing_at_the_run(db: Database, s3: Any, moto: Moto) -> None:
    big_table(db, 10)
    assert db.dump("--run-id", "good", env=s3_env(moto)).code == 0
    host, port = moto.endpoint.removeprefix("http://").split(":")
    proxy = CuttingProxy(host, int(port), cut_when=b"manifest.json").start()
    try:
        result = db.dump("--run-id", "bad", env=s3_env(moto, DUMPER_S3_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}"))
    finally:
        proxy.stop()
    assert proxy.cuts >= 1
    assert result.code == 6, result.stderr
    assert "manifest.json" in result.stderr
    assert body(s3, "nightly/LATEST") == b"good\n"
    assert not [k for k in keys(s3) if k.startswith("nightly/bad/")], "nothing of the failed run is left"
    assert pending_uploads(s3) == []


def test_sigterm_exits_anyway_when_clean_up_outlasts_the_grace_period(db: Database, s3: Any, moto: Moto) -> None:
    big_table(db)
    host, port = moto.endpoint.removeprefix("http://").split(":")
    proxy = CuttingProxy(host, int(port), cut_after=1 << 20, stall=True).start()  # the abort cannot finish
    proc: subprocess.Popen[str] | None = None
    try:
        proc = db.spawn(
            "run",
            "--jobs",
            "1",
            "--stall-timeout",
            "0",
            "--grace-seconds",
            "2",
            env={
                **s3_env(moto, DUMPER_S3_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}"),
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true",
            },
        )
        assert proxy.held.wait(60), "the upload was never held"
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _, stderr = proc.communicate(timeout=60)
        took = time.monotonic() - started
    finally:
        if proc is not None and proc.poll() is None:  # outlived the bound: the test fails, leaving no process
            proc.kill()
            proc.communicate()
        proxy.stop()
    assert proc.returncode == 143, stderr
    assert "clean-up took longer than --grace-seconds 2" in stderr
    within(took, 2, 2 * 2, "the clean-up after SIGTERM")
