# firegrid — two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip --disable-pip-version-check -q

.PHONY: demo test lint typecheck pytest bench system-deps venv venv-test clean format

demo: venv
	$(BIN)/firegrid demo --config examples/community.yaml

test: system-deps venv-test lint typecheck pytest

# Debian packages the tests talk to for real: a Mosquitto broker, InfluxDB 1.x, Chromium for the browser test and a
# CJK font so the dashboard's Chinese renders in its screenshots, the monthly report's PDF and charts and the QR
# sheet's PDF; poppler-utils (pdftoppm, pdftotext) so the report and QR sheet tests can render and read the PDFs;
# PostgreSQL's server binaries (initdb, postgres) for cluster mode's store tests, each run on its own free port.
system-deps:
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto mosquitto-clients"; \
	command -v influxd >/dev/null 2>&1 || missing="$$missing influxdb"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	dpkg -s fonts-wqy-microhei >/dev/null 2>&1 || missing="$$missing fonts-wqy-microhei"; \
	{ command -v pdftoppm && command -v pdftotext; } >/dev/null 2>&1 || missing="$$missing poppler-utils"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel

venv: $(BIN)/python
	$(PIP) install -e .

venv-test: $(BIN)/python
	$(PIP) install -e '.[test]'

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

format:
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck:
	$(BIN)/mypy

pytest:
	$(BIN)/pytest -q

bench: system-deps venv-test
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
