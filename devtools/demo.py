"""`make demo`: a throwaway PostgreSQL with TLS and sample data, dumped to ./dumps
by the real `dumper` CLI, verified, restored with its own schema files into an
empty database (`shop_copy`), and proved by a drill; the server is stopped at
the end."""

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
        cluster.psql(
            f"CREATE ROLE dumper_demo LOGIN PASSWORD '{password}';"
            "GRANT pg_read_all_data TO dumper_demo;"
            f"CREATE ROLE restore_demo LOGIN PASSWORD '{password}';"
            f"CREATE ROLE drill_demo LOGIN CREATEDB PASSWORD '{password}';"
            "CREATE DATABASE shop_copy OWNER restore_demo;"
        )
        print(f"loaded the sample database 'shop' (port {cluster.port})\n", flush=True)
        args = [
            "--host",
            "localhost",
            "--port",
            str(cluster.port),
            "--dbname",
            "shop",
            "--user",
            "dumper_demo",
            "--auth",
            "password",
            "--sslmode",
            "verify-full",
            "--sslrootcert",
            str(cluster.ca_file),
            "--output",
            "./dumps",
            "--jobs",
            "2",
            "--log-format",
            "text",
        ]
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
        # The way back: an empty database, built from the dump alone (schema files, rows, sequences).
        restore = [
            "restore",
            f"dumps/{run_id}",
            *args[:4],
            "--dbname",
            "shop_copy",
            "--user",
            "restore_demo",
            *args[8:14],
            "--with-schema",
            "--jobs",
            "2",
            "--log-format",
            "text",
        ]
        print(f"\n$ dumper {' '.join(restore)}\n", flush=True)
        restored = subprocess.run([DUMPER, *restore], env=env, check=False).returncode
        if restored:
            return restored
        # And the proof: a scratch database, restored, dumped again, compared, dropped.
        drill = ["drill", f"dumps/{run_id}", *args[:6], "--user", "drill_demo", *args[8:14], "--log-format", "text"]
        print(f"\n$ dumper {' '.join(drill)}\n", flush=True)
        return subprocess.run([DUMPER, *drill], env=env, check=False).returncode
    finally:
        cluster.stop()
        print("stopped the throwaway PostgreSQL", flush=True)


if __name__ == "__main__":
    sys.exit(main())
