// Large CPU outputs on transparent huge pages.
//
// A fresh output of hundreds of MB costs more in 4 KiB page faults than in the work that fills
// it (measured on the 2-core machines: 225 MB empty+fill 125 ms with 4 KiB pages, 38 ms with huge
// pages). Large outputs are therefore 2 MiB aligned and advised MADV_HUGEPAGE (what PyTorch's own
// CPU allocator does under THP_MEM_ALLOC_ENABLE=1); small ones use the ordinary allocator.
#pragma once

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/irange.h>

#include <cstdlib>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace netspace_fast {

inline at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (auto s : sizes) numel *= s;
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(c10::typeMetaToScalarType(options.dtype()));
  constexpr size_t kHuge = size_t(1) << 21;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (options.device().is_cpu() && bytes >= 4 * kHuge) {
    const size_t size = (bytes + kHuge - 1) / kHuge * kHuge;
    void* p = std::aligned_alloc(kHuge, size);
    if (p == nullptr) throw std::bad_alloc();
    madvise(p, size, MADV_HUGEPAGE);  // advice only: failure leaves ordinary pages
    return at::from_blob(p, sizes, [](void* q) { std::free(q); }, options);
  }
#endif
  return at::empty(sizes, options);
}

}  // namespace netspace_fast
