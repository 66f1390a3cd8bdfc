# emailsvc — `make run` starts the whole service locally; `make test` runs the suite;
# `make bench` measures it (benchmarks/README.md).
# Variables on the command line reach the processes: `make run WEB_PORT=8001
# FLOWER_PORT=5556`, `make run WEB_BIND=0.0.0.0` (docs/settings.md).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Installs read the lock files (every package pinned, dependencies included):
# requirements.lock is what runs, requirements-dev.lock adds the tests' packages,
# benchmarks/requirements.lock the bench's. `make lock` refreshes them from
# requirements.txt, requirements-dev.txt and benchmarks/requirements.txt.
# uv installs them (put into the virtualenv with pip, pinned); NO_UV=1, or a
# machine where uv cannot be had, installs them with pip instead.
UV_VERSION := 0.13.10
UV := $(BIN)/uv
# One stamp per set: `make run` after `make test` installs nothing, `make test`
# after `make run` adds only the tests' packages.
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
BENCH_STAMP := $(VENV)/.installed-bench
# When make started: `make run` prints how long it took from here until the
# service answered (config/devservices.py).
export MAKE_STARTED_AT := $(shell date +%s.%N)

.PHONY: run test venv lock clean bench bench-quick bench-profile

# install <lock file>: into $(VENV) (made first if missing), with uv unless NO_UV is set.
# The virtualenv starts without pip (ensurepip takes seconds): the interpreter's own pip
# puts uv into it; the pip fallback adds pip to it first.
ENSUREPIP := $(BIN)/python -m pip --version >/dev/null 2>&1 || $(BIN)/python -m ensurepip --upgrade >/dev/null
PIP_INSTALL := $(BIN)/python -m pip install --disable-pip-version-check --progress-bar on
define install
	@test -x $(BIN)/python || { echo "== creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv --without-pip $(VENV); }
	@test -n "$(NO_UV)" || test -x $(UV) || { echo "== installing uv $(UV_VERSION) into $(VENV) with pip"; \
		$(PYTHON) -m pip --python $(BIN)/python install --disable-pip-version-check --progress-bar on uv==$(UV_VERSION) \
		|| { $(ENSUREPIP) && $(PIP_INSTALL) uv==$(UV_VERSION); } \
		|| echo "uv could not be installed: pip installs instead (slower)"; }
	@echo "== installing $(1)"
	@if test -z "$(NO_UV)" && test -x $(UV); then $(UV) pip install --python $(BIN)/python -r $(1); \
		else $(ENSUREPIP) && $(PIP_INSTALL) -r $(1); fi
endef

# What CI makes before `make test`: the test environment.
venv: $(TEST_STAMP)

$(RUN_STAMP): requirements.lock
	$(call install,requirements.lock)
	@touch $@

# requirements-dev.lock holds every pin of requirements.lock, so it counts as installed too.
$(TEST_STAMP): requirements-dev.lock requirements.lock
	$(call install,requirements-dev.lock)
	@touch $@ $(RUN_STAMP)

$(BENCH_STAMP): $(TEST_STAMP) benchmarks/requirements.lock
	$(call install,benchmarks/requirements.lock)
	@touch $@

run: $(RUN_STAMP)
	$(BIN)/python -m config.devservices run

test: $(TEST_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run --quick $(BENCH_ARGS)

# `make bench-profile PROFILE=deliver-ses` (deliver, deliver-ses, accept, drain).
PROFILE ?= deliver
bench-profile: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run --profile $(PROFILE) $(BENCH_ARGS)

# Re-resolve the lock files after editing requirements*.txt (versions already
# locked are kept where they still fit; `make lock LOCK_ARGS=--upgrade` takes the
# newest of everything). Each lock is resolved within the one before it, so the
# three never disagree.
# lock <input> <lock file> [uv options]: rewritten only when it changes, so the stamps stay valid.
LOCK_COMPILE := $(UV) pip compile --quiet --universal --python-version 3.11 --custom-compile-command "make lock" $(LOCK_ARGS)
define lock
	@cp $(2) $(2).tmp 2>/dev/null || true
	$(LOCK_COMPILE) $(1) $(3) -o $(2).tmp
	@if cmp -s $(2).tmp $(2); then rm $(2).tmp; echo "$(2): unchanged"; else mv $(2).tmp $(2); echo "$(2): updated"; fi
endef
lock: $(RUN_STAMP)
	@test -x $(UV) || { echo "make lock needs uv: $(BIN)/python -m pip install uv==$(UV_VERSION)"; exit 1; }
	$(call lock,requirements.txt,requirements.lock)
	$(call lock,requirements-dev.txt,requirements-dev.lock,-c requirements.lock)
	$(call lock,benchmarks/requirements.txt,benchmarks/requirements.lock,-c requirements-dev.lock)

clean:
	rm -rf $(VENV) .sandbox .test-db.sqlite3* db.sqlite3*
