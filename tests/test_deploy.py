"""Deployment artefacts are checked, not just written: Kubernetes manifests
against the API schemas, the Dockerfile with hadolint, and the SQL scripts
against the real server (twice: idempotent)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import ROOT, Database
from .test_hardening import PLANT_SQL

MANIFEST = ROOT / "k8s" / "cronjob.yaml"
BIN = Path(sys.executable).parent


def docs() -> dict[str, Any]:
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text())}


@pytest.mark.parametrize("version", ["1.29.0", "1.33.0", "1.37.0"])
def test_manifests_validate_strictly(version: str) -> None:
    result = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "-k", version, str(MANIFEST)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == 3


def test_security_and_job_settings_stay() -> None:
    d = docs()
    assert d["ServiceAccount"]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert {"DUMPER_HOST", "DUMPER_PORT", "DUMPER_DBNAME", "DUMPER_USER", "DUMPER_REGION", "DUMPER_OUTPUT"} <= set(
        d["ConfigMap"]["data"]
    )
    cron = d["CronJob"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    assert cron["startingDeadlineSeconds"] > 0 and cron["timeZone"]
    assert cron["successfulJobsHistoryLimit"] >= 1 and cron["failedJobsHistoryLimit"] >= 1
    job = cron["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 1, "one retry: the README says so"
    assert job["activeDeadlineSeconds"] > 0 and job["ttlSecondsAfterFinished"] > 0
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["serviceAccountName"] == "dumper"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"]["memory"] and container["resources"]["limits"]["memory"]
    # The README's memory model: ~250 MB to S3 (worker processes included), plus ~4x one huge row's JSON
    # (96 MB for a 48 MB bytea): 3x in the worker that reads it, 1x in the dumper process.
    assert mebibytes(container["resources"]["limits"]["memory"]) * MIB >= 250e6 + 4 * 96e6
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]  # noqa: S108 - the manifest
    assert any(v["name"] == "tmp" and "emptyDir" in v for v in pod["volumes"])
    grace = float(d["ConfigMap"]["data"]["DUMPER_GRACE_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > grace, "Kubernetes must wait for dumper's clean-up"


MIB = 1 << 20


def mebibytes(quantity: str) -> float:
    """A Kubernetes memory quantity in MiB (Mi, Gi, M, G or bytes)."""
    units = {"Mi": 1.0, "Gi": 1024.0, "M": 1e6 / MIB, "G": 1e9 / MIB}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity.removesuffix(suffix)) * factor
    return float(quantity) / MIB


def test_no_secret_or_password_anywhere() -> None:
    objects = list(yaml.safe_load_all(MANIFEST.read_text()))
    assert all(o["kind"] != "Secret" for o in objects)
    dumped = yaml.safe_dump(objects)
    assert "secretRef" not in dumped and "secretKeyRef" not in dumped, "no secret in an environment variable"
    assert not [k for k in docs()["ConfigMap"]["data"] if "PASSWORD" in k or "TOKEN" in k]


def test_the_pod_holds_no_api_token_and_no_fallback_credentials() -> None:
    d = docs()
    pod = d["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert d["ServiceAccount"]["automountServiceAccountToken"] is False
    assert pod["automountServiceAccountToken"] is False
    assert d["ConfigMap"]["data"]["AWS_EC2_METADATA_DISABLED"] == "true"
    # The webhook URL comes from a Secret mounted as a file, read-only, optional.
    (webhook,) = [v for v in pod["volumes"] if v["name"] == "webhook"]
    assert webhook["secret"]["optional"] is True and webhook["secret"]["defaultMode"] == 0o400
    assert "# DUMPER_NOTIFY_URL_FILE: /etc/dumper/webhook/url" in MANIFEST.read_text()


@pytest.mark.parametrize("version", ["1.29", "1.33"])
def test_network_policy_validates_and_allows_only_what_a_dump_needs(version: str) -> None:
    policy_file = ROOT / "k8s" / "networkpolicy.yaml"
    result = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "-k", version, str(policy_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    policy = yaml.safe_load(policy_file.read_text())["spec"]
    assert policy["ingress"] == [] and set(policy["policyTypes"]) == {"Ingress", "Egress"}
    ports = sorted({p["port"] for rule in policy["egress"] for p in rule["ports"]})
    assert ports == [53, 443, 5432]


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [str(BIN / "hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE=" in text and "USER 10001:10001" in text
    assert 'ENTRYPOINT ["dumper"]' in text and 'CMD ["run"]' in text
    assert "DUMPER_SSLROOTCERT=/etc/dumper/rds-global-bundle.pem" in text
    assert "sha256sum -c" in text
    lines = text.splitlines()
    for i, line in enumerate(lines):  # a rule ignored only with the reason written above it
        if "hadolint ignore" in line:
            assert lines[i - 2].startswith("# Why"), f"Dockerfile line {i + 1}: no reason given for {line}"


def _psql_file(db: Database, *args: str) -> str:
    result = subprocess.run(
        [
            "psql",
            "-X",
            "-q",
            "-h",
            str(db.cluster.socket_dir),
            "-p",
            str(db.cluster.port),
            "-U",
            "postgres",
            "-d",
            db.name,
            *args,
            "-f",
            str(ROOT / "sql" / "dumper_role.sql"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


@pytest.mark.skipif(not shutil.which("psql"), reason="psql is installed by make test")
@pytest.mark.parametrize("read_all", [False, True], ids=["schema-grants", "read-all-opt-in"])
def test_sql_role_script_is_idempotent_and_gives_read_only_access(db: Database, read_all: bool) -> None:
    role = "dumper_sql_test"
    db.cluster.psql(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rds_iam') "
        "THEN CREATE ROLE rds_iam NOLOGIN; END IF; END $$;"
    )  # stand-in for RDS's role
    db.sql(
        "CREATE SCHEMA app; CREATE TABLE app.orders (id serial); INSERT INTO app.orders VALUES (1), (2);"
        "SELECT setval('app.orders_id_seq', 2);"
        "CREATE TABLE public.notes (t text); INSERT INTO public.notes VALUES ('x');"
        "CREATE SCHEMA hr; CREATE TABLE hr.salaries (n int); INSERT INTO hr.salaries VALUES (1);"
    )
    args = ["-v", f"role={role}", "-v", "schemas=app,public", *(["-v", "read_all=on"] if read_all else [])]
    try:
        _psql_file(db, *args)
        _psql_file(db, *args)  # again: nothing fails, nothing changes
        # Default privileges: a table and a sequence created later.
        db.sql("CREATE TABLE app.later (id int); INSERT INTO app.later VALUES (7); CREATE SEQUENCE app.later_seq;")
        member_of = db.cluster.psql(
            f"SELECT string_agg(b.rolname, ',' ORDER BY b.rolname) FROM pg_auth_members m "
            f"JOIN pg_roles r ON r.oid = m.member JOIN pg_roles b ON b.oid = m.roleid "
            f"WHERE r.rolname = '{role}'"
        ).strip()
        assert member_of == ("pg_read_all_data,rds_iam" if read_all else "rds_iam")
        db.cluster.psql(f"ALTER ROLE {role} PASSWORD 'test-only'")  # the test server has no IAM for this role
        result = db.dump("--schema", "app", "--schema", "public", user=role, password="test-only")
        assert result.code == 0, result.stderr
        assert result.rows("app", "orders") == [{"id": 1}, {"id": 2}]
        assert result.rows("app", "later") == [{"id": 7}]
        positions = {s["name"]: s["last_value"] for s in result.manifest()["sequences"]}
        assert positions == {"orders_id_seq": 2, "later_seq": 1}  # readable: none left out
        assert result.manifest()["schema_files"]["status"] == "written"
        # A schema that was not named is readable only with the opt-in.
        hr = db.dump("--schema", "hr", "--run-id", "hr", user=role, password="test-only")
        assert hr.code == (0 if read_all else 4), hr.stderr
        with pytest.raises(RuntimeError, match=r"permission denied|read-only transaction"):
            db.sql("INSERT INTO app.orders VALUES (3)", user=role)
        with pytest.raises(RuntimeError, match=r"permission denied|read-only transaction"):
            db.sql("SET default_transaction_read_only = off; INSERT INTO app.orders VALUES (3)", user=role)
    finally:
        db.sql(f"DROP OWNED BY {role}")  # grants and default privileges live in the test database
        db.cluster.psql(f"DROP OWNED BY {role}; DROP ROLE {role};")


@pytest.mark.skipif(not shutil.which("psql"), reason="psql is installed by make test")
def test_sql_role_script_runs_no_code_planted_in_public(db: Database) -> None:
    role = "dumper_sql_planted"
    # Look-alikes, each an exact type match for a call the script makes, as a
    # role with CREATE on public could plant them; run as the superuser.
    db.sql(
        PLANT_SQL
        + """
        CREATE FUNCTION public.format(text, text) RETURNS text LANGUAGE plpgsql
            AS $$ BEGIN RAISE EXCEPTION 'PLANTED format ran as %', current_user; END $$;
        CREATE FUNCTION public.format(text, name, text, name) RETURNS text LANGUAGE plpgsql
            AS $$ BEGIN RAISE EXCEPTION 'PLANTED format ran as %', current_user; END $$;
        CREATE FUNCTION public.string_to_array(text, text) RETURNS text[] LANGUAGE plpgsql
            AS $$ BEGIN RAISE EXCEPTION 'PLANTED string_to_array ran as %', current_user; END $$;
        CREATE FUNCTION public.pg_get_userbyid(oid) RETURNS name LANGUAGE plpgsql
            AS $$ BEGIN RAISE EXCEPTION 'PLANTED pg_get_userbyid ran as %', current_user; END $$;
        CREATE FUNCTION public.current_database() RETURNS name LANGUAGE plpgsql
            AS $$ BEGIN RAISE EXCEPTION 'PLANTED current_database ran as %', current_user; END $$;
    """
    )
    try:
        stderr = _psql_file(db, "-v", f"role={role}")
        assert "PLANTED" not in stderr
        assert db.cluster.psql(f"SELECT count(*) FROM pg_roles WHERE rolname = '{role}'").strip() == "1"
    finally:
        db.sql(f"DROP OWNED BY {role}")  # grants and default privileges live in the test database
        db.cluster.psql(f"DROP OWNED BY {role}; DROP ROLE {role};")


DRILL_MANIFEST = ROOT / "k8s" / "drill-cronjob.yaml"


@pytest.mark.parametrize("version", ["1.29.0", "1.37.0"])
def test_the_drill_cronjob_validates_and_runs_with_its_own_role(version: str) -> None:
    result = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "-k", version, str(DRILL_MANIFEST)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    d = {o["kind"]: o for o in yaml.safe_load_all(DRILL_MANIFEST.read_text())}
    assert d["ServiceAccount"]["metadata"]["name"] == "dumper-drill" != docs()["ServiceAccount"]["metadata"]["name"]
    assert d["ServiceAccount"]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(":role/dumper-drill")
    assert d["ServiceAccount"]["automountServiceAccountToken"] is False
    cron = d["CronJob"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid" and cron["schedule"].split()[4] != "*", "weekly"
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "dumper-drill" and pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["args"][0] == "drill"
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert pod["terminationGracePeriodSeconds"] > float(d["ConfigMap"]["data"]["DUMPER_GRACE_SECONDS"])
    assert "secretRef" not in DRILL_MANIFEST.read_text() and "PASSWORD" not in DRILL_MANIFEST.read_text()
    policy = (ROOT / "deploy" / "iam" / "drill-policy.json").read_text()
    assert "s3:PutObject" not in policy and "s3:DeleteObject" not in policy and "dbuser:" in policy


@pytest.mark.skipif(not shutil.which("psql"), reason="psql is installed by make test")
def test_the_drill_role_script_gives_createdb_and_nothing_more(db: Database) -> None:
    role = "dumper_drill_sql_test"
    for _ in range(2):  # idempotent
        result = subprocess.run(
            [
                "psql",
                "-X",
                "-q",
                "-h",
                str(db.cluster.socket_dir),
                "-p",
                str(db.cluster.port),
                "-U",
                "postgres",
                "-d",
                db.name,
                "-v",
                f"role={role}",
                "-f",
                str(ROOT / "sql" / "drill_role.sql"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    try:
        flags = db.fetch(
            "SELECT rolcanlogin, rolcreatedb, rolsuper, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname = $1",
            role,
        )[0]
        assert tuple(flags) == (True, True, False, False, False)
        db.sql("CREATE TABLE t (id serial PRIMARY KEY, v text); INSERT INTO t (v) VALUES ('a'), ('b');")
        dumped = db.dump("--run-id", "for-drill")
        assert dumped.code == 0, dumped.stderr
        db.cluster.psql(f"ALTER ROLE {role} PASSWORD 'test-only'")  # the test server has no IAM for this role
        drilled = db.drill(dumped.run_dir, user=role, password="test-only")
        assert drilled.code == 0, drilled.stderr
    finally:
        db.cluster.psql(f"DROP ROLE {role}")


SHARDED = [ROOT / "k8s" / "indexed-job.yaml", ROOT / "k8s" / "indexed-cronjob.yaml"]


@pytest.mark.parametrize("version", ["1.29.0", "1.33.0", "1.37.0"])
def test_the_indexed_job_manifests_validate_strictly(version: str) -> None:
    result = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "-k", version, *map(str, SHARDED)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == 2


@pytest.mark.parametrize("path", SHARDED, ids=["job", "cronjob"])
def test_an_indexed_job_is_the_cronjobs_pod_with_shards(path: Path) -> None:
    (doc,) = yaml.safe_load_all(path.read_text())
    job = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    shards = int(env["DUMPER_SHARDS"]["value"])
    assert job["completionMode"] == "Indexed" and job["completions"] == job["parallelism"] == shards > 1
    assert job["backoffLimitPerIndex"] >= 1 and job["maxFailedIndexes"] == 0
    fail = next(r for r in job["podFailurePolicy"]["rules"] if r["action"] == "FailJob")
    assert fail["onExitCodes"] == {"containerName": "dumper", "operator": "In", "values": [2]}
    assert (
        env["DUMPER_RUN_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['batch.kubernetes.io/job-name']"
    )
    # The same pod as the one-pod CronJob's: identity, user, sandbox and configuration.
    single = docs()["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    for key in ("serviceAccountName", "automountServiceAccountToken", "restartPolicy", "securityContext"):
        assert pod[key] == single[key], key
    assert container["securityContext"] == single["containers"][0]["securityContext"]
    assert container["envFrom"] == single["containers"][0]["envFrom"] and container["args"] == ["run"]
    assert "PASSWORD" not in path.read_text() and "secretRef" not in path.read_text()
    policy = (ROOT / "deploy" / "iam" / "shards-policy.json").read_text()
    assert "/.shards/*" in policy and "s3:DeleteObject" in policy
