# The README's two commands: `make demo` and `make test`. .ci/run calls `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PG_BIN ?= /usr/lib/postgresql/15/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint unit bench postgres constraints clean image-test podman coverage

# The virtualenv, with the package (editable) and everything tests need, from pinned versions.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# PostgreSQL 15 server binaries and psql, PostGIS for it (the extension tests), and the tools
# the tests look at processes and sockets with (ss, pgrep); installed from Debian when missing
# (needs root).
POSTGIS := /usr/share/postgresql/15/extension/postgis.control
postgres:
	@if [ ! -x $(PG_BIN)/initdb ] || ! command -v psql >/dev/null || [ ! -f $(POSTGIS) ] \
			|| ! command -v ss >/dev/null || ! command -v pgrep >/dev/null; then \
		echo "installing PostgreSQL 15, PostGIS, iproute2 and procps from Debian's packages"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-15 postgresql-client-15 \
			postgresql-15-postgis-3 iproute2 procps; \
	fi

demo: $(STAMP) postgres
	$(BIN)/python -m devtools.demo

lint: $(STAMP)
	$(BIN)/ruff check dumper tests devtools bench
	$(BIN)/ruff format --check dumper tests devtools bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# Every database test runs against PostgreSQL 15 and 18; `make test MAJORS=15` runs one major alone.
MAJORS ?= 15,18
test: $(STAMP) postgres lint
	DUMPER_TEST_MAJORS=$(MAJORS) $(BIN)/pytest

# The tests that need no server (no PostgreSQL, no moto): seconds, for the edit-test loop.
unit: $(STAMP)
	DUMPER_TEST_UNIT=1 $(BIN)/pytest -m "not server" -p no:cacheprovider

# The suite under coverage, spawned CLI processes included; one major by default (the code paths are the same).
coverage: $(STAMP) postgres
	rm -f .coverage .coverage.*
	DUMPER_TEST_MAJORS=$(or $(COVERAGE_MAJORS),15) $(BIN)/coverage run -m pytest -p no:cacheprovider
	$(BIN)/coverage combine -q
	$(BIN)/coverage report --sort=cover

# podman, debootstrap and runc from Debian, for building and running the image here.
podman:
	@if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman debootstrap runc; \
	fi

# Build the Dockerfile on a Debian base made with debootstrap, run it read-only as UID 10001.
image-test: $(STAMP) postgres podman
	$(BIN)/python -m devtools.image_test

bench: $(STAMP) postgres
	$(BIN)/python -m bench.run

constraints: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^dumper' > constraints.txt

clean:
	rm -rf $(VENV) dumps .demo .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.*
