"""Make ``torchvision`` (and so ``transformers``) importable next to a CPU build of torch.

The torchvision wheel that matches torch 2.13 on PyPI (0.28.0) is built against CUDA torch:
its C extension needs ``libtorch_cuda.so``, which a CPU build lacks, so it does not load; the
Python models then work, but its ``_meta_registrations`` registers fake kernels for the
``torchvision::nms``/``qnms`` operators without checking that they exist, and the import fails
(and with it ``transformers``, which imports torchvision when it is installed). Where the
extension does not load, ``ensure_torchvision()`` declares those two operators' schemas first
(no kernels: detection models, which call them, fail clearly; classification and segmentation
models never do). Call it before importing torchvision or transformers.
"""
from __future__ import annotations

import importlib.util
import logging
import os

log = logging.getLogger("gpusched.bench.compat")

_LIB = None


def ensure_torchvision() -> bool:
    """True when torchvision's own C extension loads; False when the schemas were declared in
    its place (or torchvision is not installed)."""
    global _LIB
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return False
    import torch
    if _LIB is not None:
        return False
    folder = os.path.dirname(spec.origin)
    libs = [f for f in os.listdir(folder) if f.startswith("_C.") and f.endswith((".so", ".pyd"))]
    if libs:
        try:
            torch.ops.load_library(os.path.join(folder, libs[0]))
            return True
        except (OSError, RuntimeError) as e:
            log.debug("torchvision's C extension does not load (%s)", e)
    _LIB = torch.library.Library("torchvision", "DEF")   # kept: the schemas live with it
    _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    log.debug("torchvision's C extension does not load with this torch (a CPU build): its "
             "detection operators are unavailable; the classification and segmentation models "
             "work")
    return False
