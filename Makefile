# nmx: the two commands of the README's quick start, and their parts.
# Installs into the Python environment that PYTHON belongs to (activate a venv first
# to keep nmx apart from the system's packages).

PYTHON ?= python3
# Only used where no torch is installed: this pin takes the local CPU build on our
# machines instead of the registry's newest CUDA build (several GB).
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test install install-test torch

demo: install
	$(PYTHON) -m nmx demo --overwrite

# the suite runs on TEST_WORKERS processes (pytest-xdist): about 9 minutes on 2 cores instead of 16
TEST_WORKERS ?= 2

test: install-test
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS)

torch:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH_SPEC)"

install: torch
	$(PYTHON) -m pip install -q -e .

install-test: torch
	$(PYTHON) -m pip install -q -e ".[test]"
