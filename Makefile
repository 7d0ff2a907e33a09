# The two commands the README promises: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch first at the pinned CPU-friendly version: a bare `torch` requirement would pull a
# multi-GB CUDA build. GPU users install their CUDA torch before `pip install -e .[gpu]`.
TORCH ?= torch==2.13.0

.PHONY: demo test test-fast lint format lab venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[course,dev]"
	# rfc3987-syntax costs 2-3 s on every nbformat import and nothing needs it (DESIGN.md 4).
	-$(BIN)/python -m pip uninstall -q -y rfc3987-syntax
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/progemu-lite demo --out outputs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not browser"

lint: $(STAMP)
	$(BIN)/ruff check progemu_lite tests benchmarks
	$(BIN)/ruff format --check progemu_lite tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format progemu_lite tests benchmarks
	$(BIN)/ruff check --fix progemu_lite tests benchmarks

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

clean:
	rm -rf $(VENV) outputs book/_build
