# The two commands a new user needs: `make demo` and `make test`. Everything else is set up here.
SHELL := /bin/bash
PYTHON_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
MAX_JOBS ?= 2
export MAX_JOBS
NATIVE_SOURCES := $(wildcard csrc/*.cpp csrc/*.cu csrc/*.h) setup.py pyproject.toml

.PHONY: demo test test-python test-numerics test-triton test-cpp sanitize bench accept install clean

$(VENV)/.torch:
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	touch $@

# --no-build-isolation: an isolated build would resolve torch again (docs/BUILD-NOTES.md)
$(VENV)/.installed: $(VENV)/.torch $(NATIVE_SOURCES)
	$(PIP) install -q --no-build-isolation -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m netspace_fast.cli demo --out runs/demo

test-python: install
	$(PY) -m pytest -q -m "not triton and not accept" tests

# The tests that compare floats across kernels (marked `numerics`, tests/conftest.py) once more on
# another MKL sgemm code path and thread count: a tolerance that encodes one machine's rounding
# fails here, on any x86 machine (COMPATIBLE where the CPU has no AVX2)
MKL_BRANCH := $(shell grep -qw avx2 /proc/cpuinfo 2>/dev/null && echo AVX2 || echo COMPATIBLE)
test-numerics: install
	MKL_CBWR=$(MKL_BRANCH) NETSPACE_TEST_THREADS=2 $(PY) -m pytest -q -m "numerics and not triton and not accept" tests

# Triton kernels on CPU tensors: the interpreter must be on before triton is imported
test-triton: install
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m triton tests

test-cpp: install
	PYTHON=$(PY) bash scripts/cmake_test.sh

test: test-python test-numerics test-triton test-cpp

sanitize: install
	PYTHON=$(PY) bash scripts/cmake_test.sh sanitize

# training-length acceptance runs (tens of minutes on 2 cores): figures go to BENCHMARKS.md. The real-data
# part (tests/test_realdata_accept.py, about an hour) needs Fashion-MNIST's idx files in FMNIST_ROOT; the
# real-chair part (tests/sdf/test_chairs_accept.py, about an hour) the Sweet Home 3D catalogs in SH3F_ROOT
FMNIST_ROOT ?= /usr/share/datasets/fashion-mnist
SH3F_ROOT ?= /usr/share/sweethome3d/furniture
accept: install
	@$(PY) -c "from netspace_fast import data; data.tensors('fashion-mnist', 'test', root='$(FMNIST_ROOT)')" 2>/dev/null \
	  || echo "real-data acceptance skipped: Fashion-MNIST not found in $(FMNIST_ROOT); get it with 'apt-get install dataset-fashion-mnist' (or FMNIST_ROOT=DIR, where 'netspace zoo train --download --root DIR' fetches it)"
	@ls $(SH3F_ROOT)/*.sh3f >/dev/null 2>&1 \
	  || echo "real-chair acceptance skipped: no Sweet Home 3D catalogs (.sh3f) in $(SH3F_ROOT); get them with 'apt-get install sweethome3d-furniture' (or SH3F_ROOT=DIR, a folder of .sh3f catalogs)"
	NETSPACE_FMNIST_ROOT=$(FMNIST_ROOT) NETSPACE_SH3F_ROOT=$(SH3F_ROOT) OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -s -m accept tests

bench: install
	$(PY) -m pytest -q benchmarks --benchmark-columns=min,median,mean,rounds

clean:
	rm -rf build *.egg-info netspace_fast/_C*.so runs/demo
