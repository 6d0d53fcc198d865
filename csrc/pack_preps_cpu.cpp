// CPU kernel of netspace_fast::pack_preps: one parallel pass that copies or folds every segment of
// every network straight into the output and zeroes only the padding (each value written once).
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>

#include "alloc.h"
#include "pack_preps.h"

namespace netspace_fast {

namespace {

inline uint32_t nonfinite_bits(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return (bits & 0x7f800000u) == 0x7f800000u;  // exponent all ones: Inf or NaN
}

// Copy n float32 values as raw bits and report whether any is Inf/NaN (exponent bits all ones):
// the largest exponent field seen is 0x7f800000 exactly then. Pure integer work, so it vectorizes;
// an AVX2 clone is picked at load time where the CPU has it.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
uint32_t copy_check(uint32_t* __restrict__ dst, const uint32_t* __restrict__ src, int64_t n) {
  uint32_t top = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t v = src[i];
    dst[i] = v;
    const uint32_t e = v & 0x7f800000u;
    top = top > e ? top : e;
  }
  return top == 0x7f800000u;
}

// returns 1 if a non-finite value was written (only computed when `check`)
uint32_t copy_values(float* dst, const float* src, int64_t n, bool check) {
  if (n == 0) return 0;  // an empty source may have a null data pointer
  if (!check) {
    std::memcpy(dst, src, sizeof(float) * n);
    return 0;
  }
  return copy_check(reinterpret_cast<uint32_t*>(dst), reinterpret_cast<const uint32_t*>(src), n);
}

uint32_t run_segment(const Segment& seg, const float* const* src, float* dst, bool check) {
  if (seg.kind == kCopy) return copy_values(dst, src[0], seg.numel, check);
  uint32_t bad = 0;
  if (seg.kind == kFoldW) {
    const float* w = src[0];
    const float* gamma = src[1];
    const float* var = src[2];
    const int64_t C = seg.channels, K = seg.numel / seg.channels;
    for (int64_t o = 0; o < C; ++o) {
      // float32 throughout, as PyTorch's own fusion computes it
      const float scale = gamma[o] / std::sqrt(var[o] + static_cast<float>(seg.eps));
      const float* wr = w + o * K;
      float* dr = dst + o * K;
      for (int64_t k = 0; k < K; ++k) {
        const float v = wr[k] * scale;
        dr[k] = v;
        bad |= nonfinite_bits(v);
      }
    }
  } else {
    const float* bias = src[0];
    const float* gamma = src[1];
    const float* beta = src[2];
    const float* mean = src[3];
    const float* var = src[4];
    for (int64_t o = 0; o < seg.numel; ++o) {
      const float scale = gamma[o] / std::sqrt(var[o] + static_cast<float>(seg.eps));
      const float b = bias ? bias[o] : 0.0f;
      const float v = (b - mean[o]) * scale + beta[o];
      dst[o] = v;
      bad |= nonfinite_bits(v);
    }
  }
  return check ? bad : 0;
}

}  // namespace

at::Tensor pack_preps_cpu(at::TensorList tensors, c10::IntArrayRef plan, c10::ArrayRef<double> eps,
                          int64_t num_nets, int64_t rows, int64_t width, bool check_finite) {
  const CheckedPlan cp = check_pack_args(tensors, plan, eps, num_nets, rows, width);
  if (num_nets == 0) return at::empty({0, rows, width}, at::TensorOptions().dtype(at::kFloat).device(at::kCPU));
  TORCH_CHECK_VALUE(tensors[0].device().is_cpu(), "tensors: the CPU kernel needs CPU tensors, got ",
                    tensors[0].device());
  auto out = empty_large({num_nets, rows, width}, at::TensorOptions().dtype(at::kFloat).device(at::kCPU));
  const int64_t T = cp.tensors_per_net;
  const int64_t nseg = static_cast<int64_t>(cp.segments.size());
  const int64_t per_net = rows * width;

  // Non-contiguous parameters are handled (made contiguous once), not refused.
  std::vector<at::Tensor> owned;
  std::vector<const float*> ptrs(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (tensors[i].is_contiguous()) {
      ptrs[i] = tensors[i].const_data_ptr<float>();
    } else {
      owned.push_back(tensors[i].contiguous());
      ptrs[i] = owned.back().const_data_ptr<float>();
    }
  }

  float* out_ptr = out.mutable_data_ptr<float>();
  // one work item per (network, segment) plus one per network for the padding
  const int64_t items_per_net = nseg + 1;
  std::vector<uint8_t> bad(num_nets * items_per_net, 0);
  at::parallel_for(0, num_nets * items_per_net, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / items_per_net, s = item % items_per_net;
      float* dst_net = out_ptr + b * per_net;
      if (s == nseg) {
        if (per_net > cp.total) std::memset(dst_net + cp.total, 0, sizeof(float) * (per_net - cp.total));
        continue;
      }
      const Segment& seg = cp.segments[s];
      const float* src[5];
      for (int i = 0; i < 5; ++i) src[i] = seg.src[i] >= 0 ? ptrs[b * T + seg.src[i]] : nullptr;
      bad[item] = static_cast<uint8_t>(run_segment(seg, src, dst_net + seg.offset, check_finite));
    }
  });
  if (check_finite) {
    for (int64_t item = 0; item < static_cast<int64_t>(bad.size()); ++item) {
      TORCH_CHECK_VALUE(!bad[item], "non-finite value (NaN or Inf) in network ", item / items_per_net,
                        ", segment ", item % items_per_net, " being packed");
    }
  }
  return out;
}

TORCH_LIBRARY_IMPL(netspace_fast, CPU, m) { m.impl("pack_preps", &pack_preps_cpu); }
// A call with no tensor (num_nets = 0, or a plan without tensors) carries no dispatch key: it lands
// here and gets the CPU kernel's checks and its empty result.
TORCH_LIBRARY_IMPL(netspace_fast, CompositeExplicitAutograd, m) { m.impl("pack_preps", &pack_preps_cpu); }

}  // namespace netspace_fast
