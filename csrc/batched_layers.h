// Batched layer ops: B networks whose weights live in a (B, P) PRep batch, evaluated in one call
// (the layers under batched_forward). Semantics: netspace_fast/ops/batched_layers_ref.py (the pure-PyTorch reference).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <tuple>

namespace netspace_fast {

enum Act : int64_t { kActNone = 0, kActLeaky = 1, kActSin = 2 };
// double, cast to the kernel's dtype where used: a float constant would make the float64 kernels
// use 0.009999999776 (float(0.01)) as the slope instead of the reference's 0.01
constexpr double kLeakySlope = 0.01;
constexpr double kSinW0 = 30.0;

std::tuple<at::Tensor, at::Tensor> batched_conv2d_cpu(const at::Tensor& x, const at::Tensor& preps, int64_t w_off,
                                                      int64_t b_off, int64_t cout, int64_t cin, int64_t k,
                                                      int64_t stride, int64_t padding, int64_t act,
                                                      const c10::optional<at::Tensor>& residual);

std::tuple<at::Tensor, at::Tensor> batched_conv2d_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                               const at::Tensor& preps, const at::Tensor& y,
                                                               const at::Tensor& z, int64_t w_off, int64_t b_off,
                                                               int64_t cout, int64_t cin, int64_t k, int64_t stride,
                                                               int64_t padding, int64_t act, at::Tensor& grad_preps,
                                                               bool need_grad_x);

std::tuple<at::Tensor, at::Tensor> batched_linear_cpu(const at::Tensor& x, const at::Tensor& preps, int64_t w_off,
                                                      int64_t b_off, int64_t out_features, int64_t in_features,
                                                      int64_t act, const c10::optional<at::Tensor>& residual);

std::tuple<at::Tensor, at::Tensor> batched_linear_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                               const at::Tensor& preps, const at::Tensor& y,
                                                               const at::Tensor& z, int64_t w_off, int64_t b_off,
                                                               int64_t out_features, int64_t in_features, int64_t act,
                                                               at::Tensor& grad_preps, bool need_grad_x);

}  // namespace netspace_fast
