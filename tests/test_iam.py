"""RDS IAM auth end to end: IRSA (web identity) credentials from moto's real
STS endpoint, tokens signed by the AWS SDK, and a PostgreSQL role that can log
in only with a valid token (pg_hba `ldap` -> devtools.iam_ldap checks it)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.iam_ldap import IamLdapServer, TokenCheck
from devtools.pgcluster import Cluster
from dumper import cli
from dumper.core.errors import ConnectError
from dumper.core.settings import Settings, resolve
from dumper.dump import run as dump
from dumper.postgres import db as pg
from dumper.postgres.auth import IamToken
from dumper.storage.output import Output

from .conftest import REFUSED_LOGIN, Database, Moto, fake_pg_dump
from .http_capture import capture

IAM_USER = "iam_dumper"
REGION = "eu-central-1"
ROLE_ARN = "arn:aws:iam::123456789012:role/dumper-irsa"


@pytest.fixture(scope="session")
def iam_server(cluster: Cluster, moto: Moto) -> Iterator[IamLdapServer]:
    server = IamLdapServer(TokenCheck("localhost", cluster.port, REGION, Moto.credentials_for)).start()
    rules = "\n".join(
        f"hostssl all {IAM_USER} {net} ldap ldapserver=127.0.0.1 ldapport={server.port} "
        'ldapprefix="cn=" ldapsuffix=",dc=rds"'
        for net in ("127.0.0.1/32", "::1/128")
    )
    cluster.psql(f"CREATE ROLE {IAM_USER} LOGIN; GRANT pg_read_all_data TO {IAM_USER};")
    try:
        with cluster.hba_rule(rules):  # the cluster is left as it was found
            yield server
    finally:
        server.stop()
        cluster.psql(f"DROP ROLE {IAM_USER};")


@pytest.fixture
def irsa(iam_server: IamLdapServer, moto: Moto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> IamLdapServer:
    """The environment EKS injects for IRSA, pointed at moto's STS; no static keys."""
    token_file = tmp_path / "web-identity-token"
    token_file.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZHVtcGVyIn0.sig")
    for var in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_REGION",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_ENDPOINT_URL",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ROLE_ARN", ROLE_ARN)
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto.endpoint)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    iam_server.binds.clear()
    iam_server.tokens.clear()
    return iam_server


pytestmark = pytest.mark.requires("tls", "ldap")  # RDS-like IAM logins: TLS, and pg_hba's ldap method


def iam_env(**extra: str) -> dict[str, str]:
    return {
        "DUMPER_AUTH": "iam",
        "PGUSER": IAM_USER,
        "PGPASSWORD": "",
        "AWS_REGION": REGION,
        "AWS_ROLE_ARN": ROLE_ARN,
        **extra,
    }


def settings_for(db: Database, **flags: str) -> Settings:
    return resolve(flags, {**db.base_env(), **iam_env()})


def test_irsa_run_succeeds_over_verify_full(db: Database, irsa: IamLdapServer) -> None:
    db.sql("CREATE TABLE t (id int, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b');")
    result = db.dump(env=iam_env())
    assert result.code == 0, result.stderr
    assert result.rows("public", "t") == [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}]
    assert result.manifest()["database"]["user"] == IAM_USER
    assert irsa.binds and all(reason is None for _, reason in irsa.binds)
    assert {user for user, _ in irsa.binds} == {IAM_USER}
    token = irsa.tokens[0]
    assert "X-Amz-Credential=ASIA" in token, "temporary credentials from AssumeRoleWithWebIdentity"
    assert "X-Amz-Security-Token=" in token and len(token) > 500


def test_jobs_8_reuses_one_token(db: Database, irsa: IamLdapServer) -> None:
    for i in range(8):
        # i + 1 columns: no two tables read alike, so each is its own read (dump/groups.py)
        columns = ", ".join(f"c{j} int" for j in range(i + 1))
        db.sql(f"CREATE TABLE t{i} ({columns}); INSERT INTO t{i} (c0) VALUES ({i});")
    settings = settings_for(db, jobs="8", processes="2")  # the workers ask this process for each password
    provider = IamToken(settings)
    manifest = asyncio.run(dump.run(settings, provider, Output(str(db.tmp / "out"))))
    assert len(manifest.tables) == 8
    assert len(irsa.binds) >= 9, "the snapshot connection and eight workers logged in"
    assert all(reason is None for _, reason in irsa.binds)
    assert provider.signed == 1, "one signature served every new connection"


def _connect_with(db: Database, token: str) -> str:
    """Log in as the IAM user with `token`; returns dumper's error message."""
    settings = settings_for(db)

    async def password() -> str:
        return token

    async def go() -> None:
        conn = await pg.connect(settings, password)
        await conn.close()

    with pytest.raises(ConnectError) as failure:
        asyncio.run(go())
    return str(failure.value)


