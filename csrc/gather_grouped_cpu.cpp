// CPU kernel of netspace_fast::gather_grouped (semantics: netspace_fast/ops/gather_grouped.py,
// gather_grouped_ref): the minibatch gather of batched zoo training. Every instance b draws its
// own sample index (and, with augmentation, its own crop offset and flip) per batch position j;
// the result is the grouped channels-last input of the first convolution, out[j, b*C + c, y, x],
// written in ONE pass straight from the dataset images (any strides), padding (fill[c]) included.
// It replaces an index gather, a (B, n) -> (n, B) transpose and a channels-last relayout (three
// passes over the batch), and the per-instance crop/flip ops.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

namespace netspace_fast {

namespace {

template <typename T>
void gather_kernel(const T* img, const int64_t* s, const int64_t* idx, const int64_t* off, const bool* flip,
                   int64_t pad, const T* fill, T* out, int64_t B, int64_t n, int64_t C, int64_t H, int64_t W) {
  const int64_t row = W * B * C;  // one output row (j, y): W pixels of B*C channels
  at::parallel_for(0, n * H, 16, [&](int64_t begin, int64_t end) {
    for (int64_t jy = begin; jy < end; ++jy) {
      const int64_t j = jy / H, y = jy % H;
      T* orow = out + jy * row;
      for (int64_t b = 0; b < B; ++b) {
        const int64_t k = b * n + j;
        const int64_t oy = off ? off[2 * k] : pad, ox = off ? off[2 * k + 1] : pad;
        const bool fl = flip ? flip[k] : false;
        const int64_t sy = y + oy - pad;
        T* o = orow + b * C;
        if (sy < 0 || sy >= H) {
          for (int64_t x = 0; x < W; ++x) std::memcpy(o + x * B * C, fill, sizeof(T) * C);
          continue;
        }
        const T* irow = img + idx[k] * s[0] + sy * s[2];
        for (int64_t x = 0; x < W; ++x, o += B * C) {
          const int64_t sx = (fl ? W - 1 - x : x) + ox - pad;
          if (sx < 0 || sx >= W) {
            std::memcpy(o, fill, sizeof(T) * C);
            continue;
          }
          const T* src = irow + sx * s[3];
          for (int64_t c = 0; c < C; ++c) o[c] = src[c * s[1]];
        }
      }
    }
  });
}

at::Tensor gather_grouped_cpu(const at::Tensor& images, const at::Tensor& index, const c10::optional<at::Tensor>& offsets,
                              const c10::optional<at::Tensor>& flips, int64_t pad,
                              c10::optional<at::ArrayRef<double>> fill) {
  constexpr const char* op = "gather_grouped";
  TORCH_CHECK_VALUE(images.dim() == 4, op, ": images: expected (M, C, H, W), got ", images.sizes());
  TORCH_CHECK_TYPE(images.scalar_type() == at::kFloat || images.scalar_type() == at::kDouble, op,
                   ": images: expected float32 or float64, got ", images.scalar_type());
  TORCH_CHECK_VALUE(index.dim() == 2, op, ": index: expected (B, n), got ", index.sizes());
  TORCH_CHECK_TYPE(index.scalar_type() == at::kLong, op, ": index: expected int64, got ", index.scalar_type());
  TORCH_CHECK_VALUE(pad >= 0, op, ": pad: expected >= 0, got ", pad);
  const int64_t M = images.size(0), C = images.size(1), H = images.size(2), W = images.size(3);
  const int64_t B = index.size(0), n = index.size(1);
  auto idx = index.contiguous();
  const int64_t* ip = idx.data_ptr<int64_t>();
  for (int64_t k = 0; k < B * n; ++k)
    TORCH_CHECK_VALUE(ip[k] >= 0 && ip[k] < M, op, ": index: values must lie in [0, ", M, "), found ", ip[k]);
  at::Tensor off, fl;
  if (offsets.has_value()) {
    off = offsets->contiguous();
    TORCH_CHECK_TYPE(off.scalar_type() == at::kLong, op, ": offsets: expected int64, got ", off.scalar_type());
    TORCH_CHECK_VALUE(off.dim() == 3 && off.size(0) == B && off.size(1) == n && off.size(2) == 2, op,
                      ": offsets: expected (B, n, 2) = (", B, ", ", n, ", 2), got ", off.sizes());
    const int64_t* op_ = off.data_ptr<int64_t>();
    for (int64_t k = 0; k < 2 * B * n; ++k)
      TORCH_CHECK_VALUE(op_[k] >= 0 && op_[k] <= 2 * pad, op, ": offsets: values must lie in [0, 2*pad] = [0, ",
                        2 * pad, "], found ", op_[k]);
  }
  if (flips.has_value()) {
    fl = flips->contiguous();
    TORCH_CHECK_TYPE(fl.scalar_type() == at::kBool, op, ": flips: expected bool, got ", fl.scalar_type());
    TORCH_CHECK_VALUE(fl.dim() == 2 && fl.size(0) == B && fl.size(1) == n, op, ": flips: expected (B, n) = (", B,
                      ", ", n, "), got ", fl.sizes());
  }
  if (fill.has_value())
    TORCH_CHECK_VALUE(static_cast<int64_t>(fill->size()) == C, op, ": fill: expected one value per channel (", C,
                      "), got ", fill->size());
  auto out = at::empty({n, B * C, H, W}, images.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;
  const int64_t s[4] = {images.stride(0), images.stride(1), images.stride(2), images.stride(3)};
  AT_DISPATCH_FLOATING_TYPES(images.scalar_type(), op, [&] {
    std::vector<scalar_t> fv(C, scalar_t(0));
    if (fill.has_value())
      for (int64_t c = 0; c < C; ++c) fv[c] = static_cast<scalar_t>((*fill)[c]);
    gather_kernel<scalar_t>(images.const_data_ptr<scalar_t>(), s, ip, off.defined() ? off.const_data_ptr<int64_t>() : nullptr,
                            fl.defined() ? fl.const_data_ptr<bool>() : nullptr, pad, fv.data(), out.data_ptr<scalar_t>(),
                            B, n, C, H, W);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(netspace_fast, CPU, m) { m.impl("gather_grouped", &gather_grouped_cpu); }

}  // namespace netspace_fast
