"""The names the parser offers as choices, as plain tuples.

The registries they come from live in modules that import torch, numpy or the simulated GPU;
the parser needs only their names. tests/test_cli_startup.py asserts each tuple equals its
registry, so a new backend, preset or policy fails a test until it is added here.
"""

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# scheduler_daemon.devices.factory.BACKENDS
BACKENDS = ("auto", "sim", "fluid", "torch", "cuda")

# sorted(scheduler_daemon.core.gpu_specs.PRESETS)
GPU_PRESETS = ("A100", "H100", "T4", "V100")

# sorted(scheduler_daemon.core.policies.ALL_POLICIES)
POLICIES = ("clockwork", "cuda-ms", "cuda-ss", "edf", "fifo", "fifo-jbj", "fifo-kbk", "mps",
            "paella", "slo", "slo-srpt", "srpt", "triton")

# sorted(gpusched.workloads.WORKLOADS)
WORKLOADS = ("mixed", "tiny")

# gpusched.experiments.mixes.WORKLOADS
PAELLA_WORKLOADS = ("paella-mix", "orion-v100")

# gpusched.placement.solvers.METHODS
PLACE_SOLVERS = ("one-per-gpu", "mem-packing", "gslice", "gpulet", "shepherd", "heuristic",
                 "heuristic-trial", "cpsat")

# gpusched.cluster.route.POLICIES
ROUTE_POLICIES = ("expected-completion", "random", "round-robin")
