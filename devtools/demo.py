"""`make demo`: a throwaway PostgreSQL with TLS and sample data, dumped to ./dumps
by the real `dumper` CLI, verified, then restored into an empty copy of the
schema (`shop_copy`); the server is stopped at the end."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

from devtools.pgcluster import Cluster

ROOT = Path(__file__).resolve().parent.parent
DUMPER = str(Path(sys.executable).parent / "dumper")


def main() -> int:
    print("starting a throwaway PostgreSQL 15 with TLS ...", flush=True)
    cluster = Cluster().start()
    try:
        password = secrets.token_urlsafe(18)  # lives only for this demo
        cluster.psql("CREATE DATABASE shop;")
        cluster.psql((ROOT / "devtools" / "sample_data.sql").read_text(), "shop")
        cluster.psql(f"CREATE ROLE dumper_demo LOGIN PASSWORD '{password}';"
                     "GRANT pg_read_all_data TO dumper_demo;"
                     f"CREATE ROLE restore_demo LOGIN PASSWORD '{password}';"
                     "GRANT pg_write_all_data TO restore_demo;")
        print(f"loaded the sample database 'shop' (port {cluster.port})\n", flush=True)
        args = ["--host", "localhost", "--port", str(cluster.port), "--dbname", "shop",
                "--user", "dumper_demo", "--auth", "password", "--sslmode", "verify-full",
                "--sslrootcert", str(cluster.ca_file), "--output", "./dumps", "--jobs", "2",
                "--log-format", "text"]
        print("$ dumper run " + " ".join(args) + "\n", flush=True)
        env = {**os.environ, "PGPASSWORD": password}
        run = subprocess.run([DUMPER, "run", *args], env=env, check=False)
        if run.returncode:
            return run.returncode
        run_id = (Path("dumps") / "LATEST").read_text().strip()
        print(f"\n$ dumper verify dumps/{run_id}", flush=True)
        verified = subprocess.run([DUMPER, "verify", f"dumps/{run_id}"], check=False).returncode
        if verified:
            return verified
        # The way back: the schema from pg_dump --schema-only, the rows from the dump.
        cluster.psql("CREATE DATABASE shop_copy;")
        schema = subprocess.run([str(cluster.bin / "pg_dump"), "--schema-only", "-h", str(cluster.socket_dir),
                                 "-p", str(cluster.port), "-U", "postgres", "shop"],
                                capture_output=True, text=True, check=True).stdout
        cluster.psql(schema, "shop_copy")
        restore = ["restore", f"dumps/{run_id}", *args[:4], "--dbname", "shop_copy", "--user", "restore_demo",
                   *args[8:14], "--jobs", "2", "--log-format", "text"]
        print(f"\n(schema from pg_dump --schema-only into shop_copy)\n$ dumper {' '.join(restore)}\n", flush=True)
        return subprocess.run([DUMPER, *restore], env=env, check=False).returncode
    finally:
        cluster.stop()
        print("stopped the throwaway PostgreSQL", flush=True)


if __name__ == "__main__":
    sys.exit(main())
