# zcachefs: `make demo` and `make test` set everything up on a fresh Debian/Ubuntu
# machine (as root) and are idempotent. `make demo` (scripts/demo, ~2 minutes): the
# plain directory against zcachefs on 1.5x a 320 MiB memory budget, slow disk.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PREFIX ?= /usr/local
STAMP  := $(VENV)/.installed
WHEELS := $(VENV)/wheels

.PHONY: deps venv test test-fast test-unit test-adapter lint demo soak install uninstall clean

deps:
	WITH_SYSTEMD=1 scripts/install-deps

# The .pth file names this checkout on the venv's sys.path, so that scripts/ (run by the
# venv's Python) import the tests' shared helpers as the package tests.support, as the
# tests do; it is the venv's alone: `make install` ships only the zcachefs package.
# pyfuse3 is built from its source release with our patch first (scripts/build-pyfuse3:
# lets zcachefs turn off FUSE_CAP_AUTO_INVAL_DATA); the project's install keeps it.
$(STAMP): pyproject.toml scripts/build-pyfuse3 third_party/pyfuse3/*.patch
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	scripts/build-pyfuse3 $(BIN)/python $(WHEELS)
	$(BIN)/pip install -q -e '.[test]'
	echo '$(CURDIR)' > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/zcachefs-checkout.pth"
	touch $(STAMP)

venv: deps $(STAMP)

lint: venv
	$(BIN)/ruff check zcachefs tests scripts/*.py scripts/benchlib scripts/bench scripts/demo
	$(BIN)/mypy

# The default suite: everything but the tests marked slow (those run in `make soak`):
# tests/unit, tests/adapter and tests/mount (pyproject's testpaths). Tests that need root,
# fuse3 or /dev/fuse skip with the reason when these are missing.
test: venv lint
	$(BIN)/pytest -q -m 'not slow'

test-fast: venv
	$(BIN)/pytest -q -m 'not slow'

# One tier at a time: the pure core in process (seconds; no mounts, no root), and
# fs.Operations in process under pytest-trio (no kernel).
test-unit: venv
	$(BIN)/pytest -q -m 'not slow' tests/unit

test-adapter: venv
	$(BIN)/pytest -q -m 'not slow' tests/adapter

demo: venv
	PATH=$(CURDIR)/$(BIN):$$PATH scripts/demo

# `make install` (as root) puts the package and its Python dependencies in a private
# directory LIBDIR (pip --target: neither Debian's pip scheme nor the system's Python
# packages matter), a `zcachefs` launcher in BINDIR, the systemd unit in UNITDIR and
# the example config in CONFDIR. `make uninstall` removes exactly those (CONFDIR only
# if no instance config is left in it). DESTDIR stages everything under another root
# (packaging, tests); PIP_FLAGS adds pip options (e.g. --no-deps).
DESTDIR   ?=
BINDIR    ?= $(PREFIX)/bin
LIBDIR    ?= $(PREFIX)/lib/zcachefs
UNITDIR   ?= /etc/systemd/system
CONFDIR   ?= /etc/zcachefs
PIP_FLAGS ?=
# Unless PIP_FLAGS has --no-deps, LIBDIR gets our patched pyfuse3 (scripts/build-pyfuse3),
# built once into INSTALL_WHEELS.
NO_DEPS        = $(findstring --no-deps,$(PIP_FLAGS))
INSTALL_WHEELS ?= $(CURDIR)/build/wheels
# The interpreter the launcher runs, as an absolute path (extension modules are built for it).
INSTALL_PYTHON = $(shell $(PYTHON) -c 'import sys; print(sys.executable)')
SYSTEMD_RELOAD = if [ -z '$(DESTDIR)' ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
CHECK_LIBDIR   = case '$(LIBDIR)' in /*/zcachefs) ;; *) echo "LIBDIR must be /.../zcachefs" >&2; exit 1;; esac

