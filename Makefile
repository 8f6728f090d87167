# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv when missing and install the package with its extras.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS ?= test,dev,xformers,tracking
# Threads for torch on CPU; the machines here have 2 cores.
export OMP_NUM_THREADS ?= 2

.PHONY: install test test-fast bench demo lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

# Pass 1: everything on the PyTorch CPU path.  Pass 2: the Triton kernels under
# the Triton interpreter (TRITON_INTERPRET=1 must be set before triton.jit runs,
# so these tests get a process of their own).
test: $(STAMP)
	$(PY) -m pytest -q tests -m "not interpret"
	TRITON_INTERPRET=1 $(PY) -m pytest -q tests -m interpret

bench: $(STAMP)
	$(PY) -m pytest -q benchmarks --benchmark-only --benchmark-columns=median,iqr,ops --benchmark-sort=name

demo: $(STAMP)
	$(VENV)/bin/bridgetower pretrain

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
