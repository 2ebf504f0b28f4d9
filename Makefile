# Chassis developer loop. `make test` and `make demo` build .venv on first use
# with nothing but python3 -m venv and pip (uv, where it can be installed).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv compile lint test soak demo bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "chassis needs Python 3.11+")'
	@# uv installs the project and its dependencies in about 3 s where pip
	@# takes 16 (CI builds .venv on every run); pip stays the way where uv
	@# cannot be installed or fails (no index, an unsupported platform). uv
	@# is not asked to byte-compile: that compiled every file of every
	@# dependency (numpy, mypy, pygments, ...: 5 s of the 8), where the
	@# targets below run with bytecode writing on, so what is imported is
	@# compiled once, at its first import. The editable install is a
	@# plain path entry (editable_mode=compat): setuptools' default import
	@# hook costs every interpreter start 11 ms of CPU (pathlib and importlib
	@# machinery), in each of the suite's hundreds of CLI subprocesses.
	@# setuptools calls that mode transitional: pip, the fallback, installs
	@# in the default mode, so the day it goes only the speed is lost.
	@# With uv the venv starts without pip (ensurepip takes 3 s), this
	@# python's pip puts uv in it, and uv installs pip with the rest.
	@if $(PYTHON) -m venv --without-pip $(VENV) && \
	  $(PYTHON) -m pip --python $(BIN)/python install --quiet uv >/dev/null 2>&1 && \
	  $(BIN)/uv pip install --quiet --python $(BIN)/python \
	    -C editable_mode=compat -e '.[postgres,dev]' pip; then \
	  echo "installed with uv"; \
	else \
	  echo "installing with pip"; \
	  $(PYTHON) -m venv $(VENV) && \
	  $(BIN)/python -m pip install --quiet --upgrade pip && \
	  $(BIN)/python -m pip install --quiet -e '.[postgres,dev]'; \
	fi
	@touch $(STAMP)

# An editable install never byte-compiles the project: every start would
# compile each module it imports (and never caches it where
# PYTHONDONTWRITEBYTECODE is set). Kept current before demo, test and bench.
compile: $(STAMP)
	@$(BIN)/python -m compileall -q chassis ledger projections adapters proofs

venv: $(STAMP)

# mypy keeps its cache beside the user's other caches, not in the checkout:
# a fresh clone (as CI makes) then checks only what changed, 1 s instead of
# 10. The cache is per module and keyed by each source's hash, so clones at
# other revisions share it safely.
MYPY_CACHE_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/chassis/mypy
export MYPY_CACHE_DIR

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# The suite mostly waits (sshd, health windows, subprocesses): eight workers
# on two cores. With six, the two cores still stood idle for about 60 of
# 450 core-seconds, whenever most workers waited at once; eight left about
# 20 and ended the run in 0.93x the time (211 s against 228, back to back,
# for 2% more CPU). Each worker has its own tmp dirs, sshd ports and PostgreSQL
# schemas (tests/conftest.py). TEST_WORKERS=0 runs it in one process. The
# slowest tests are listed at the end: where the suite's time goes.
#
# Collecting once first writes pytest's assertion-rewritten test modules to
# __pycache__ (even where PYTHONDONTWRITEBYTECODE is set), so the workers
# read them instead of each rewriting all of tests/: 7 s of CPU a worker on a
# fresh clone, 2 s once cached. tests/precollect.py collects in two
# processes, over halves of tests/, beside lint.
# Work stealing keeps the last minute busy: a worker left with a queue of
# slow tests hands half of it to an idle one.
TEST_WORKERS ?= 8
test: compile
	@$(BIN)/python tests/precollect.py & collecting=$$!; \
	$(MAKE) --no-print-directory lint || { kill $$collecting 2>/dev/null; exit 1; }; \
	wait $$collecting || true
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal --durations=25

# Crash fuzzing at length: 200 random kills (tests/engine/test_crash_fuzz.py)
# instead of the suite's 12. CHASSIS_SOAK_SEED=N tries other seeds.
SOAK_RUNS ?= 200
soak: $(STAMP)
	CHASSIS_SOAK_RUNS=$(SOAK_RUNS) $(BIN)/python -m pytest tests/engine/test_crash_fuzz.py

demo: compile
	PYTHONDONTWRITEBYTECODE= $(BIN)/chassis demo

# ansible-core is only the deploy benchmark's baseline, never a dependency.
# bench/deploy.py times `chassis deploy` as a process on 1, 4 and 8 sshd hosts
# (6-7 minutes on a shared two-core machine); DEPLOY_BENCH_ARGS=--quick: 1 and 4.
DEPLOY_BENCH_ARGS ?=
bench: export PYTHONDONTWRITEBYTECODE =
bench: compile
	$(BIN)/python -m pip install --quiet 'ansible-core>=2.19,<2.20'
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/ledger.py
	$(BIN)/python bench/replay.py
	$(BIN)/python bench/read_cost.py
	$(BIN)/python bench/redaction.py
	$(BIN)/python bench/receipts.py
	$(BIN)/python bench/catchup.py
	$(BIN)/python bench/models.py
	$(BIN)/python bench/deploy.py $(DEPLOY_BENCH_ARGS)

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache .hypothesis
