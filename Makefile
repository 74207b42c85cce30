# Two commands on a fresh machine: `make demo` and `make test`. Both set themselves up.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned: a CPU build of 2.13.0 is on these machines; any other version downloads GBs.
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: setup stub-cuda sim-build demo test test-fast test-gpu bench clean

# The strict stand-in CUDA driver (tests/stubs/cuda_stub.c) that the driver-backend tests load as
# libcuda.so.1 in a subprocess (LD_LIBRARY_PATH=build/stubs), built with the system compiler.
STUB_CUDA := build/stubs/libcuda.so.1
CC ?= cc

$(STAMP): pyproject.toml
	@echo "setting up $(VENV) (log: $(VENV)/install.log) ..."
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install --upgrade pip "$(TORCH)" -e ".[torch,cuda,plots,metrics,solver,dev,test,cluster]" \
		> $(VENV)/install.log 2>&1 || { tail -30 $(VENV)/install.log; exit 1; }
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

$(STUB_CUDA): tests/stubs/cuda_stub.c
	@mkdir -p $(dir $@)
	$(CC) -O1 -g -Wall -Wextra -Wno-unused-parameter -shared -fPIC -fvisibility=hidden -pthread \
		-Wl,-soname,libcuda.so.1 -o $@ $<

stub-cuda: $(STUB_CUDA)

# The simulator's hot path compiled with Cython from the same sources (tools/build_sim.py): the
# extensions land beside the .py files; without a compiler it says so and everything runs
# interpreted. GPUSCHED_PURE=1 forces the interpreted modules.
SIM_SRC := $(wildcard scheduler_daemon/core/*.py scheduler_daemon/core/*.pxd) \
	$(wildcard scheduler_daemon/clock.p* scheduler_daemon/pump.p* scheduler_daemon/simulation.p*) \
	$(wildcard scheduler_daemon/devices/simgpu.p* scheduler_daemon/devices/_gctrack.p*) \
	scheduler_daemon/__init__.py tools/build_sim.py
SIM_BUILT := build/sim/.built

$(SIM_BUILT): $(STAMP) $(SIM_SRC)
	@$(BIN)/python tools/build_sim.py
	@mkdir -p $(dir $@) && touch $@

sim-build: $(SIM_BUILT)

setup: $(STAMP) $(STUB_CUDA) $(SIM_BUILT)

# The daemon against its baseline, then a placement and a geo training plan (pictures in out/demo).
demo: $(STAMP) $(SIM_BUILT)
	$(BIN)/gpusched demo
	@mkdir -p out/demo
	$(BIN)/gpusched place examples/placement/models.yaml --plot out/demo/placement.png
	$(BIN)/gpusched geo plan examples/geo/spec.yaml --out out/demo

test: $(STAMP) $(STUB_CUDA) $(SIM_BUILT)
	$(BIN)/python -m pytest -q

# In-process tests only (no daemon or CLI processes; a test that starts one fails, naming the
# marker): under a minute on 2 cores.
test-fast: $(STAMP) $(SIM_BUILT)
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

# On a GPU machine: the tests marked gpu (they skip elsewhere), then the rest.
test-gpu: $(STAMP) $(STUB_CUDA) $(SIM_BUILT)
	$(BIN)/python -m pytest -q -m gpu -rs
	$(BIN)/python -m pytest -q

bench: $(STAMP) $(SIM_BUILT)
	$(BIN)/gpusched bench overhead

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
	rm -f scheduler_daemon/*.so scheduler_daemon/*/*.so
