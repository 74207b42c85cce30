# Cython declarations for gpu_specs.py (augmenting .pxd: the .py is the source; see
# tools/build_sim.py). Resources is a C struct of four counters when compiled.
cdef class Resources:
    cdef readonly long long threads, blocks, regs, smem
