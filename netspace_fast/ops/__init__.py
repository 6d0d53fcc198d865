"""The ops: one module per op (wrapper, fake kernel, autograd, backend choice), its pure-PyTorch
reference (``*_ref``) and its Triton kernel (``*_triton``); the native kernels carry the same names in
``csrc/``. Backends are chosen in :mod:`netspace_fast.ops.backend`.

=========================  ============================  ====================================
op                         CPU                           CUDA
=========================  ============================  ====================================
``pack_preps``             C++ (pack_preps_cpu.cpp)      CUDA (pack_preps_cuda.cu); Triton in
                                                         builds without it
``batched_conv2d``,        C++ (batched_layers_cpu.cpp)  Triton (batched_layers_triton.py)
``batched_linear`` (+
``_backward``)
``gather_grouped``         C++ (gather_grouped_cpu.cpp)  Triton (gather_grouped_triton.py)
``conv_epilogue`` (+ bwd)  reference (epilogue_ref.py)   Triton (epilogue_triton.py)
=========================  ============================  ====================================

Each op's wrapper is the function of its module's name (``netspace_fast.ops.pack_preps.pack_preps``,
``netspace_fast.ops.gather_grouped.gather_grouped``); this package does not re-export those, so
``netspace_fast.ops.pack_preps`` always names the module.
"""

from . import backend, batched_layers, gather_grouped, pack_preps  # noqa: F401  (registers the ops' Python parts)
from .batched_layers import batched_conv2d, batched_linear
from .pack_preps_ref import COPY, FOLD_B, FOLD_W

__all__ = ["COPY", "FOLD_B", "FOLD_W", "backend", "batched_conv2d", "batched_layers", "batched_linear",
           "gather_grouped", "pack_preps"]
