# Two commands on a fresh machine: `make demo` and `make test`. Both set themselves up.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned: a CPU build of 2.13.0 is on these machines; any other version downloads GBs.
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-gpu bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)" -e ".[torch,plots,metrics,solver,dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/gpusched demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# On a GPU machine: only the tests marked gpu (they skip elsewhere).
test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -m gpu -rs

bench: $(STAMP)
	$(BIN)/gpusched bench overhead

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
