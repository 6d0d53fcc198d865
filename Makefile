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

# Two pytest workers (pytest-xdist) for the Python and Triton parts: every test runs with one torch
# thread (tests/conftest.py), so two workers keep both cores of the 2-core CI machine busy. A file's
# tests stay on one worker (--dist loadfile: its module fixtures are built once). PYTEST_WORKERS=0
# runs them in one process; PYTEST_WORKERS=auto, one worker per core.
PYTEST_WORKERS ?= 2
XDIST := $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile)
# OMP_WAIT_POLICY=PASSIVE: an OpenMP thread waiting for work sleeps instead of spinning. The numerics
# part runs 2 threads and some tests' subprocesses run torch's default thread count: spinning threads
# take the cores from the other worker or job (measured under load: the numerics tests of two files
# 11-14 s passive, 47-80 s spinning). How sums are split depends on the thread count, not on this.
TEST_ENV := OMP_WAIT_POLICY=PASSIVE

test-python: install
	$(TEST_ENV) $(PY) -m pytest -q $(XDIST) -m "not triton and not accept" tests

# The tests that compare float32 sums across kernels (the named set NUMERICS in tests/conftest.py,
# marked `numerics`) once more on another MKL sgemm code path and thread count: a tolerance that
# encodes one machine's rounding fails here, on any x86 machine (COMPATIBLE where the CPU has no
# AVX2). One pytest process: its tests use both cores.
MKL_BRANCH := $(shell grep -qw avx2 /proc/cpuinfo 2>/dev/null && echo AVX2 || echo COMPATIBLE)
test-numerics: install
	$(TEST_ENV) MKL_CBWR=$(MKL_BRANCH) NETSPACE_TEST_THREADS=2 \
	  $(PY) -m pytest -q -m "numerics and not triton and not accept" tests

# Triton kernels on CPU tensors: the interpreter must be on before triton is imported
test-triton: install
	$(TEST_ENV) TRITON_INTERPRET=1 $(PY) -m pytest -q $(XDIST) -m triton tests

test-cpp: install
	PYTHON=$(PY) bash scripts/cmake_test.sh

# `make test`: install, then every part, each timed; the parts run even after one failed (all failures
# in one run), then a table of the times (seconds; also written to $(TEST_TIMES): part, seconds, exit
# status), and make test fails if any part did. A failed install stops it.
TEST_PARTS := test-python test-numerics test-triton test-cpp
TEST_TIMES := build/test-times.tsv
test:
	@mkdir -p $(dir $(TEST_TIMES)) && : > $(TEST_TIMES); \
	ms() { echo $$(( $$(date +%s%N) / 1000000 )); }; \
	record() { printf '%s\t%d.%d\t%d\n' $$1 $$(( $$2 / 1000 )) $$(( $$2 % 1000 / 100 )) $$3 >> $(TEST_TIMES); }; \
	t0=$$(ms); status=0; \
	for part in install $(TEST_PARTS); do \
	  t=$$(ms); rc=0; $(MAKE) --no-print-directory $$part || rc=$$?; record $$part $$(( $$(ms) - t )) $$rc; \
	  if [ $$rc != 0 ]; then status=1; [ $$part != install ] || break; fi; \
	done; \
	record total $$(( $$(ms) - t0 )) $$status; \
	echo; echo "make test: seconds per part (in $(TEST_TIMES) too)"; \
	awk -F'\t' '{ printf "  %-14s %8s s  %s\n", $$1, $$2, $$3 == 0 ? "ok" : "FAILED (exit " $$3 ")" }' $(TEST_TIMES); \
	exit $$status

sanitize: install
	PYTHON=$(PY) bash scripts/cmake_test.sh sanitize

# training-length acceptance runs (tens of minutes on 2 cores): figures go to BENCHMARKS.md. The real-data
# part (tests/test_realdata_accept.py, about three hours) needs Fashion-MNIST's idx files in FMNIST_ROOT; the
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
