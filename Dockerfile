# syntax=docker/dockerfile:1
# dumper: slim, non-root, read-only root filesystem friendly.
#   podman build -t dumper .                                        (fetches the RDS CA bundle over verified HTTPS)
#   podman build --build-arg RDS_CA_SHA256=<sha256> -t dumper .     (and pins it to a checksum you verified)
#   podman build --build-arg RDS_CA_FILE=ca.pem -t dumper .         (offline: the bundle from the build context)
#   podman build --build-arg PG_CLIENT=debian -t dumper .           (pg_dump from Debian's own repository only)
ARG BASE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE} AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY dumper ./dumper
# Behind a TLS-intercepting proxy, mount its CA bundle and pass its path:
#   podman build -v /etc/ssl/certs/ca-certificates.crt:/host-ca.crt:ro --build-arg PIP_CERT=/host-ca.crt ...
ARG PIP_CERT=""
# The optional parts installed (--format parquet: pyarrow, numpy); EXTRAS="" for the smallest image.
ARG EXTRAS=parquet
# Exact versions from constraints.txt; a venv so the runtime stage copies one folder.
RUN python -m venv /opt/dumper \
    && /opt/dumper/bin/pip install --no-cache-dir --disable-pip-version-check ${PIP_CERT:+--cert "$PIP_CERT"} \
       -c constraints.txt ".${EXTRAS:+[$EXTRAS]}" \
    && /opt/dumper/bin/pip uninstall --yes pip setuptools

FROM ${BASE} AS ca
# The RDS CA bundle: fetched from AWS over HTTPS with the server's certificate
# verified (Python's default TLS context and the base image's CA store), or
# taken from the build context (offline builds, the test suite). Optionally
# pinned: RDS_CA_SHA256 (curl -s "$RDS_CA_URL" | sha256sum); AWS rotates the
# bundle, so a pin is yours to refresh. Either way it must load as CA certificates.
ARG RDS_CA_URL=https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem
ARG RDS_CA_SHA256=""
ARG RDS_CA_FILE=""
WORKDIR /ca
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY . /ctx
RUN set -eu; \
    if [ -n "${RDS_CA_FILE}" ]; then cp "/ctx/${RDS_CA_FILE}" global-bundle.pem; \
    else \
      case "${RDS_CA_URL}" in https://*) ;; *) echo "RDS_CA_URL must be https://" >&2; exit 1;; esac; \
      python -c "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], 'global-bundle.pem')" "${RDS_CA_URL}"; \
    fi; \
    if [ -n "${RDS_CA_SHA256}" ]; then echo "${RDS_CA_SHA256}  global-bundle.pem" | sha256sum -c -; fi; \
    grep -q "BEGIN CERTIFICATE" global-bundle.pem; \
    python -c "import ssl; n = ssl.create_default_context(cafile='global-bundle.pem').cert_store_stats()['x509_ca']; \
print(f'RDS CA bundle: {n} CA certificates'); assert n > 0"

FROM ${BASE}
# pg_dump for the schema files must be at least the server's major: the PostgreSQL
# project's repository (apt.postgresql.org), newest major, reads every major RDS runs.
# Its signing key comes from Debian's own postgresql-common package (signed by Debian),
# not from the network. PG_CLIENT=debian installs Debian's client instead (bookworm:
# 15), for builds that reach only Debian's mirrors (the test suite's build).
ARG PG_CLIENT=pgdg
ARG PG_MAJOR=18
WORKDIR /tmp/pgdg
# Why unpinned: the newest minor release of the client is the point (security fixes); the
# major is pinned by PG_MAJOR, the repository by its signing key.
# hadolint ignore=DL3008
RUN set -eu; \
    apt-get update -q; \
    if [ "${PG_CLIENT}" = pgdg ]; then \
      apt-get download -q postgresql-common; dpkg-deb -x postgresql-common_*.deb pc; \
      install -m 644 pc/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc /usr/share/keyrings/pgdg.asc; \
      . /etc/os-release; \
      echo "deb [signed-by=/usr/share/keyrings/pgdg.asc] https://apt.postgresql.org/pub/repos/apt ${VERSION_CODENAME}-pgdg main" \
        > /etc/apt/sources.list.d/pgdg.list; \
      apt-get update -q; apt-get install -y -q --no-install-recommends "postgresql-client-${PG_MAJOR}"; \
    else apt-get install -y -q --no-install-recommends postgresql-client; fi; \
    rm -rf /var/lib/apt/lists/* /tmp/pgdg/*; \
    ls /usr/lib/postgresql/*/bin/pg_dump
WORKDIR /
LABEL org.opencontainers.image.title="dumper" \
      org.opencontainers.image.description="PostgreSQL tables to per-table JSON files, IAM auth, verified manifest"
COPY --from=build /opt/dumper /opt/dumper
COPY --from=ca /ca/global-bundle.pem /etc/dumper/rds-global-bundle.pem
# Writes go to /tmp only (mount an emptyDir there); nothing is written to the root filesystem.
ENV PATH=/opt/dumper/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    DUMPER_SSLROOTCERT=/etc/dumper/rds-global-bundle.pem \
    DUMPER_OUTPUT=/tmp/dumps
USER 10001:10001
ENTRYPOINT ["dumper"]
CMD ["run"]
