"""A throwaway PostgreSQL cluster with TLS, for the tests, `make demo` and `make bench`.

initdb refuses to run as root, so as root the server binaries run as the
`postgres` OS user (runuser); the caller keeps its own user. The server
certificate is issued by a fresh trustme CA for the name 'localhost' only,
so connecting to '127.0.0.1' with verify-full is a host name mismatch.
"""

from __future__ import annotations

import contextlib
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
        subprocess.run(_as_server_user([
            str(PG_BIN / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--pwfile", str(pwfile),
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
        ]), check=True, capture_output=True)
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nlisten_addresses = 'localhost'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                f"ssl = on\nssl_cert_file = '{tls / 'server.crt'}'\nssl_key_file = '{tls / 'server.key'}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\nshared_buffers = 128MB\nlogging_collector = off\n")
        # TLS only over TCP: a plaintext TCP login has no matching line and is rejected.
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "hostssl all all 127.0.0.1/32 scram-sha-256\n"
            "hostssl all all ::1/128 scram-sha-256\n")
        self.launch()
        return self

    def launch(self) -> None:
        """Start the server process (its output goes to a log file, never to our pipes)."""
        self.pg_ctl("start", "-w", "-t", "60", "-l", str(self.data / "server.log"))

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
        subprocess.run(_as_server_user([str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args]),
                       check=True, capture_output=True)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.pg_ctl("stop", "-m", "fast", "-w")
        shutil.rmtree(self.base, ignore_errors=True)

    def psql(self, sql: str, dbname: str = "postgres", *, user: str = SUPERUSER) -> str:
        """Run SQL over the Unix socket as superuser; returns unaligned output."""
        result = subprocess.run(
            ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir),
             "-p", str(self.port), "-U", user, "-d", dbname],
            input=sql, text=True, capture_output=True)
        if result.returncode:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    def env(self, dbname: str, user: str = SUPERUSER, password: str = SUPERUSER_PASSWORD) -> dict[str, str]:
        """Environment for `dumper run` against this cluster (password auth, verify-full)."""
        return {
            "PGHOST": self.host, "PGPORT": str(self.port), "PGDATABASE": dbname, "PGUSER": user,
            "PGPASSWORD": password, "PGSSLROOTCERT": str(self.ca_file), "DUMPER_AUTH": "password",
        }