def _token(db: Database, *args: str) -> str:
    out = io.StringIO()
    environ = {**db.base_env(), **iam_env()}
    with contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(["token", *args], environ, stdout=out)
    assert code == 0
    return out.getvalue().strip()


HELP = [
    "GRANT rds_iam TO iam_dumper",
    "rds-db:connect",
    f"arn:aws:rds-db:{REGION}:ACCOUNT:dbuser:DBI_RESOURCE_ID/iam_dumper",
    "not a CNAME",
]


@REFUSED_LOGIN
@pytest.mark.parametrize(
    "variant,reason",
    [
        ("tampered", "signature does not match"),
        ("other user", "token is for user 'someone_else'"),
        ("other port", "not localhost:"),
        ("other region", "credential scope us-west-2/rds-db"),
    ],
)
def test_bad_tokens_are_rejected_with_the_helpful_message(
    db: Database, irsa: IamLdapServer, variant: str, reason: str
) -> None:
    good = _token(db)
    token = {
        "tampered": good.replace("X-Amz-Signature=", "X-Amz-Signature=0")[:-1],
        "other user": _token(db, "--user", "someone_else"),
        "other port": _token(db, "--port", str(db.cluster.port + 1)),
        "other region": _token(db, "--region", "us-west-2"),
    }[variant]
    irsa.binds.clear()
    message = _connect_with(db, token)
    assert irsa.binds[-1][1] is not None and reason in irsa.binds[-1][1]
    assert "authentication failed for iam_dumper@localhost" in message
    for hint in HELP:
        assert hint in message
    assert token not in message


def test_the_good_token_from_dumper_token_logs_in(db: Database, irsa: IamLdapServer) -> None:
    token = _token(db)
    settings = settings_for(db)

    async def go() -> str:
        async def password() -> str:
            return token

        conn = await pg.connect(settings, password)
        try:
            return str(await conn.fetchval("SELECT current_user"))
        finally:
            await conn.close()

    assert asyncio.run(go()) == IAM_USER


@REFUSED_LOGIN
def test_wrong_region_run_fails_with_exit_3_and_the_hints(db: Database, irsa: IamLdapServer) -> None:
    result = db.dump("--region", "us-west-2", env=iam_env())
    assert result.code == 3
    for hint in HELP:
        assert hint.replace(REGION, "us-west-2") in result.stderr
    assert result.files() == []


class ManualClock:
    """The provider's clock, moved by the test: no real time needs to pass."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@REFUSED_LOGIN
def test_expired_token_is_rejected_and_a_new_one_is_signed(db: Database, irsa: IamLdapServer) -> None:
    """RDS's 15 minutes: the checker's clock is moved past them; dumper's reuse window (a token is
    reused while more than 5 of its 15 minutes remain): the provider's clock is moved."""
    db.sql("CREATE TABLE t (i int); INSERT INTO t VALUES (1);")
    settings = settings_for(db)
    clock = ManualClock()
    provider = IamToken(settings, clock=clock)  # RDS's lifetime, dumper's margin

    def login() -> None:
        async def go() -> None:
            conn = await pg.connect(settings, provider)
            await conn.close()

        asyncio.run(go())

    login()
    first = irsa.tokens[-1]
    clock.now = 599.0  # 5 min 1 s left: reused
    login()
    assert (provider.signed, irsa.tokens[-1]) == (1, first)
    clock.now = 600.5  # less than 5 minutes left: a new one for the next connection
    login()
    assert provider.signed == 2 and irsa.binds[-1][1] is None
    real_now = irsa.check.now
    irsa.check.now = lambda: real_now() + dt.timedelta(seconds=901)  # 15 minutes and a second later
    try:
        message = _connect_with(db, first)
    finally:
        irsa.check.now = real_now
    assert "authentication failed" in message and "expired" in (irsa.binds[-1][1] or "")
    # A whole run long after: one new token, whatever the run's length, serves all its connections.
    clock.now = 5000.0
    manifest = asyncio.run(dump.run(settings, provider, Output(str(db.tmp / "late"))))
    assert manifest.tables[0].rows == 1 and provider.signed == 3


@REFUSED_LOGIN  # the second run's token is for another region: its login is refused
def test_no_secret_reaches_logs_manifest_or_repr(db: Database, irsa: IamLdapServer) -> None:
    db.sql("CREATE TABLE t (i int); INSERT INTO t VALUES (1);")
    result = db.dump("--log-format", "json", env=iam_env())
    assert result.code == 0, result.stderr
    failed = db.dump("--region", "us-west-2", "--run-id", "x", env=iam_env())
    assert failed.code == 3
    akid = irsa.tokens[0].split("X-Amz-Credential=")[1].split("%2F")[0]
    secret, session_token = Moto.credentials_for(akid) or ("?", "?")
    settings = settings_for(db)
    texts = [
        result.stdout,
        result.stderr,
        failed.stdout,
        failed.stderr,
        (result.run_dir / "manifest.json").read_text(),
        repr(settings),
        repr(IamToken(settings)),
    ]
    for text in texts:
        for secret_value in [secret, session_token, *irsa.tokens]:
            assert secret_value not in text
        assert "X-Amz-Signature" not in text


