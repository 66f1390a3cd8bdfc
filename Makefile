# emailsvc — `make run` starts the whole service locally; `make test` runs the suite;
# `make bench` measures it (benchmarks/README.md).
# Variables on the command line reach the processes: `make run WEB_PORT=8001
# FLOWER_PORT=5556`, `make run WEB_BIND=0.0.0.0` (docs/settings.md).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test venv clean bench bench-quick bench-profile

BENCH_STAMP := $(VENV)/.bench-installed

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m config.devservices run

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

$(BENCH_STAMP): $(STAMP) benchmarks/requirements.txt
	$(BIN)/python -m pip install --quiet -r benchmarks/requirements.txt
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run --quick $(BENCH_ARGS)

# `make bench-profile PROFILE=deliver-ses` (deliver, deliver-ses, accept, drain).
PROFILE ?= deliver
bench-profile: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run --profile $(PROFILE) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .sandbox .test-db.sqlite3* db.sqlite3*
