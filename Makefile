# The two commands of the README: `make demo` and `make test`. Both do all set-up themselves.
#
# PyTorch is installed FIRST and explicitly, then pinned by a constraints file so that no other
# requirement can pull a different (e.g. multi-GB CUDA) build. GPU users override TORCH_SPEC and
# TORCH_PIP_ARGS, e.g.
#   make demo TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cu124" TORCH_SPEC=torch==2.5.1
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.metasparsity-installed
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test setup lint docs bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/torch-constraint.txt
	$(BIN)/python -m pip install --quiet -c $(VENV)/torch-constraint.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/metasparsity demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

docs: $(STAMP)
	$(BIN)/metasparsity config --keys --markdown > docs/configs.md.tmp && mv docs/configs.md.tmp docs/configs.md

clean:
	rm -rf runs .pytest_cache