install: $(if $(DESTDIR),,deps)
	@$(CHECK_LIBDIR)
	test -n '$(INSTALL_PYTHON)'
	rm -rf '$(DESTDIR)$(LIBDIR).new'
	$(if $(NO_DEPS),,scripts/build-pyfuse3 '$(PYTHON)' '$(INSTALL_WHEELS)' --wheel-only)
	$(PYTHON) -m pip install --quiet --root-user-action=ignore --no-warn-script-location \
	  --target '$(DESTDIR)$(LIBDIR).new' $(PIP_FLAGS) \
	  $(if $(NO_DEPS),,--find-links '$(INSTALL_WHEELS)' '$(shell scripts/build-pyfuse3 --requirement)') .
	rm -rf '$(DESTDIR)$(LIBDIR)'
	mv '$(DESTDIR)$(LIBDIR).new' '$(DESTDIR)$(LIBDIR)'
	install -d -m 0755 '$(DESTDIR)$(BINDIR)'
	printf '#!%s -I\n# zcachefs launcher (make install); the package lives in %s\nimport sys\n\nsys.path.insert(0, "%s")\nfrom zcachefs.cli import main\n\nsys.exit(main())\n' \
	  '$(INSTALL_PYTHON)' '$(LIBDIR)' '$(LIBDIR)' > '$(DESTDIR)$(BINDIR)/zcachefs'
	chmod 0755 '$(DESTDIR)$(BINDIR)/zcachefs'
	install -d -m 0755 '$(DESTDIR)$(UNITDIR)'
	sed 's|/usr/local/bin/zcachefs|$(BINDIR)/zcachefs|g' systemd/zcachefs@.service \
	  > '$(DESTDIR)$(UNITDIR)/zcachefs@.service'
	chmod 0644 '$(DESTDIR)$(UNITDIR)/zcachefs@.service'
	install -d -m 0755 '$(DESTDIR)$(CONFDIR)'
	install -m 0644 systemd/zcachefs.conf.example '$(DESTDIR)$(CONFDIR)/zcachefs.conf.example'
	@$(SYSTEMD_RELOAD)

uninstall:
	@$(CHECK_LIBDIR)
	rm -f '$(DESTDIR)$(UNITDIR)/zcachefs@.service' '$(DESTDIR)$(BINDIR)/zcachefs' \
	  '$(DESTDIR)$(CONFDIR)/zcachefs.conf.example'
	rm -rf '$(DESTDIR)$(LIBDIR)' '$(DESTDIR)$(LIBDIR).new'
	rmdir '$(DESTDIR)$(CONFDIR)' 2>/dev/null || true
	@$(SYSTEMD_RELOAD)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

# The seed replay (issue 5, BENCHMARKS.md): fio, iozone and real applications on a 1 GiB
# memory budget and a 50 MB/s disk, plain directory vs. zcachefs; as root.
# BENCH_ARGS passes options, e.g. BENCH_ARGS='--ram 2G --data /srv/mydata'.
# bench-deps installs iozone3 (enabling Debian's non-free component for apt if needed)
# and py-spy into the venv (for `scripts/bench --py-spy`).
.PHONY: bench bench-quick bench-deps
bench-deps: venv
	WITH_IOZONE=1 scripts/install-deps
	$(BIN)/pip install -q -e '.[test,profile]'

bench: venv bench-deps
	$(BIN)/python scripts/bench $(BENCH_ARGS)

bench-quick: venv bench-deps
	$(BIN)/python scripts/bench --quick $(BENCH_ARGS)

# The long cases, not run by `make test`: every test marked slow (the 100,000-file
# walk, the benchmark script's quick run, the control experiment without the watcher)
# and the soak variants, which skip unless ZCACHEFS_SOAK=1: a 10-minute RSS-bound run
# over 30,000 files, 40 rounds of fio verification under constant eviction, and five
# rounds of usemem on a busy machine (issue 12). As root, ~35 minutes (measured: the slow
# cases alone 11 minutes, of which the bench quick run 6.4 and the 100,000 files 4.2).
soak: venv
	ZCACHEFS_SOAK=1 $(BIN)/pytest -q -s -m slow
