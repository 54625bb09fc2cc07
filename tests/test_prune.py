"""Retention: `dumper prune --keep N [--dry-run]` and `run --keep N`, on local
folders and on moto's S3, with real runs and a killed run's leftovers."""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from dumper import cli

from .conftest import BUCKET, Database, Moto, parse_json, wait_until
from .holds import replies_held
from .test_resilience import big


def prune(db: Database, *args: str, env: dict[str, str] | None = None) -> tuple[int, list[dict[str, Any]], str]:
    environ = {**db.base_env(), **(env or {})}
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["prune", *args], environ, stdout=out)
    return code, [parse_json(line) for line in out.getvalue().splitlines()], err.getvalue()


def removed(events: list[dict[str, Any]]) -> list[str]:
    return sorted(e["run"] for e in events if e["event"] in ("removed", "would remove"))


def runs_on_disk(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.is_dir())


def four_runs(db: Database, env: dict[str, str] | None = None) -> None:
    db.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1);")
    for run_id in ("r1", "r2", "r3", "r4"):
        result = db.dump("--run-id", run_id, env=env)
        assert result.code == 0, result.stderr


def test_prune_keeps_the_newest_complete_runs_and_latest_locally(db: Database) -> None:
    out = db.tmp / "out"
    four_runs(db)
    # Leftovers of a killed run, older than every complete run; and a run in progress, newer.
    killed, running = out / "k0", out / "r5"
    killed.mkdir()
    (killed / ".public.t.jsonl.0a1b2c3d.partial").write_bytes(b'{"id":1}\n')
    running.mkdir()
    (running / ".public.t.jsonl.0a1b2c3d.partial").write_bytes(b'{"id":1}\n')
    # Someone's own folder: not a run, never removed.
    (out / "notes").mkdir()
    (out / "notes" / "todo.txt").write_text("keep me")
    for age, name in ((500, "k0"), (500, "notes"), (400, "r1"), (300, "r2"), (200, "r3"), (100, "r4")):
        stamp = time.time() - age
        for path in [out / name, *(out / name).iterdir()]:
            os.utime(path, (stamp, stamp))
    (out / "LATEST").write_text("r1\n")  # an operator pointed LATEST back at r1

    code, events, err = prune(db, "--output", str(out), "--keep", "2", "--dry-run")
    assert code == 0, err
    assert removed(events) == ["k0", "r2"] and {e["event"] for e in events} >= {"would remove", "kept"}
    assert runs_on_disk(out) == ["k0", "notes", "r1", "r2", "r3", "r4", "r5"], "a dry run removes nothing"

    code, events, err = prune(db, "--output", str(out), "--keep", "2")
    assert code == 0, err
    assert removed(events) == ["k0", "r2"]
    assert runs_on_disk(out) == ["notes", "r1", "r3", "r4", "r5"]
    kept = {e["run"]: e["why"] for e in events if e["event"] == "kept"}
    assert kept["r1"] == "complete, named by LATEST" and "run in progress" in kept["r5"]
    assert "files no run writes" in kept["notes"]


def test_run_keep_prunes_after_a_successful_run_only(db: Database) -> None:
    out = db.tmp / "out"
    four_runs(db)
    failed = db.dump("--run-id", "r5", "--keep", "1", "--include", "public.nothing")
    assert failed.code == 2 and runs_on_disk(out) == ["r1", "r2", "r3", "r4"], "a failed run prunes nothing"
    ok = db.dump("--run-id", "r5", "--keep", "2")
    assert ok.code == 0, ok.stderr
    assert runs_on_disk(out) == ["r4", "r5"]
    assert '"event":"removed"' in ok.stdout and '"run":"r1"' in ok.stdout


