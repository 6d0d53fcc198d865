// Op schemas of the netspace_fast library, declared once; kernels are registered per dispatch key
// in their own files (pack_cpu.cpp, pack_cuda.cu).
#include <torch/library.h>

TORCH_LIBRARY(netspace_fast, m) {
  m.def(
      "pack_preps(Tensor[] tensors, int[] plan, float[] eps, int num_nets, int rows, int width, "
      "bool check_finite) -> Tensor");
}