def test_no_credentials_is_a_clear_error(db: Database, irsa: IamLdapServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ROLE_ARN")
    monkeypatch.delenv("AWS_WEB_IDENTITY_TOKEN_FILE")
    result = db.dump(env=iam_env())
    assert result.code == 3
    assert "no AWS credentials found for the IAM token" in result.stderr
    assert "eks.amazonaws.com/role-arn" in result.stderr


STS_DENIED = (
    b'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
    b"<Code>AccessDenied</Code><Message>Not authorized to perform sts:AssumeRoleWithWebIdentity"
    b"</Message></Error><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ErrorResponse>"
)


def test_sts_denied_names_the_role(db: Database, irsa: IamLdapServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """STS's real error response for a refused AssumeRoleWithWebIdentity, from a real HTTP server."""
    with capture(403, STS_DENIED, "text/xml") as sts:
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", sts.url)
        result = db.dump(env=iam_env())
    assert sts.requests and b"Action=AssumeRoleWithWebIdentity" in sts.requests[0].body
    assert result.code == 3
    assert f"STS AssumeRoleWithWebIdentity was denied for role {ROLE_ARN}" in result.stderr
    assert "AccessDenied" in result.stderr and "trust policy" in result.stderr


def test_missing_region_is_a_usage_error(db: Database, irsa: IamLdapServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION")
    env = iam_env()
    del env["AWS_REGION"]
    result = db.dump(env=env)
    assert result.code == 2
    assert result.stderr.count("\n") == 1 and "--region: IAM auth needs the database's AWS region" in result.stderr
    assert result.files() == []


def _check(db: Database, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["check", *args], {**db.base_env(), **iam_env()}, stdout=out)
    return code, out.getvalue(), err.getvalue()


def test_check_walks_through_every_step(db: Database, irsa: IamLdapServer) -> None:
    db.sql('CREATE TABLE orders (i int); CREATE TABLE "Mixed Case" (i int);')
    code, out, err = _check(db)
    assert code == 0, err
    assert (
        "AWS credentials: assume-role-with-web-identity as arn:aws:sts::123456789012:assumed-role/dumper-irsa/" in out
    )
    assert f"IAM token: signed for {IAM_USER}@localhost:{db.cluster.port} in {REGION}" in out
    assert "TLS TLSv1.3 (--sslmode verify-full)" in out and "PostgreSQL 15." in out
    assert "tables to dump: 2" in out
    assert "  public.Mixed Case: readable" in out and "  public.orders: readable" in out
    assert out.rstrip().endswith("ok: a run would start")


def test_check_fails_when_a_table_is_not_readable(db: Database, irsa: IamLdapServer) -> None:
    db.sql("CREATE TABLE open (i int); CREATE TABLE hidden (i int); ALTER TABLE hidden ENABLE ROW LEVEL SECURITY;")
    code, out, err = _check(db)
    assert code == 4
    assert "  public.hidden: NOT READABLE: row-level security" in out
    assert "  public.open: readable" in out
    assert "1 table(s) cannot be read: public.hidden" in err


def test_pg_dump_logs_in_with_the_token_never_on_its_command_line(
    db: Database, irsa: IamLdapServer, tmp_path: Path
) -> None:
    """The schema files' pg_dump, wrapped to record what it was given: the token
    arrives in its environment only, and the IAM login succeeds."""
    db.sql("CREATE TABLE t (id serial PRIMARY KEY); INSERT INTO t DEFAULT VALUES;")
    seen = tmp_path / "seen"
    wrapper = fake_pg_dump(
        tmp_path / "wrapped",
        f'printf "%s\\n" "$@" >> {seen}/argv\n'
        f'printf "%s" "$PGPASSWORD" | sha256sum >> {seen}/password\n'
        f'exec {db.cluster.bin / "pg_dump"} "$@"\n',
        db.cluster.bin,
    )
    seen.mkdir()
    result = db.dump(env=iam_env(DUMPER_PG_DUMP=str(wrapper)))
    assert result.code == 0, result.stderr
    assert result.manifest()["schema_files"]["status"] == "written"
    assert "CREATE TABLE public.t" in (result.run_dir / "schema.pre-data.sql").read_text()
    argv = (seen / "argv").read_text()
    assert "--snapshot" in argv and "sslmode='verify-full'" in argv
    hashes = {hashlib.sha256(token.encode()).hexdigest() for token in irsa.tokens}
    given = {line.split()[0] for line in (seen / "password").read_text().splitlines()}
    given.discard(hashlib.sha256(b"").hexdigest())  # `pg_dump --version` needs no password
    assert given and given <= hashes, "pg_dump got the run's IAM token"
    for token in irsa.tokens:
        assert token not in argv
    assert {user for user, _ in irsa.binds} == {IAM_USER} and all(reason is None for _, reason in irsa.binds)
