#include "pack_preps.h"

#include <c10/util/Exception.h>

namespace netspace_fast {

namespace {

void check_index(int64_t idx, int64_t count, int64_t seg, const char* field, bool optional) {
  TORCH_CHECK_VALUE((optional && idx == -1) || (idx >= 0 && idx < count), "plan: segment ", seg, " ", field,
                    " index must be in [", optional ? -1 : 0, ", ", count, "), got ", idx);
}

}  // namespace

CheckedPlan check_pack_args(const at::TensorList& tensors, c10::IntArrayRef plan, c10::ArrayRef<double> eps,
                            int64_t num_nets, int64_t rows, int64_t width) {
  TORCH_CHECK_VALUE(num_nets >= 0, "num_nets: expected >= 0, got ", num_nets);
  TORCH_CHECK_VALUE(rows >= 0, "rows: expected >= 0, got ", rows);
  TORCH_CHECK_VALUE(width > 0, "width: expected > 0, got ", width);
  TORCH_CHECK_VALUE(plan.size() % kSegFields == 0, "plan: expected a multiple of ", kSegFields,
                    " integers (7 per segment), got ", plan.size());
  const int64_t nseg = static_cast<int64_t>(plan.size()) / kSegFields;
  TORCH_CHECK_VALUE(static_cast<int64_t>(eps.size()) == nseg, "eps: expected one value per segment (", nseg,
                    "), got ", eps.size());
  CheckedPlan out;
  if (num_nets == 0) {
    TORCH_CHECK_VALUE(tensors.empty(), "tensors: expected none for num_nets=0, got ", tensors.size());
  } else {
    TORCH_CHECK_VALUE(!tensors.empty() && static_cast<int64_t>(tensors.size()) % num_nets == 0,
                      "tensors: expected a positive multiple of num_nets=", num_nets, " tensors, got ", tensors.size());
    out.tensors_per_net = static_cast<int64_t>(tensors.size()) / num_nets;
  }
  const int64_t T = out.tensors_per_net;
  out.segments.reserve(nseg);
  int64_t offset = 0;
  for (int64_t s = 0; s < nseg; ++s) {
    const int64_t* f = plan.data() + s * kSegFields;
    Segment seg{};
    seg.kind = f[0];
    seg.numel = f[1];
    seg.offset = offset;
    seg.eps = eps[s];
    for (int i = 0; i < 5; ++i) seg.src[i] = -1;
    TORCH_CHECK_VALUE(seg.numel >= 0, "plan: segment ", s, " numel must be >= 0, got ", seg.numel);
    switch (seg.kind) {
      case kCopy:
        seg.src[0] = f[2];
        if (num_nets) check_index(f[2], T, s, "source", false);
        break;
      case kFoldW:
        seg.src[0] = f[2];  // weight
        seg.src[1] = f[3];  // gamma
        seg.src[2] = f[4];  // var
        seg.channels = f[5];
        if (num_nets) {
          check_index(f[2], T, s, "weight", false);
          check_index(f[3], T, s, "gamma", false);
          check_index(f[4], T, s, "var", false);
        }
        TORCH_CHECK_VALUE(seg.channels > 0 && seg.numel % seg.channels == 0, "plan: segment ", s,
                          " channels must be > 0 and divide numel=", seg.numel, ", got ", seg.channels);
        TORCH_CHECK_VALUE(seg.eps >= 0, "eps: segment ", s, " expected >= 0, got ", seg.eps);
        break;
      case kFoldB:
        for (int i = 0; i < 5; ++i) seg.src[i] = f[2 + i];  // bias, gamma, beta, mean, var
        seg.channels = seg.numel;
        if (num_nets) {
          check_index(f[2], T, s, "bias", true);
          check_index(f[3], T, s, "gamma", false);
          check_index(f[4], T, s, "beta", false);
          check_index(f[5], T, s, "mean", false);
          check_index(f[6], T, s, "var", false);
        }
        TORCH_CHECK_VALUE(seg.eps >= 0, "eps: segment ", s, " expected >= 0, got ", seg.eps);
        break;
      default:
        TORCH_CHECK_VALUE(false, "plan: segment ", s, " kind must be 0 (copy), 1 (fold weight) or 2 (fold bias), got ",
                          seg.kind);
    }
    TORCH_CHECK_VALUE(!__builtin_add_overflow(offset, seg.numel, &offset), "plan: segment ", s,
                      " makes the total number of values overflow int64");
    out.segments.push_back(seg);
  }
  out.total = offset;
  int64_t per_net = 0, all = 0;
  TORCH_CHECK_VALUE(!__builtin_mul_overflow(rows, width, &per_net) && !__builtin_mul_overflow(per_net, num_nets, &all) &&
                        !__builtin_mul_overflow(all, int64_t(sizeof(float)), &all),
                    "rows: num_nets*rows*width = ", num_nets, "*", rows, "*", width, " float32 values overflow int64");
  TORCH_CHECK_VALUE(offset <= per_net, "rows: the plan writes ", offset, " values, more than rows*width = ", rows,
                    "*", width, " = ", per_net);
  if (num_nets == 0) return out;

  const auto device = tensors[0].device();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    TORCH_CHECK_VALUE(t.defined(), "tensors: tensor ", i, " is undefined");
    TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, "tensors: expected float32 parameters, tensor ", i,
                     " (network ", i / T, ", index ", i % T, ") is ", t.scalar_type());
    TORCH_CHECK_VALUE(t.device() == device, "tensors: expected every parameter on one device (", device,
                      "), tensor ", i, " (network ", i / T, ") is on ", t.device());
  }
  // sizes, for every network: a plan that disagrees with any tensor is refused
  for (int64_t b = 0; b < num_nets; ++b) {
    const auto* base = tensors.data() + b * T;
    for (int64_t s = 0; s < nseg; ++s) {
      const Segment& seg = out.segments[s];
      auto expect = [&](int64_t idx, int64_t n, const char* what) {
        if (idx < 0) return;
        TORCH_CHECK_VALUE(base[idx].numel() == n, "tensors: network ", b, " segment ", s, " expects ", what,
                          " (tensor ", idx, ") with ", n, " values, got ", base[idx].numel());
      };
      if (seg.kind == kCopy) {
        expect(seg.src[0], seg.numel, "the source");
      } else if (seg.kind == kFoldW) {
        expect(seg.src[0], seg.numel, "the conv weight");
        expect(seg.src[1], seg.channels, "gamma");
        expect(seg.src[2], seg.channels, "running_var");
      } else {
        expect(seg.src[0], seg.channels, "the conv bias");
        expect(seg.src[1], seg.channels, "gamma");
        expect(seg.src[2], seg.channels, "beta");
        expect(seg.src[3], seg.channels, "running_mean");
        expect(seg.src[4], seg.channels, "running_var");
      }
    }
  }
  return out;
}

}  // namespace netspace_fast
