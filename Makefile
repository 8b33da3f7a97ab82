# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv themselves.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint format install model clean

# A torch already importable by python3 (a GPU machine's CUDA build) is kept: the venv sees the
# system site-packages. Otherwise torch==2.13.0 is installed first (a local CPU wheel on this kind
# of machine), so that no range below pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@if python3 -c "import torch" 2>/dev/null; then \
	  echo "keeping the system torch: $$(python3 -c 'import torch; print(torch.__version__)')"; \
	  python3 -m venv --system-site-packages $(VENV); \
	else \
	  python3 -m venv $(VENV) && $(PY) -m pip install -q torch==2.13.0; \
	fi
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

model: $(STAMP)
	$(PY) -m legaltune.model.embedded

test: $(STAMP) model
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest

demo: $(STAMP) model
	$(VENV)/bin/legaltune demo configs/demo.yaml

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) runs
