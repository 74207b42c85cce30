"""gpusched: the command line, workloads, load generator and benchmarks."""
