# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Every target creates .venv when it is missing and installs the package with the extras it
# needs (docs/install.md lists them).  The core install comes first and brings torch (unless
# one is installed already); its version is then written to $(TORCH_PIN) and every extra is
# installed against that pin, so installing an extra never replaces the installed torch.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN := $(VENV)/torch-pin.txt
# the extras each target needs
TEST_EXTRAS := test,arrow,webdataset,plot,tracking,search
DEMO_EXTRAS := plot,search
BENCH_EXTRAS := test
LINT_EXTRAS := dev
# `make install`: everything the targets above use (xformers is left out: see docs/install.md)
EXTRAS ?= test,dev,arrow,webdataset,plot,tracking
# Threads for torch on CPU; the machines here have 2 cores.
export OMP_NUM_THREADS ?= 2

.PHONY: install test bench demo lint gpu-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# the core install, then the pin of the torch it left in .venv
$(TORCH_PIN): pyproject.toml bridgetower/__init__.py | $(PY)
	$(PY) -m pip install --quiet -e .
	$(PY) -c "from importlib.metadata import version; print('torch==' + version('torch'))" > $@

# one stamp per set of extras, installed against the torch pin
$(VENV)/.extras-%: $(TORCH_PIN)
	$(PY) -m pip install --quiet --constraint $(TORCH_PIN) -e ".[$*]"
	touch $@

install: $(VENV)/.extras-$(EXTRAS)

# Pass 1: everything on the PyTorch CPU path.  Pass 2: the Triton kernels under the Triton
# interpreter (TRITON_INTERPRET=1 must be set before triton.jit runs, so these tests get a
# process of their own).  A torch without Triton (the CPU wheels) skips pass 2, saying so.
test: $(VENV)/.extras-$(TEST_EXTRAS)
	$(PY) -m pytest -q tests -m "not interpret"
	@if $(PY) -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('triton') is None)"; \
	then echo "TRITON_INTERPRET=1 $(PY) -m pytest -q tests -m interpret"; \
		TRITON_INTERPRET=1 $(PY) -m pytest -q tests -m interpret; \
	else echo "make test: triton is not installed (this torch does not use it): pass 2 skipped"; fi

bench: $(VENV)/.extras-$(BENCH_EXTRAS)
	$(PY) -m pytest -q benchmarks --benchmark-only --benchmark-columns=median,iqr,ops --benchmark-sort=name

demo: $(VENV)/.extras-$(DEMO_EXTRAS)
	$(VENV)/bin/bridgetower pretrain

lint: $(VENV)/.extras-$(LINT_EXTRAS)
	$(PY) -m ruff check .

# On a CUDA machine: correctness and speed of the kernels and the model (a few minutes).
# xformers is added when a release fits the installed torch (the pin keeps torch as it is).
gpu-check: $(VENV)/.extras-$(BENCH_EXTRAS)
	$(PY) -m pip install --quiet --constraint $(TORCH_PIN) -e ".[$(BENCH_EXTRAS),xformers]" \
		|| echo "gpu-check: no xformers release fits $$(cat $(TORCH_PIN)); checking without it"
	$(PY) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks build dist
