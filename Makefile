# geounet — two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# CPU torch pin for machines without a GPU; GPU users install their CUDA torch first (README).
CONSTRAINTS ?= constraints-cpu.txt

.PHONY: venv lint format test test-soak demo bench clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# ruff (lint + format check) and mypy, configured in pyproject.toml
lint: venv
	$(VENV)/bin/ruff check geounet tests benchmarks
	$(VENV)/bin/ruff format --check geounet tests benchmarks
	$(VENV)/bin/mypy

format: venv
	$(VENV)/bin/ruff check --fix geounet tests benchmarks
	$(VENV)/bin/ruff format geounet tests benchmarks

# Tests marked soak run apart (`make test-soak`, about 11 min on 2 cores: the 40000^2 px memory
# test, 200+2 scenes, SIGKILL-and-resume, heap, tmpfs full disks, and the second case of some
# fault tests whose first case stays in), which would take `make test` past 15 minutes; the
# 12288^2 px memory test stays in.
test: lint
	$(PY) -m pytest -q -m "not soak"

test-soak: venv
	$(PY) -m pytest -q -m soak

demo: venv
	$(VENV)/bin/geounet demo

# The headline benchmarks (about 15 min on 2 cores); each suite's options: benchmarks/*.py --help.
bench: venv
	$(PY) benchmarks/bench_vectorize.py
	$(PY) benchmarks/bench_pipeline.py ratio --size 4096 --model geounet/weights/default.safetensors
	$(PY) benchmarks/bench_pipeline.py memory --sizes 4000 12000 --model geounet/weights/default.safetensors
	$(PY) benchmarks/bench_batch.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
