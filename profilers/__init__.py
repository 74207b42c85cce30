"""Profiles of models' kernels: the model zoo (architectures traced on meta tensors), the
roofline that turns a kernel's FLOPs and bytes into a duration on a GPU preset, and replay of
measured kernel traces. Interference profiling and placement (USHER) come with issue 5.
"""
