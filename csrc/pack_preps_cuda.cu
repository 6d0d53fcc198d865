// CUDA kernel of netspace_fast::pack_preps: every segment of every network in ONE launch.
//
// apex multi_tensor_apply style: the host builds a metadata table (source pointers, segment
// descriptors, and a block -> (network, segment, chunk) map), sends it with one async copy from
// pinned memory, and one launch covers all of it. The table lives in device memory rather than in
// the kernel's argument space, so it never fills and the call is one launch whatever B is.
// Only c10/cuda headers: ATen/cuda/CUDAContext.h pulls cuBLAS/cuSPARSE headers, which a minimal
// toolkit (the development machines') does not have.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstring>

#include "pack_preps.h"

namespace netspace_fast {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = kThreads * 16;  // values per block
constexpr int kSegInts = 10;              // kind, numel, offset, channels, src[5], eps (as double bits)

__device__ __forceinline__ int nonfinite(float v) { return !isfinite(v); }

__global__ void pack_kernel(const int64_t* __restrict__ meta, int64_t ptrs_off, int64_t segs_off,
                            int64_t chunks_off, int64_t tensors_per_net, int64_t nseg, int64_t per_net,
                            int64_t total, float* __restrict__ out, int* __restrict__ bad_flag) {
  const int64_t* chunk = meta + chunks_off + 3 * static_cast<int64_t>(blockIdx.x);
  const int64_t b = chunk[0], s = chunk[1], start = chunk[2];
  float* dst_net = out + b * per_net;
  int bad = 0;
  if (s == nseg) {  // zero padding
    const int64_t pad = per_net - total;
    const int64_t end = start + kChunk < pad ? start + kChunk : pad;
    for (int64_t i = start + threadIdx.x; i < end; i += kThreads) dst_net[total + i] = 0.f;
    return;
  }
  const int64_t* seg = meta + segs_off + kSegInts * s;
  const int64_t kind = seg[0], numel = seg[1], offset = seg[2], channels = seg[3];
  double eps_d;
  memcpy(&eps_d, seg + 9, sizeof(double));
  const float eps = static_cast<float>(eps_d);
  const int64_t* ptrs = meta + ptrs_off + b * tensors_per_net;
  auto src = [&](int i) -> const float* {
    return seg[4 + i] >= 0 ? reinterpret_cast<const float*>(ptrs[seg[4 + i]]) : nullptr;
  };
  const int64_t end = start + kChunk < numel ? start + kChunk : numel;
  float* dst = dst_net + offset;
  if (kind == kCopy) {
    const float* a = src(0);
    for (int64_t i = start + threadIdx.x; i < end; i += kThreads) {
      const float v = a[i];
      dst[i] = v;
      bad |= nonfinite(v);
    }
  } else if (kind == kFoldW) {
    const float *w = src(0), *gamma = src(1), *var = src(2);
    const int64_t K = numel / channels;
    for (int64_t i = start + threadIdx.x; i < end; i += kThreads) {
      const int64_t o = i / K;
      const float v = w[i] * (gamma[o] / sqrtf(var[o] + eps));
      dst[i] = v;
      bad |= nonfinite(v);
    }
  } else {
    const float *bias = src(0), *gamma = src(1), *beta = src(2), *mean = src(3), *var = src(4);
    for (int64_t i = start + threadIdx.x; i < end; i += kThreads) {
      const float scale = gamma[i] / sqrtf(var[i] + eps);
      const float v = ((bias ? bias[i] : 0.f) - mean[i]) * scale + beta[i];
      dst[i] = v;
      bad |= nonfinite(v);
    }
  }
  if (bad_flag && __syncthreads_or(bad) && threadIdx.x == 0) atomicOr(bad_flag, 1);
}

}  // namespace

