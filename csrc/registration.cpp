// Op schemas of the netspace_fast library, declared once; kernels are registered per dispatch key
// in their own files (pack_preps_cpu.cpp, pack_preps_cuda.cu).
#include <torch/library.h>

TORCH_LIBRARY(netspace_fast, m) {
  m.def(
      "pack_preps(Tensor[] tensors, int[] plan, float[] eps, int num_nets, int rows, int width, "
      "bool check_finite) -> Tensor");
  // Batched layers over a (B, P) PRep batch (semantics: netspace_fast/ops/batched_layers_ref.py). The
  // forward ops return (y, z): z is the pre-activation when act == 2 (sin) and empty otherwise.
  // The backward ops write the layer's weight and bias gradients into grad_preps at the layer's
  // offsets and return (grad_x, grad_z); grad_z is the residual's gradient.
  m.def(
      "batched_conv2d(Tensor x, Tensor preps, int w_off, int b_off, int cout, int cin, int k, int stride, "
      "int padding, int act, Tensor? residual) -> (Tensor, Tensor)");
  m.def(
      "batched_conv2d_backward(Tensor grad_y, Tensor x, Tensor preps, Tensor y, Tensor z, int w_off, int b_off, "
      "int cout, int cin, int k, int stride, int padding, int act, Tensor(a!) grad_preps, bool need_grad_x) "
      "-> (Tensor, Tensor)");
  m.def(
      "batched_linear(Tensor x, Tensor preps, int w_off, int b_off, int out_features, int in_features, int act, "
      "Tensor? residual) -> (Tensor, Tensor)");
  m.def(
      "batched_linear_backward(Tensor grad_y, Tensor x, Tensor preps, Tensor y, Tensor z, int w_off, int b_off, "
      "int out_features, int in_features, int act, Tensor(a!) grad_preps, bool need_grad_x) -> (Tensor, Tensor)");
  // The minibatch gather of batched zoo training (semantics: netspace_fast/ops/gather_grouped.py):
  // out[j, b*C + c, y, x] = images[index[b, j], c, y + oy - pad, x' + ox - pad] (fill[c] outside,
  // 0 without fill), x' = W-1-x where flips[b, j], (oy, ox) = offsets[b, j] (pad, pad when absent);
  // channels-last.
  m.def(
      "gather_grouped(Tensor images, Tensor index, Tensor? offsets, Tensor? flips, int pad, float[]? fill=None) "
      "-> Tensor");
}
