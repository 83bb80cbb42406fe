# pydl: the two commands of the README, each working on a fresh machine.
#   make run    set up, build, then the main job: `python -m pydl info` + `python -m pydl.demo`
#   make test   set up, build, then the whole test suite
# Set-up is a virtual environment in $(VENV) with pinned torch (a CUDA 13.0 build, which
# also brings Triton); the build compiles pydl._C, CUDA sources included when nvcc is found.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.14.1
export MAX_JOBS ?= 2

.PHONY: setup build test run bench clean

$(VENV)/.deps:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH) numpy pytest ninja pybind11 "setuptools>=64" wheel matplotlib scikit-learn hypothesis torchvision==0.29.1
	touch $@

setup: $(VENV)/.deps

build: setup
	$(PY) -m pip install -q --no-build-isolation -e .

test: build
	$(PY) -m pytest -q $(PYTEST_ARGS)

run: build
	$(PY) -m pydl info
	$(PY) -m pydl.demo

clean:
	rm -rf build *.egg-info pydl/_C*.so
