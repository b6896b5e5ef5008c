# zcachefs: `make demo` and `make test` set everything up on a fresh Debian/Ubuntu
# machine (as root) and are idempotent.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PREFIX ?= /usr/local
STAMP  := $(VENV)/.installed

.PHONY: deps venv test test-fast lint demo soak install uninstall clean

deps:
	WITH_SYSTEMD=1 scripts/install-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: deps $(STAMP)

lint: venv
	$(BIN)/ruff check zcachefs tests scripts/*.py
	$(BIN)/mypy

test: venv lint
	$(BIN)/pytest -q

test-fast: venv
	$(BIN)/pytest -q -m 'not slow'

demo: venv
	PATH=$(CURDIR)/$(BIN):$$PATH scripts/demo

install: venv
	$(PYTHON) -m pip install --break-system-packages --prefix $(PREFIX) . 2>/dev/null \
	  || $(PYTHON) -m pip install --prefix $(PREFIX) .
	install -D -m 0644 systemd/zcachefs@.service /etc/systemd/system/zcachefs@.service
	install -d -m 0755 /etc/zcachefs

uninstall:
	$(PYTHON) -m pip uninstall -y zcachefs 2>/dev/null || true
	rm -f /etc/systemd/system/zcachefs@.service

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
