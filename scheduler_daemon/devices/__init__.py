"""Device backends: the simulated GPU (``simgpu``, the default without a GPU), ``fluid`` (a
zero-cost stand-in), ``torch_device`` (torch on CUDA or the CPU), ``cuda_driver`` (raw CUDA
kernels through the driver API); ``base`` is the interface and ``factory`` picks one."""