def test_a_prune_that_fails_is_a_warning_for_run(
    db: Database, s3: Any, moto: Moto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dump role of deploy/iam/policy.json may not delete: `run --keep` then
    succeeds and warns (moto enforces the IAM policy)."""
    from moto.core import enable_iam_authentication

    env = {"DUMPER_OUTPUT": f"s3://{BUCKET}/nightly", "DUMPER_S3_ENDPOINT_URL": moto.endpoint}
    four_runs(db, env)
    iam = boto3.client("iam", endpoint_url=moto.endpoint, region_name="us-east-1")
    iam.create_user(UserName="writer")
    iam.put_user_policy(
        UserName="writer",
        PolicyName="no-delete",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": [
                            "s3:PutObject",
                            "s3:GetObject",
                            "s3:ListBucket",
                            "s3:AbortMultipartUpload",
                            "s3:ListMultipartUploadParts",
                            "s3:GetBucketLocation",
                        ],
                        "Resource": "*",
                    }
                ],
            }
        ),
    )
    key = iam.create_access_key(UserName="writer")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    with enable_iam_authentication():
        ok = db.dump("--run-id", "r5", "--keep", "1", env=env)
    assert ok.code == 0, ok.stderr
    events = [parse_json(line) for line in ok.stdout.splitlines()]
    failures = [e for e in events if e["event"] == "prune failed"]
    assert sorted(e["run"] for e in failures) == ["r1", "r2", "r3", "r4"], events
    assert all(e["level"] == "warning" for e in failures)
    assert events[-1]["event"] == "run finished" and events[-1]["status"] == "success"
    keys = s3.list_objects_v2(Bucket=BUCKET, Prefix="nightly/r1/")["KeyCount"]
    assert keys > 0, "nothing was removed"


def test_prune_on_s3(db: Database, s3: Any, moto: Moto) -> None:
    env = {"DUMPER_OUTPUT": f"s3://{BUCKET}/nightly", "DUMPER_S3_ENDPOINT_URL": moto.endpoint}
    s3.put_object(Bucket=BUCKET, Key="nightly/k0/public.t.jsonl", Body=b'{"id":1}\n')  # a killed run's table
    time.sleep(1.1)  # S3 times have one-second resolution: the leftover is older than every run
    four_runs(db, env)
    code, events, err = prune(db, "--keep", "3", "--dry-run", env=env)
    assert code == 0, err
    assert removed(events) == ["k0", "r1"]
    code, events, err = prune(db, "--keep", "3", env=env)
    assert code == 0, err
    assert removed(events) == ["k0", "r1"]
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="nightly/")["Contents"])
    assert {k.split("/")[1] for k in keys} == {"LATEST", "r2", "r3", "r4"}
    assert s3.get_object(Bucket=BUCKET, Key="nightly/LATEST")["Body"].read() == b"r4\n"


def test_prune_needs_keep(db: Database) -> None:
    code, _, err = prune(db, "--output", str(db.tmp / "out"))
    assert code == 2 and "--keep" in err


def test_a_run_that_cannot_be_removed_is_exit_6(
    db: Database, s3: Any, moto: Moto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dumper prune` as a role without s3:DeleteObject (moto enforces it): S3 answers the
    delete with the keys it refused, and prune says which runs are still there."""
    from moto.core import enable_iam_authentication

    env = {"DUMPER_OUTPUT": f"s3://{BUCKET}/nightly", "DUMPER_S3_ENDPOINT_URL": moto.endpoint}
    four_runs(db, env)
    iam = boto3.client("iam", endpoint_url=moto.endpoint, region_name="us-east-1")
    iam.create_user(UserName="lister")
    iam.put_user_policy(
        UserName="lister",
        PolicyName="no-delete",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": ["s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation"],
                        "Resource": "*",
                    }
                ],
            }
        ),
    )
    key = iam.create_access_key(UserName="lister")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    with enable_iam_authentication():
        code, events, err = prune(db, "--keep", "3", env=env)
    assert code == 6, err
    assert "1 run(s) could not be removed: r1" in err and "s3:DeleteObject" in err
    failed = [e for e in events if e["event"] == "prune failed"]
    assert [e["run"] for e in failed] == ["r1"]
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="nightly/r1/")["KeyCount"] > 0


def test_a_killed_runs_leftovers_are_removed(db: Database) -> None:
    """A run killed (SIGKILL: nothing of its own clean-up runs) part way through a table
    leaves what it had written: the schema files (pg_dump's, not held) and the table's hidden
    .partial. Once a complete run is newer, prune removes that folder (and says so);
    a folder that also holds a file no run writes stays."""
    big(db)
    out = db.tmp / "out"
    with replies_held(db) as hold:
        proc = db.spawn("run", "--run-id", "k0", "--jobs", "1", "--processes", "1", *hold.args)
        hold.wait()

        def written() -> bool:
            """The rows received before the hold are in the .partial, and the schema files are written."""
            names = {p.name for p in (out / "k0").iterdir()}
            partial = any(n.endswith(".partial") for n in names)
            return partial and {"schema.pre-data.sql", "schema.post-data.sql"} <= names

        wait_until(written, 120)
        left = sorted(p.name for p in (out / "k0").iterdir())
        proc.kill()
        proc.communicate(timeout=60)
    assert {"schema.pre-data.sql", "schema.post-data.sql"} <= set(left), left
    assert [n for n in left if n.startswith(".public.big.jsonl.") and n.endswith(".partial")], left
    assert sorted(p.name for p in (out / "k0").iterdir()) == left, "a SIGKILL cleans up nothing"
    mine = out / "k1"  # a killed run's folder that someone also put a file of their own in
    mine.mkdir()
    for name in left:
        (mine / name).write_bytes((out / "k0" / name).read_bytes())
    (mine / "notes.txt").write_text("keep me")
    for run_id in ("r1", "r2"):
        result = db.dump("--run-id", run_id, "--include", "public.small")
        assert result.code == 0, result.stderr

    code, events, err = prune(db, "--output", str(out), "--keep", "1")
    assert code == 0, err
    assert removed(events) == ["k0", "r1"]
    assert runs_on_disk(out) == ["k1", "r2"]
    kept = {e["run"]: e["why"] for e in events if e["event"] == "kept"}
    assert "files no run writes" in kept["k1"]