at::Tensor pack_preps_cuda(at::TensorList tensors, c10::IntArrayRef plan, c10::ArrayRef<double> eps,
                           int64_t num_nets, int64_t rows, int64_t width, bool check_finite) {
  const CheckedPlan cp = check_pack_args(tensors, plan, eps, num_nets, rows, width);
  TORCH_CHECK_VALUE(num_nets > 0, "num_nets: the CUDA kernel needs at least one network");
  const auto device = tensors[0].device();
  TORCH_CHECK_VALUE(device.is_cuda(), "tensors: the CUDA kernel needs CUDA tensors, got ", device);
  c10::cuda::CUDAGuard guard(device);
  auto out = at::empty({num_nets, rows, width}, at::TensorOptions().dtype(at::kFloat).device(device));
  const int64_t T = cp.tensors_per_net;
  const int64_t nseg = static_cast<int64_t>(cp.segments.size());
  const int64_t per_net = rows * width;
  const int64_t pad = per_net - cp.total;

  std::vector<at::Tensor> owned;  // contiguous copies of non-contiguous sources
  // chunk count first, to size the one metadata buffer
  int64_t chunks_per_net = (pad + kChunk - 1) / kChunk;
  for (const auto& seg : cp.segments) chunks_per_net += (seg.numel + kChunk - 1) / kChunk;
  const int64_t nchunks = chunks_per_net * num_nets;
  if (nchunks == 0) return out;
  TORCH_CHECK(nchunks < (int64_t(1) << 31), "pack_preps: too much work for one launch (", nchunks, " blocks)");

  const int64_t ptrs_off = 0, segs_off = num_nets * T, chunks_off = segs_off + kSegInts * nseg;
  auto meta_host = at::empty({chunks_off + 3 * nchunks}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  int64_t* m = meta_host.mutable_data_ptr<int64_t>();
  for (int64_t i = 0; i < num_nets * T; ++i) {
    const at::Tensor& t = tensors[i];
    if (t.is_contiguous()) {
      m[ptrs_off + i] = reinterpret_cast<int64_t>(t.const_data_ptr<float>());
    } else {
      owned.push_back(t.contiguous());
      m[ptrs_off + i] = reinterpret_cast<int64_t>(owned.back().const_data_ptr<float>());
    }
  }
  for (int64_t s = 0; s < nseg; ++s) {
    const Segment& seg = cp.segments[s];
    int64_t* d = m + segs_off + kSegInts * s;
    d[0] = seg.kind;
    d[1] = seg.numel;
    d[2] = seg.offset;
    d[3] = seg.channels;
    for (int i = 0; i < 5; ++i) d[4 + i] = seg.src[i];
    std::memcpy(d + 9, &seg.eps, sizeof(double));
  }
  int64_t* c = m + chunks_off;
  for (int64_t b = 0; b < num_nets; ++b) {
    for (int64_t s = 0; s <= nseg; ++s) {
      const int64_t n = s < nseg ? cp.segments[s].numel : pad;
      for (int64_t start = 0; start < n; start += kChunk) {
        *c++ = b;
        *c++ = s;
        *c++ = start;
      }
    }
  }
  auto meta = meta_host.to(device, /*non_blocking=*/true);
  at::Tensor flag;
  if (check_finite) flag = at::zeros({1}, at::TensorOptions().dtype(at::kInt).device(device));
  auto stream = c10::cuda::getCurrentCUDAStream();
  pack_kernel<<<static_cast<unsigned>(nchunks), kThreads, 0, stream>>>(
      meta.const_data_ptr<int64_t>(), ptrs_off, segs_off, chunks_off, T, nseg, per_net, cp.total,
      out.mutable_data_ptr<float>(), check_finite ? flag.mutable_data_ptr<int>() : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // `owned` copies were made on this stream, so the caching allocator cannot hand their memory to
  // other work before this kernel has read them.
  if (check_finite) {
    TORCH_CHECK_VALUE(flag.item<int>() == 0, "non-finite value (NaN or Inf) in a parameter being packed");
  }
  return out;
}

TORCH_LIBRARY_IMPL(netspace_fast, CUDA, m) { m.impl("pack_preps", &pack_preps_cuda); }

}  // namespace netspace_fast
