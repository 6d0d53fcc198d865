// Fused fold-and-pack of many networks' parameters into PRep batches (seed Sec. II and VI).
//
// One op, `netspace_fast::pack_preps(Tensor[] tensors, int[] plan, float[] eps, int num_nets,
// int rows, int width, bool check_finite) -> Tensor`, writes B = num_nets PReps of shape
// (rows, width). `tensors` holds the source tensors of every network, network-major: network b's
// tensor j is tensors[b * T + j] with T = len(tensors) / B. `plan` lists the segments written one
// after the other from offset 0 of each PRep (so there are no gaps and no overlaps by construction),
// 7 integers a segment: [kind, numel, a, b, c, d, e]:
//   kind 0 COPY   : out = tensors[a]                                  (numel values)
//   kind 1 FOLD_W : out[o, k] = w[o, k] * gamma[o] / sqrt(var[o] + eps) with a=w, b=gamma, c=var,
//                   d = C output channels (numel = C * K), seed Eq. 2 and 6
//   kind 2 FOLD_B : out[o] = (bias[o] - mean[o]) * gamma[o] / sqrt(var[o] + eps) + beta[o] with
//                   a=bias (or -1: no conv bias), b=gamma, c=beta, d=mean, e=var (numel = C), Eq. 3, 7
// Everything after the last segment is zero padding. `eps` has one value per segment (used by the
// fold kinds). Every index, size, dtype and device is checked against the tensors before a kernel
// runs, so no plan makes a kernel read or write out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <vector>

namespace netspace_fast {

constexpr int64_t kSegFields = 7;
enum SegKind : int64_t { kCopy = 0, kFoldW = 1, kFoldB = 2 };

struct Segment {
  int64_t kind;
  int64_t numel;
  int64_t offset;  // start in the PRep (derived: sum of the previous numels)
  int64_t src[5];  // tensor indices within one network's block, -1 for none
  int64_t channels;
  double eps;
};

struct CheckedPlan {
  std::vector<Segment> segments;
  int64_t tensors_per_net = 0;
  int64_t total = 0;  // values written by segments; the rest of each PRep is padding
};

// Validates everything the kernels rely on; raises ValueError / TypeError with the argument name.
CheckedPlan check_pack_args(const at::TensorList& tensors, c10::IntArrayRef plan, c10::ArrayRef<double> eps,
                            int64_t num_nets, int64_t rows, int64_t width);

at::Tensor pack_preps_cpu(at::TensorList tensors, c10::IntArrayRef plan, c10::ArrayRef<double> eps,
                          int64_t num_nets, int64_t rows, int64_t width, bool check_finite);

}  // namespace netspace_fast
