# Fresh-machine set-up and the project's main commands. Everything installs into .venv/.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP_QUIET ?= -q
PIP := $(PY) -m pip --disable-pip-version-check
CONSTRAINTS := requirements/constraints.txt
STAMP := $(VENV)/.installed
D2_SDIST_DIR := .cache/detectron2
LINT_PATHS := $(wildcard d2_detr tools datasets demo benchmarks tests) setup.py

.PHONY: install test lint pytest demo bench-install benchmarks format clean

install: $(STAMP)

# Idempotent: the stamp is only rebuilt when setup.py or the pins change.
$(STAMP): setup.py $(CONSTRAINTS) Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(PIP_QUIET) -c $(CONSTRAINTS) pip setuptools wheel
	$(PIP) install $(PIP_QUIET) -c $(CONSTRAINTS) torch torchvision
	@# Detectron2 v0.6 from the pb1-detectron2 sdist: pure Python (ext_modules=[]); its stale pins
	@# (black==21.4b2, iopath<0.1.10, caffe2's future/pydot) dropped: our setup.py lists its deps.
	@if ! $(PY) -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('detectron2') is None)"; then \
	  rm -rf $(D2_SDIST_DIR) && mkdir -p $(D2_SDIST_DIR) && \
	  $(PIP) download $(PIP_QUIET) --no-deps --no-build-isolation -d $(D2_SDIST_DIR) -c $(CONSTRAINTS) pb1-detectron2 && \
	  tar -xzf $(D2_SDIST_DIR)/pb1-detectron2-*.tar.gz -C $(D2_SDIST_DIR) && \
	  sed -i -e 's/^    ext_modules=get_extensions(),/    ext_modules=[],/' \
	    -e '/^ *"black==21.4b2",/d' -e '/^ *"future",/d' -e '/^ *"pydot",/d' \
	    -e 's/^ *"iopath>=0.1.7,<0.1.10",/        "iopath>=0.1.7",/' $(D2_SDIST_DIR)/pb1-detectron2-*/setup.py && \
	  grep -q '^    ext_modules=\[\],' $(D2_SDIST_DIR)/pb1-detectron2-*/setup.py && \
	  $(PIP) install $(PIP_QUIET) --no-deps --no-build-isolation $(D2_SDIST_DIR)/pb1-detectron2-*/ && \
	  d2=$$($(PY) -c 'import os,importlib.util as u;print(os.path.dirname(u.find_spec("detectron2").origin))') && \
	  rm -rf "$$d2/model_zoo/configs" && \
	  cp -r $(D2_SDIST_DIR)/pb1-detectron2-*/detectron2/model_zoo/configs "$$d2/model_zoo/configs"; \
	fi
	$(PIP) install $(PIP_QUIET) -c $(CONSTRAINTS) --no-build-isolation -e ".[dev]"
	$(PY) -c "import d2_detr, detectron2.modeling, torchvision"
	@touch $(STAMP)

lint: install
	$(VENV)/bin/black --check -q -l 100 $(LINT_PATHS)
	$(VENV)/bin/isort --check-only -q --profile black -l 100 $(LINT_PATHS)
	$(VENV)/bin/flake8 $(LINT_PATHS)

pytest: install
	$(PY) -m pytest -q tests --durations=25

test: lint pytest

format: install
	$(VENV)/bin/isort -q --profile black -l 100 $(LINT_PATHS)
	$(VENV)/bin/black -q -l 100 $(LINT_PATHS)

demo: install
	$(PY) demo/run_demo.py

bench-install: install
	$(PIP) install $(PIP_QUIET) -c $(CONSTRAINTS) -e ".[bench]"

benchmarks: bench-install
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) .cache output
