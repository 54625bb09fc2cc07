"""`make image-test`: build the Dockerfile with podman on a Debian base made here
(no registry is reachable), then run the image as it runs in Kubernetes
(read-only root filesystem, UID 10001, /tmp a tmpfs) against a throwaway
PostgreSQL, and check the manifest's row counts. Prints the image size."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from devtools.pgcluster import SUPERUSER, SUPERUSER_PASSWORD, Cluster

ROOT = Path(__file__).resolve().parent.parent
BASE = "localhost/dumper-base:bookworm"
IMAGE = "localhost/dumper:test"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def sh(*cmd: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, text=True, **kwargs)  # type: ignore[call-overload, no-any-return]


def podman_env(work: Path) -> dict[str, str]:
    # Known needs on this machine: runc, and ulimits within the session's own hard limits.
    nofile = min(int(subprocess.check_output(["sh", "-c", "ulimit -Hn"]).strip() or 1024), 65536)
    conf = work / "containers.conf"
    conf.write_text(
        f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc=4096:4096"]\n'
        'netns = "host"\n[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
    )
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def base_image(env: dict[str, str], work: Path) -> None:
    if subprocess.run(["podman", "image", "exists", BASE], env=env, check=False).returncode == 0:
        return
    rootfs = work / "rootfs"
    sh(
        "debootstrap",
        "--variant=minbase",
        "--include=python3,python3-venv,python-is-python3,ca-certificates",
        "bookworm",
        str(rootfs),
        "http://deb.debian.org/debian",
        stdout=subprocess.DEVNULL,
    )
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    sh("podman", "import", "-", BASE, stdin=tar.stdout, env=env)
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="dumper-image-"))
    env = podman_env(work)
    base_image(env, work)
    ca_in_context = ROOT / ".image-test-ca.pem"
    cluster = Cluster().start()
    try:
        shutil.copy(cluster.ca_file, ca_in_context)  # stands in for the RDS bundle (no download here)
        cert = ["-v", f"{HOST_CA}:/host-ca.crt:ro", "--build-arg", "PIP_CERT=/host-ca.crt"] if HOST_CA.exists() else []
        sh(
            "podman",
            "build",
            "--network",
            "host",
            *cert,
            "--build-arg",
            f"BASE={BASE}",
            "--build-arg",
            f"RDS_CA_FILE={ca_in_context.name}",
            "--build-arg",
            "PG_CLIENT=debian",
            "-t",
            IMAGE,
            str(ROOT),
            env=env,
            stdout=subprocess.DEVNULL,
        )
        size = sh(
            "podman", "image", "inspect", IMAGE, "--format", "{{.Size}}", env=env, capture_output=True
        ).stdout.strip()
        user = sh(
            "podman", "image", "inspect", IMAGE, "--format", "{{.Config.User}}", env=env, capture_output=True
        ).stdout.strip()
        assert user == "10001:10001", f"image user is {user!r}"

        cluster.psql("CREATE DATABASE shop;")
        cluster.psql(
            "CREATE TABLE orders AS SELECT g AS id, md5(g::text) AS h FROM generate_series(1, 25000) g;"
            'CREATE TABLE "Audit Log" (id int); INSERT INTO "Audit Log" VALUES (1), (2), (3);',
            "shop",
        )
        out = work / "out"
        out.mkdir()
        os.chown(out, 10001, 10001)
        run_args = [
            "--rm",
            "--read-only",
            "--user",
            "10001:10001",
            "--network",
            "host",
            "--tmpfs",
            "/tmp",  # noqa: S108
            "--security-opt",
            "no-new-privileges",
            "--cap-drop",
            "ALL",
            "-v",
            f"{out}:/out",
            "-e",
            "DUMPER_OUTPUT=/out",
            "-e",
            "DUMPER_AUTH=password",
            "-e",
            f"PGPASSWORD={SUPERUSER_PASSWORD}",
            "-e",
            "DUMPER_LOG_FORMAT=json",
            "-e",
            "DUMPER_HOST=localhost",
            "-e",
            f"DUMPER_PORT={cluster.port}",
            "-e",
            "DUMPER_DBNAME=shop",
            "-e",
            f"DUMPER_USER={SUPERUSER}",
        ]
        sh("podman", "run", *run_args, IMAGE, env=env)  # default command: run; CA: the image's default
        manifest = json.loads((out / (out / "LATEST").read_text().strip() / "manifest.json").read_text())
        rows = {t["table"]: t["rows"] for t in manifest["tables"]}
        assert rows == {"Audit Log": 3, "orders": 25000}, rows
        # The image holds the parquet extra: the same dump as Parquet files, read-only root and all.
        sh("podman", "run", *run_args, "-e", "DUMPER_FORMAT=parquet", "-e", "DUMPER_RUN_ID=parquet", IMAGE, env=env)
        parquet = json.loads((out / "parquet" / "manifest.json").read_text())
        assert {t["path"]: t["rows"] for t in parquet["tables"]} == {
            "public.Audit%20Log.parquet": 3,
            "public.orders.parquet": 25000,
        }, parquet["tables"]
        schema = manifest["schema_files"]  # the image's pg_dump, over TLS with the image's CA file
        assert schema["status"] == "written", schema
        print(
            f"image test passed: {IMAGE}, {int(size) / 1e6:.0f} MB (base {BASE}), rows {rows}, "
            f"schema files by pg_dump {schema['pg_dump']}"
        )
    finally:
        cluster.stop()
        ca_in_context.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
