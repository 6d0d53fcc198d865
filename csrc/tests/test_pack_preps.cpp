// C++ tests of netspace_fast::pack_preps (csrc/pack_preps.h), run by ctest (CMakeLists.txt).
//
// Every case calls the op two ways: the CPU kernel directly (netspace_fast::pack_preps_cpu) and
// through the dispatcher (the schema of registration.cpp, the CPU impl of pack_preps_cpu.cpp), and checks
// the result against a reference built from plain torch ops (cat + pad, folds in float64), or the
// error type for bad arguments. Built with NETSPACE_SANITIZE=ON, ASan/UBSan check that no plan makes
// the checks or the kernel touch memory out of bounds.
//
// Exit status 0 when all pass; the last line printed is "N passed, N failed".
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <iostream>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "pack_preps.h"

namespace {

using netspace_fast::kCopy;
using netspace_fast::kFoldB;
using netspace_fast::kFoldW;

int g_passed = 0;
int g_failed = 0;
std::string g_case;  // name of the running case, for failure messages

void fail(const std::string& what) {
  ++g_failed;
  std::cout << "FAIL [" << g_case << "] " << what << std::endl;
}
void pass() { ++g_passed; }
void expect(bool ok, const std::string& what) { ok ? pass() : fail(what); }

// ---------------------------------------------------------------------------------------------
// the two ways to call the op
using PackFn = std::function<at::Tensor(at::TensorList, c10::IntArrayRef, c10::ArrayRef<double>, int64_t, int64_t,
                                        int64_t, bool)>;

at::Tensor call_direct(at::TensorList t, c10::IntArrayRef plan, c10::ArrayRef<double> eps, int64_t n, int64_t rows,
                       int64_t width, bool check) {
  return netspace_fast::pack_preps_cpu(t, plan, eps, n, rows, width, check);
}

at::Tensor call_dispatch(at::TensorList t, c10::IntArrayRef plan, c10::ArrayRef<double> eps, int64_t n, int64_t rows,
                         int64_t width, bool check) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("netspace_fast::pack_preps", "")
                       .typed<at::Tensor(at::TensorList, c10::IntArrayRef, c10::ArrayRef<double>, int64_t, int64_t,
                                         int64_t, bool)>();
  return op.call(t, plan, eps, n, rows, width, check);
}

struct Caller {
  const char* name;
  PackFn fn;
};
const std::vector<Caller>& callers() {
  static const std::vector<Caller> c{{"direct", call_direct}, {"dispatcher", call_dispatch}};
  return c;
}

// ---------------------------------------------------------------------------------------------
// a problem: tensors (network-major), plan, eps, shape
struct Problem {
  std::vector<at::Tensor> tensors;
  std::vector<int64_t> plan;
  std::vector<double> eps;
  int64_t num_nets = 1;
  int64_t rows = 0;
  int64_t width = 1;
  bool check_finite = false;

  at::Tensor run(const PackFn& fn) const {
    return fn(tensors, plan, eps, num_nets, rows, width, check_finite);
  }
  void add(int64_t kind, int64_t numel, int64_t a, int64_t b = -1, int64_t c = -1, int64_t d = -1, int64_t e = -1,
           double ep = 1e-5) {
    plan.insert(plan.end(), {kind, numel, a, b, c, d, e});
    eps.push_back(ep);
  }
};

// The reference, from torch ops only: per network, the flattened segments (folds in float64)
// concatenated and zero padded to rows*width.
at::Tensor reference(const Problem& p) {
  const int64_t nseg = static_cast<int64_t>(p.plan.size()) / 7;
  const int64_t T = p.num_nets ? static_cast<int64_t>(p.tensors.size()) / p.num_nets : 0;
  std::vector<at::Tensor> nets;
  for (int64_t b = 0; b < p.num_nets; ++b) {
    auto src = [&](int64_t idx) { return p.tensors[b * T + idx].to(at::kDouble).reshape({-1}); };
    std::vector<at::Tensor> parts;
    for (int64_t s = 0; s < nseg; ++s) {
      const int64_t* f = p.plan.data() + 7 * s;
      const double ep = p.eps[s];
      if (f[0] == kCopy) {
        parts.push_back(src(f[2]));
      } else if (f[0] == kFoldW) {
        const int64_t C = f[5];
        auto scale = src(f[3]) / at::sqrt(src(f[4]) + ep);
        parts.push_back((src(f[2]).reshape({C, -1}) * scale.unsqueeze(1)).reshape({-1}));
      } else {
        auto scale = src(f[3]) / at::sqrt(src(f[6]) + ep);
        auto bias = f[2] >= 0 ? src(f[2]) : at::zeros({f[1]}, at::kDouble);
        parts.push_back((bias - src(f[5])) * scale + src(f[4]));
      }
    }
    auto flat = parts.empty() ? at::zeros({0}, at::kDouble) : at::cat(parts);
    const int64_t pad = p.rows * p.width - flat.numel();
    nets.push_back(at::constant_pad_nd(flat, {0, pad}, 0).view({p.rows, p.width}));
  }
  if (nets.empty()) return at::zeros({0, p.rows, p.width}, at::kDouble);
  return at::stack(nets);
}

int64_t plan_total(const Problem& p) {
  int64_t t = 0;
  for (size_t s = 0; s < p.plan.size(); s += 7) t += p.plan[s + 1];
  return t;
}

// Compares `out` with the reference: copies and padding exactly, folds to rel err <= 1e-5 (max
// abs error of a segment over the max abs value of the segment's reference).
bool matches_reference(const Problem& p, const at::Tensor& out, std::string* why) {
  std::ostringstream os;
  if (out.scalar_type() != at::kFloat || out.dim() != 3 || out.size(0) != p.num_nets || out.size(1) != p.rows ||
      out.size(2) != p.width) {
    os << "bad output: dtype " << out.scalar_type() << " sizes " << out.sizes();
    *why = os.str();
    return false;
  }
  if (!out.is_contiguous()) {
    *why = "output not contiguous";
    return false;
  }
  const at::Tensor ref = reference(p);
  const at::Tensor got = out.to(at::kDouble).reshape({p.num_nets, -1});
  const at::Tensor want = ref.reshape({p.num_nets, -1});
  const int64_t nseg = static_cast<int64_t>(p.plan.size()) / 7;
  int64_t off = 0;
  for (int64_t s = 0; s < nseg; ++s) {
    const int64_t kind = p.plan[7 * s], n = p.plan[7 * s + 1];
    auto g = got.narrow(1, off, n), w = want.narrow(1, off, n);
    if (kind == kCopy) {
      if (!at::equal(g, w)) {
        os << "segment " << s << " (copy, " << n << " values) differs";
        *why = os.str();
        return false;
      }
    } else if (n > 0) {
      const double err = (g - w).abs().max().item<double>();
      const double mag = w.abs().max().item<double>();
      if (!(err <= 1e-5 * std::max(mag, 1e-30))) {
        os << "segment " << s << " (kind " << kind << ", " << n << " values) rel err " << err / mag;
        *why = os.str();
        return false;
      }
    }
    off += n;
  }
  auto padding = got.narrow(1, off, got.size(1) - off);
  if (padding.numel() && !at::equal(padding, at::zeros_like(padding))) {
    *why = "padding is not all zeros";
    return false;
  }
  return true;
}

void check_against_reference(const Problem& p, const std::string& label) {
  for (const auto& c : callers()) {
    try {
      const at::Tensor out = p.run(c.fn);
      std::string why;
      expect(matches_reference(p, out, &why), label + " via " + c.name + ": " + why);
    } catch (const std::exception& e) {
      fail(label + " via " + c.name + ": unexpected exception: " + e.what());
    }
  }
}

std::string first_line(const char* s) {
  std::string m(s);
  return m.substr(0, m.find('\n'));
}

// Expects `p` to raise exactly E (via both callers) with `needle` in the message.
// (`direct_only`: the dispatcher cannot route an empty tensor list, see test_zero_nets)
template <class E>
void expect_raises(const Problem& p, const std::string& label, const std::string& needle, const char* type_name,
                   bool direct_only = false) {
  for (const auto& c : callers()) {
    if (direct_only && std::string(c.name) != "direct") continue;
    const std::string where = label + " via " + c.name;
    try {
      (void)p.run(c.fn);
      fail(where + ": no exception, expected " + type_name);
    } catch (const E& e) {
      const std::string msg = e.what_without_backtrace();
      expect(msg.find(needle) != std::string::npos,
             where + ": " + type_name + " without '" + needle + "': " + first_line(msg.c_str()));
    } catch (const c10::Error& e) {
      fail(where + ": wrong c10::Error type, expected " + type_name + ": " + first_line(e.what_without_backtrace()));
    } catch (const std::exception& e) {
      fail(where + ": wrong exception, expected " + type_name + ": " + first_line(e.what()));
    }
  }
}
void expect_value_error(const Problem& p, const std::string& label, const std::string& needle = "",
                        bool direct_only = false) {
  expect_raises<c10::ValueError>(p, label, needle, "ValueError", direct_only);
}
void expect_type_error(const Problem& p, const std::string& label, const std::string& needle = "") {
  expect_raises<c10::TypeError>(p, label, needle, "TypeError");
}

at::Tensor randn(at::IntArrayRef sizes) { return at::randn(sizes, at::kFloat); }
at::Tensor positive(at::IntArrayRef sizes) { return at::rand(sizes, at::kFloat) + 0.1f; }

// One conv + BN layer per network: [w (C,K), conv bias (C), gamma, beta, mean, var] at 0..5, plus a
// plain tensor at 6. The plan: fold weight, fold bias, copy.
Problem conv_bn_problem(int64_t nets, int64_t C, int64_t K, bool with_bias, int64_t width) {
  Problem p;
  p.num_nets = nets;
  p.width = width;
  for (int64_t b = 0; b < nets; ++b) {
    p.tensors.push_back(randn({C, K}));
    p.tensors.push_back(randn({C}));
    p.tensors.push_back(positive({C}));
    p.tensors.push_back(randn({C}));
    p.tensors.push_back(randn({C}));
    p.tensors.push_back(positive({C}));
    p.tensors.push_back(randn({3, 5}));
  }
  p.add(kFoldW, C * K, 0, 2, 5, C, -1, 1e-5);
  p.add(kFoldB, C, with_bias ? 1 : -1, 2, 3, 4, 5, 1e-3);
  p.add(kCopy, 15, 6);
  p.rows = (plan_total(p) + width - 1) / width + 1;
  return p;
}

// A small valid problem, the base of the bad-argument cases: 2 networks, 3 tensors each.
Problem small_valid() {
  Problem p;
  p.num_nets = 2;
  for (int b = 0; b < 2; ++b) {
    p.tensors.push_back(randn({2, 3}));
    p.tensors.push_back(positive({2}));
    p.tensors.push_back(positive({2}));
  }
  p.add(kCopy, 6, 0);
  p.add(kFoldW, 6, 0, 1, 2, 2);
  p.add(kFoldB, 2, -1, 1, 2, 1, 2);
  p.width = 4;
  p.rows = 4;  // 14 values written, 16 per PRep
  return p;
}

// ---------------------------------------------------------------------------------------------
// cases

void test_copy_hand_computed() {
  g_case = "copy, hand computed";
  // 3 networks, 3 tensors each: a (2,3), b (4), c (1); values a: 0..5, b: 10..13, c: 20, plus 100*net
  Problem p;
  p.num_nets = 3;
  std::vector<at::Tensor> expected;
  for (int64_t n = 0; n < 3; ++n) {
    auto a = at::arange(6, at::kFloat).view({2, 3}) + 100 * n;
    auto b = at::arange(10, 14, at::kFloat) + 100 * n;
    auto c = at::full({1}, 20.f + 100 * n, at::kFloat);
    p.tensors.insert(p.tensors.end(), {a, b, c});
    // plan below: c, a, b, a again (a source may be used twice): 1 + 6 + 4 + 6 = 17 values
    auto flat = at::cat({c, a.reshape({-1}), b, a.reshape({-1})});
    expected.push_back(at::constant_pad_nd(flat, {0, 20 - 17}, 0).view({4, 5}));
  }
  p.add(kCopy, 1, 2);
  p.add(kCopy, 6, 0);
  p.add(kCopy, 4, 1);
  p.add(kCopy, 6, 0);
  p.rows = 4;
  p.width = 5;
  const auto want = at::stack(expected);
  for (const auto& c : callers()) {
    auto out = p.run(c.fn);
    expect(out.sizes() == at::IntArrayRef({3, 4, 5}), std::string("sizes via ") + c.name);
    expect(at::equal(out, want), std::string("values via ") + c.name);
    // a few values by hand: net 1 starts with c = 120, then a = 100..105
    expect(out[1][0][0].item<float>() == 120.f && out[1][0][1].item<float>() == 100.f &&
               out[2][1][1].item<float>() == 205.f && out[0][2][0].item<float>() == 13.f,
           std::string("hand values via ") + c.name);
    expect(at::equal(out.reshape({3, -1}).narrow(1, 17, 3), at::zeros({3, 3})), std::string("padding via ") + c.name);
  }
  check_against_reference(p, "reference");
}

void test_copy_two_networks() {
  g_case = "copy, 2 networks";
  Problem p;
  p.num_nets = 2;
  for (int n = 0; n < 2; ++n) p.tensors.insert(p.tensors.end(), {randn({3, 3, 2}), randn({7}), randn({1, 1})});
  p.add(kCopy, 18, 0);
  p.add(kCopy, 7, 1);
  p.add(kCopy, 1, 2);
  p.width = 26;  // exactly full: no padding
  p.rows = 1;
  check_against_reference(p, "exactly full");
  p.width = 8;
  p.rows = 10;  // lots of padding (80 - 26)
  check_against_reference(p, "padded");
}

void test_fold() {
  g_case = "fold weight and bias";
  for (bool bias : {true, false}) {
    for (auto [C, K] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {4, 9}, {16, 27}, {64, 1}, {3, 257}}) {
      auto p = conv_bn_problem(3, C, K, bias, 32);
      check_against_reference(p, "C=" + std::to_string(C) + " K=" + std::to_string(K) + (bias ? " bias" : " no bias"));
    }
  }
  // explicit formula check on one value, independent of the reference helper
  auto p = conv_bn_problem(1, 2, 3, true, 8);
  auto out = call_dispatch(p.tensors, p.plan, p.eps, 1, p.rows, p.width, true).reshape({-1});
  const auto& t = p.tensors;
  const double g = t[2][1].item<double>(), v = t[5][1].item<double>();
  const double scale = g / std::sqrt(v + 1e-5), scale_b = g / std::sqrt(v + 1e-3);
  const double w12 = t[0][1][2].item<double>() * scale;
  const double b1 = (t[1][1].item<double>() - t[4][1].item<double>()) * scale_b + t[3][1].item<double>();
  expect(std::abs(out[5].item<double>() - w12) <= 1e-5 * std::abs(w12) + 1e-7, "fold weight formula");
  expect(std::abs(out[7].item<double>() - b1) <= 1e-5 * std::abs(b1) + 1e-7, "fold bias formula");
}

void test_padding_zeros() {
  g_case = "padding";
  // the output's memory is not zeroed by at::empty: fill freed memory with garbage first
  for (int i = 0; i < 4; ++i) (void)at::full({4096}, 7.f);
  Problem p;
  p.num_nets = 4;
  for (int n = 0; n < 4; ++n) p.tensors.push_back(randn({5}));
  p.add(kCopy, 5, 0);
  p.rows = 32;
  p.width = 32;
  for (const auto& c : callers()) {
    auto out = p.run(c.fn).reshape({4, -1});
    expect(at::equal(out.narrow(1, 5, 1024 - 5), at::zeros({4, 1019})), std::string("zeros via ") + c.name);
  }
  // no segments at all: every value is padding
  Problem e;
  e.num_nets = 2;
  e.tensors = {randn({1}), randn({1})};
  e.rows = 3;
  e.width = 3;
  for (const auto& c : callers()) expect(at::equal(e.run(c.fn), at::zeros({2, 3, 3})), std::string("empty plan via ") + c.name);
  // rows = 0 with num_nets > 0 (an output with no values): see test_regressions, null_zero_size
}

void test_non_contiguous() {
  g_case = "non-contiguous sources";
  Problem p;
  p.num_nets = 2;
  for (int n = 0; n < 2; ++n) {
    auto base = randn({6, 4});
    p.tensors.push_back(base.t());                        // 0: transposed (4, 6)
    p.tensors.push_back(randn({10}).slice(0, 0, 10, 2));  // 1: strided (5)
    p.tensors.push_back(randn({1, 3}).expand({4, 3}));    // 2: zero stride (4, 3)
    p.tensors.push_back(randn({5, 8}).t());               // 3: conv weight seen transposed (8, 5): C=8, K=5
    p.tensors.push_back(positive({16}).slice(0, 0, 16, 2));  // 4: gamma, strided (8)
    p.tensors.push_back(positive({8}));                   // 5: var
  }
  expect(!p.tensors[0].is_contiguous() && !p.tensors[1].is_contiguous() && !p.tensors[2].is_contiguous(),
         "the sources are non-contiguous");
  p.add(kCopy, 24, 0);
  p.add(kCopy, 5, 1);
  p.add(kCopy, 12, 2);
  p.add(kFoldW, 40, 3, 4, 5, 8);
  p.add(kFoldB, 8, -1, 4, 4, 5, 5);
  p.width = 16;
  p.rows = 6;
  check_against_reference(p, "transposed / strided / expanded");
  // the transposed copy keeps the logical (row-major) order of the view
  auto out = call_direct(p.tensors, p.plan, p.eps, 2, 6, 16, false).reshape({2, -1});
  expect(at::equal(out[1].narrow(0, 0, 24), p.tensors[6].contiguous().reshape({-1})), "transposed order");
}

void test_check_finite() {
  g_case = "check_finite";
  auto p = small_valid();
  p.check_finite = true;
  check_against_reference(p, "finite values pass");
  auto nan = p;
  nan.tensors[3] = nan.tensors[3].clone();
  nan.tensors[3].view({-1})[4] = std::numeric_limits<float>::quiet_NaN();  // network 1's copy source
  expect_value_error(nan, "NaN in a copy source", "non-finite");
  auto inf = p;
  inf.tensors[1] = inf.tensors[1].clone();
  inf.tensors[1][0] = std::numeric_limits<float>::infinity();  // network 0's gamma: folds give Inf/NaN
  expect_value_error(inf, "Inf in gamma", "non-finite");
  auto negvar = p;
  negvar.tensors[5] = at::full({2}, -1.f);  // network 1's var: sqrt(-1 + eps) is NaN
  expect_value_error(negvar, "negative variance", "non-finite");
  // without the check, the NaN is packed as is
  nan.check_finite = false;
  for (const auto& c : callers()) {
    auto out = nan.run(c.fn);
    expect(std::isnan(out[1].reshape({-1})[4].item<float>()), std::string("NaN copied via ") + c.name);
  }
}

void test_bad_plans() {
  g_case = "bad plans";
  const auto base = small_valid();
  auto with_field = [&](int seg, int field, int64_t value) {
    auto p = base;
    p.plan[7 * seg + field] = value;
    return p;
  };
  // indices
  expect_value_error(with_field(0, 2, 3), "copy source index == T", "index must be in");
  expect_value_error(with_field(0, 2, 1000000), "copy source index far out", "index must be in");
  expect_value_error(with_field(0, 2, -1), "copy source index -1", "index must be in");
  expect_value_error(with_field(0, 2, std::numeric_limits<int64_t>::min()), "copy source index INT64_MIN",
                     "index must be in");
  expect_value_error(with_field(1, 2, 3), "fold-w weight index out of range", "index must be in");
  expect_value_error(with_field(1, 3, -1), "fold-w gamma index -1", "index must be in");
  expect_value_error(with_field(1, 4, 7), "fold-w var index out of range", "index must be in");
  expect_value_error(with_field(2, 2, -2), "fold-b bias index -2", "index must be in");
  expect_value_error(with_field(2, 2, 3), "fold-b bias index out of range", "index must be in");
  expect_value_error(with_field(2, 3, -1), "fold-b gamma index -1", "index must be in");
  expect_value_error(with_field(2, 4, 3), "fold-b beta index out of range", "index must be in");
  expect_value_error(with_field(2, 5, -1), "fold-b mean index -1", "index must be in");
  expect_value_error(with_field(2, 6, 99), "fold-b var index out of range", "index must be in");
  // kinds and numels
  expect_value_error(with_field(0, 0, 3), "kind 3", "kind must be");
  expect_value_error(with_field(0, 0, -1), "kind -1", "kind must be");
  expect_value_error(with_field(0, 1, -6), "negative numel", "numel must be >= 0");
  expect_value_error(with_field(0, 1, 5), "copy numel smaller than the tensor", "values, got");
  expect_value_error(with_field(0, 1, 7), "copy numel larger than the tensor", "values, got");
  expect_value_error(with_field(1, 1, 8), "fold-w numel mismatch", "");
  expect_value_error(with_field(1, 5, 4), "fold-w channels do not divide numel", "channels must be");
  expect_value_error(with_field(1, 5, 0), "fold-w channels 0", "channels must be");
  expect_value_error(with_field(1, 5, -2), "fold-w channels negative", "channels must be");
  expect_value_error(with_field(1, 5, 1), "fold-w channels disagree with gamma", "gamma");
  expect_value_error(with_field(2, 1, 3), "fold-b numel disagrees with the tensors", "values, got");
  {
    auto p = base;  // numel matches network 0 but not network 1
    p.tensors[3] = randn({7});
    expect_value_error(p, "network 1 tensor size differs", "network 1");
  }
  // plan writing more than rows*width
  {
    auto p = base;
    p.rows = 3;  // 12 < 14
    expect_value_error(p, "plan writes more than rows*width", "more than rows*width");
    p.rows = 0;
    expect_value_error(p, "rows=0 with a non-empty plan", "more than rows*width");
    auto q = base;
    q.width = 13;
    q.rows = 1;
    expect_value_error(q, "one value too many", "more than rows*width");
    q.width = 14;
    check_against_reference(q, "exactly rows*width");
  }
  // plan length and eps count
  {
    auto p = base;
    p.plan.pop_back();
    expect_value_error(p, "plan length 20", "multiple of 7");
    p.plan.push_back(2);
    p.plan.push_back(0);
    expect_value_error(p, "plan length 22", "multiple of 7");
    auto q = base;
    q.eps.pop_back();
    expect_value_error(q, "eps count 2 for 3 segments", "one value per segment");
    q.eps = {1e-5, 1e-5, 1e-5, 1e-5};
    expect_value_error(q, "eps count 4 for 3 segments", "one value per segment");
    q.eps = {};
    expect_value_error(q, "no eps", "one value per segment");
    auto r = base;
    r.eps[1] = -1.0;
    expect_value_error(r, "negative eps", "expected >= 0");
  }
  // shape arguments
  {
    auto p = base;
    p.width = 0;
    expect_value_error(p, "width 0", "width");
    p.width = -4;
    expect_value_error(p, "width negative", "width");
    auto q = base;
    q.rows = -1;
    expect_value_error(q, "rows negative", "rows");
    auto r = base;
    r.num_nets = -2;
    expect_value_error(r, "num_nets negative", "num_nets");
    r.num_nets = 4;  // 6 tensors
    expect_value_error(r, "tensors not a multiple of num_nets", "multiple of num_nets");
    r.num_nets = 3;  // 2 tensors per net: index 2 is out of range
    expect_value_error(r, "fewer tensors per net than the plan uses", "index must be in");
  }
  // tensor list problems
  {
    auto p = base;
    p.tensors[4] = at::Tensor();
    expect_value_error(p, "undefined tensor", "undefined");
  }
}

void test_dtypes_and_devices() {
  g_case = "dtypes";
  auto p = small_valid();
  p.tensors[3] = p.tensors[3].to(at::kDouble);
  expect_type_error(p, "float64 tensor", "float32");
  auto q = small_valid();
  q.tensors[0] = q.tensors[0].to(at::kDouble);
  expect_type_error(q, "float64 first tensor", "float32");
  auto r = small_valid();
  r.tensors[2] = at::ones({2}, at::kInt);
  expect_type_error(r, "int32 tensor", "float32");
  auto h = small_valid();
  h.tensors[5] = h.tensors[5].to(at::kHalf);
  expect_type_error(h, "float16 tensor", "float32");
  g_case = "devices";
  // one meta tensor among CPU tensors: the kernel refuses mixed devices (called directly; the
  // dispatcher would pick the Meta key, which has no kernel, and raise NotImplementedError)
  auto m = small_valid();
  m.tensors[4] = at::empty({2}, at::TensorOptions().dtype(at::kFloat).device(at::kMeta));
  try {
    (void)m.run(call_direct);
    fail("mixed devices: no exception");
  } catch (const c10::ValueError& e) {
    expect(std::string(e.what_without_backtrace()).find("one device") != std::string::npos, "mixed devices message");
  } catch (const std::exception& e) {
    fail(std::string("mixed devices: wrong exception: ") + first_line(e.what()));
  }
  try {
    (void)m.run(call_dispatch);
    fail("mixed devices via dispatcher: no exception");
  } catch (const c10::Error&) {
    pass();
  }
  // all on meta: the CPU kernel itself refuses (the dispatcher has no Meta kernel to call)
  auto all = small_valid();
  for (auto& t : all.tensors) t = at::empty(t.sizes(), at::TensorOptions().dtype(at::kFloat).device(at::kMeta));
  try {
    (void)all.run(call_direct);
    fail("meta tensors: no exception");
  } catch (const c10::ValueError& e) {
    expect(std::string(e.what_without_backtrace()).find("CPU tensors") != std::string::npos, "meta tensors message");
  } catch (const std::exception& e) {
    fail(std::string("meta tensors: wrong exception: ") + first_line(e.what()));
  }
}

void test_zero_nets() {
  g_case = "num_nets=0";
  Problem p;
  p.num_nets = 0;
  p.rows = 3;
  p.width = 7;
  p.add(kCopy, 5, 0);  // indices are not checked without tensors; sizes still are
  p.add(kFoldW, 6, 1, 2, 3, 3);
  p.add(kFoldB, 4, -1, 1, 2, 3, 4);
  auto out = p.run(call_direct);
  expect(out.sizes() == at::IntArrayRef({0, 3, 7}) && out.scalar_type() == at::kFloat && out.device().is_cpu(),
         "shape (0, 3, 7) via direct");
  // Through the dispatcher an empty tensor list carries no dispatch key, so the CPU kernel is only
  // reached if the library registers a fallback for that case (the Python wrapper handles num_nets=0).
  // Checked when it works; reported, not counted, while the dispatcher refuses it.
  try {
    auto d = p.run(call_dispatch);
    expect(d.sizes() == at::IntArrayRef({0, 3, 7}) && d.scalar_type() == at::kFloat, "shape (0, 3, 7) via dispatcher");
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    if (msg.find("no tensor arguments") != std::string::npos) {
      // expected: the Python wrapper (netspace_fast.ops.pack_op) answers num_nets=0 itself
      std::cout << "note [num_nets=0 via dispatcher]: no kernel for an empty tensor list (handled in Python)"
                << std::endl;
    } else {
      fail("via dispatcher: " + first_line(msg.c_str()));
    }
  }
  auto big = p;
  big.rows = 2;  // 15 values > 14
  expect_value_error(big, "num_nets=0 still checks rows*width", "more than rows*width", true);
  auto t = p;
  t.tensors = {randn({5})};
  expect_value_error(t, "num_nets=0 with tensors", "expected none");  // has a tensor: dispatches
  Problem e;  // nothing at all
  e.num_nets = 0;
  e.rows = 0;
  e.width = 1;
  expect(e.run(call_direct).sizes() == at::IntArrayRef({0, 0, 1}), "(0, 0, 1) via direct");
}

void test_empty_segments() {
  g_case = "zero-size segments";
  // Empty sources are views of allocated tensors (a non-null data pointer): empty tensors with a
  // null data pointer are in test_regressions (null_zero_size).
  Problem p;
  p.num_nets = 2;
  for (int n = 0; n < 2; ++n)
    p.tensors.insert(p.tensors.end(), {randn({4}).narrow(0, 1, 0), randn({3, 2}).narrow(1, 0, 0), randn({4}),
                                       positive({2}).narrow(0, 2, 0)});
  p.add(kCopy, 0, 0);
  p.add(kCopy, 4, 2);
  p.add(kCopy, 0, 1);
  p.add(kFoldB, 0, 0, 3, 3, 3, 3);
  p.add(kFoldW, 0, 1, 3, 3, 3);  // 3 channels of K=0 ... but gamma has 0 values: refused
  p.width = 3;
  p.rows = 2;
  expect_value_error(p, "fold-w channels disagree with an empty gamma", "gamma");
  p.plan.resize(4 * 7);
  p.eps.resize(4);
  check_against_reference(p, "empty copy and fold segments");
  p.check_finite = true;
  check_against_reference(p, "empty segments with check_finite");
}

void test_many_tensors() {
  g_case = "many tensors";
  std::mt19937_64 rng(7);
  Problem p;
  p.num_nets = 3;
  const int T = 600;
  std::vector<int64_t> sizes(T);
  for (auto& s : sizes) s = 1 + static_cast<int64_t>(rng() % 40);
  for (int n = 0; n < 3; ++n)
    for (int j = 0; j < T; ++j) p.tensors.push_back(randn({sizes[j]}));
  for (int j = T - 1; j >= 0; --j) p.add(kCopy, sizes[j], j);
  p.width = 256;
  p.rows = (plan_total(p) + 255) / 256;
  check_against_reference(p, "600 copies x 3 networks");
}

// Random plans compared with the reference; sizes near 1 and near chunk-like boundaries.
void test_fuzz() {
  g_case = "fuzz";
  std::mt19937_64 rng(20261126);
  auto pick = [&](std::initializer_list<int64_t> v) { return *(v.begin() + rng() % v.size()); };
  auto pick_eps = [&](std::initializer_list<double> v) { return *(v.begin() + rng() % v.size()); };
  auto uni = [&](int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(rng() % static_cast<uint64_t>(hi - lo + 1)); };
  auto numel_choice = [&]() -> int64_t {
    switch (rng() % 4) {
      case 0: return pick({1, 2, 3});
      case 1: return pick({255, 256, 257, 4095, 4096, 4097});
      case 2: return pick({0, 1, 31, 32, 33, 511, 512, 513, 1023, 1024, 1025, 8191, 8192, 8193});
      default: return uni(1, 5000);
    }
  };
  int cases = 0, bad = 0;
  for (int it = 0; it < 150; ++it) {
    Problem p;
    p.num_nets = uni(1, 4);
    p.check_finite = rng() % 2;
    // the shapes of one network: (sizes, positive?) and, per segment, its plan fields
    struct Spec { std::vector<int64_t> shape; bool pos; bool noncontig; };
    std::vector<Spec> specs;
    auto new_tensor = [&](std::vector<int64_t> shape, bool pos) {
      specs.push_back({std::move(shape), pos, rng() % 4 == 0});
      return static_cast<int64_t>(specs.size() - 1);
    };
    const int nseg = static_cast<int>(uni(0, 12));
    for (int s = 0; s < nseg; ++s) {
      const int kind = static_cast<int>(rng() % 3);
      if (kind == kCopy) {
        int64_t src = -1;
        if (!specs.empty() && rng() % 4 == 0) src = uni(0, static_cast<int64_t>(specs.size()) - 1);  // reuse
        if (src < 0) src = new_tensor({numel_choice()}, false);
        int64_t n = 1;
        for (auto d : specs[src].shape) n *= d;
        p.add(kCopy, n, src);
      } else if (kind == kFoldW) {
        const int64_t C = pick({1, 2, 3, 16, 64, 255, 256, 257});
        const int64_t K = pick({1, 9, 16, 17, 27, 63});
        const int64_t w = new_tensor({C, K}, false), g = new_tensor({C}, true), v = new_tensor({C}, true);
        p.add(kFoldW, C * K, w, g, v, C, -1, pick_eps({0.0, 1e-5, 1e-3, 0.1}));
      } else {
        const int64_t C = pick({1, 2, 255, 256, 257, 4095, 4096, 4097});
        const int64_t bias = rng() % 3 == 0 ? -1 : new_tensor({C}, false);
        const int64_t g = new_tensor({C}, true), be = new_tensor({C}, false), m = new_tensor({C}, false),
                      v = new_tensor({C}, true);
        p.add(kFoldB, C, bias, g, be, m, v, pick_eps({0.0, 1e-5, 1e-3}));
      }
    }
    // tensors the plan does not use (and at least one tensor per network: see test_regressions)
    for (int64_t extra = uni(specs.empty() ? 1 : 0, 2); extra > 0; --extra) new_tensor({uni(1, 300)}, rng() % 2);
    // shuffle the tensor order within a network so that plan indices are not monotonic
    const int64_t T = static_cast<int64_t>(specs.size());
    std::vector<int64_t> perm(T);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);  // old index i -> new index perm[i]
    std::vector<Spec> shuffled(T);
    for (int64_t i = 0; i < T; ++i) shuffled[perm[i]] = specs[i];
    for (size_t s = 0; s < p.plan.size(); s += 7)
      for (int f = 2; f < 7; ++f) {
        const int64_t kind = p.plan[s];
        const bool is_index = (kind == kCopy && f == 2) || (kind == kFoldW && f <= 4) || kind == kFoldB;
        if (is_index && p.plan[s + f] >= 0) p.plan[s + f] = perm[p.plan[s + f]];
      }
    for (int64_t b = 0; b < p.num_nets; ++b) {
      for (const auto& sp : shuffled) {
        at::Tensor t = sp.pos ? positive(sp.shape) : randn(sp.shape);
        if (sp.noncontig) {  // same logical values and shape, strided memory
          auto shape2 = sp.shape;
          shape2.push_back(2);
          auto strided = at::empty(shape2, at::kFloat).select(-1, 0);
          strided.copy_(t);
          t = strided;
        }
        if (t.numel() == 0) t = randn({2}).narrow(0, 1, 0);  // non-null data (regression null_zero_size covers null)
        p.tensors.push_back(t);
      }
    }
    const int64_t total = plan_total(p);
    p.width = pick({1, 7, 64, 255, 256, 1000});
    // at least one row: an output without values is regression null_zero_size
    p.rows = std::max<int64_t>(1, (total + p.width - 1) / p.width + uni(0, 2));
    const int before = g_failed;
    check_against_reference(p, "iteration " + std::to_string(it) + " (" + std::to_string(p.num_nets) + " nets, " +
                                   std::to_string(nseg) + " segments, " + std::to_string(total) + " values)");
    ++cases;
    if (g_failed != before) ++bad;
    // every third problem also gets a corrupted copy of its plan that must be refused
    if (nseg > 0 && it % 3 == 0) {
      auto q = p;
      const int64_t s = uni(0, nseg - 1);
      switch (rng() % 4) {
        case 0: q.plan[7 * s + 2] = T + uni(0, 3); break;               // index out of range
        case 1: q.plan[7 * s + 1] += 1; break;                          // numel mismatch
        case 2: q.rows = total / q.width - (total % q.width ? 0 : 1);   // one row short
                if (total == 0) q.rows = -1;
                break;
        default: q.eps.push_back(1e-5); break;                          // eps count
      }
      expect_value_error(q, "iteration " + std::to_string(it) + " corrupted");
    }
  }
  std::cout << "fuzz: " << cases << " random problems, " << bad << " mismatched" << std::endl;
}

// Regressions: bugs the fuzzing found in the kernel files (all fixed; each case documents one).
void test_regressions() {
  // empty_tensor_list: num_nets = 2, no tensors, empty plan: T = 0, every check passes, then
  // check_pack_args reads tensors[0] of an empty list (pack_preps_check.cpp `tensors[0].device()`; the
  // same in pack_preps_cpu.cpp): a null/out-of-bounds read, SEGV. Expected: zeros, or a ValueError.
  g_case = "regression empty_tensor_list";
  {  // empty_tensor_list
    Problem p;
    p.num_nets = 2;
    p.rows = 3;
    p.width = 4;
    try {
      auto out = p.run(call_direct);
      expect(at::equal(out, at::zeros({2, 3, 4})), "no tensors: zeros");
    } catch (const c10::ValueError&) {
      pass();
    }
  }
  // null_zero_size: zero-size tensors have a null data pointer, and the kernel passes it to
  // memcpy/memset with size 0 (pack_preps_cpu.cpp copy_values' memcpy when a copy source is empty, and the
  // padding memset when the output has no values, e.g. rows = 0): undefined behaviour (the
  // arguments are declared nonnull), reported by UBSan. The results are right in practice.
  g_case = "regression null_zero_size";
  {  // null_zero_size
    Problem p;
    p.num_nets = 2;
    for (int n = 0; n < 2; ++n) p.tensors.insert(p.tensors.end(), {randn({0}), randn({3})});
    p.add(kCopy, 0, 0);
    p.add(kCopy, 3, 1);
    p.width = 2;
    p.rows = 2;
    check_against_reference(p, "an empty copy source");
    Problem e;
    e.num_nets = 2;
    e.tensors = {randn({1}), randn({1})};
    e.rows = 0;
    e.width = 3;
    for (const auto& c : callers()) {
      auto out = e.run(c.fn);
      expect(out.sizes() == at::IntArrayRef({2, 0, 3}), std::string("rows=0 via ") + c.name);
    }
  }
  // numel_overflow: check_pack_args sums the segments' numels in int64 without an overflow check
  // (pack_preps_check.cpp `offset += seg.numel`): signed overflow, UB (UBSan). Four numels of 2^61 wrap
  // past the rows*width check; the per-tensor size check refuses the plan afterwards, and with
  // num_nets = 0 nothing else looks at it. Expected: ValueError, with no overflow.
  g_case = "regression numel_overflow";
  {  // numel_overflow
    const int64_t big = int64_t{1} << 61;
    auto p = small_valid();
    p.plan[1] = big;
    p.add(kCopy, big, 0);
    p.add(kCopy, big, 0);
    p.add(kCopy, big, 0);
    expect_value_error(p, "numels that sum past INT64_MAX");
    p.tensors.clear();
    p.num_nets = 0;
    expect_value_error(p, "numels that sum past INT64_MAX, num_nets=0", "", true);
  }
  // rows_width_overflow: `rows * width` (pack_preps_check.cpp, and per_net in pack_preps_cpu.cpp) overflows
  // int64: UB (UBSan); rows = 2^61 + 2, width = 8 wraps to 16, so a 14-value plan passes the check
  // and only at::empty's own size check stops it, with a plain c10::Error, not a ValueError.
  g_case = "regression rows_width_overflow";
  {  // rows_width_overflow
    auto q = small_valid();
    q.rows = (int64_t{1} << 61) + 2;
    q.width = 8;
    expect_value_error(q, "rows*width past INT64_MAX", "rows");
    // wrapped to 2^23 values a network (>= 8 MiB in all): alloc_output's huge-page path, from_blob
    q.rows = (int64_t{1} << 61) + (int64_t{1} << 20);
    expect_value_error(q, "rows*width past INT64_MAX, large wrapped size", "rows");
  }
}

}  // namespace

int main() {
  at::manual_seed(1234);
  const std::vector<std::pair<const char*, void (*)()>> tests = {
      {"copy_hand_computed", test_copy_hand_computed},
      {"copy_two_networks", test_copy_two_networks},
      {"fold", test_fold},
      {"padding_zeros", test_padding_zeros},
      {"non_contiguous", test_non_contiguous},
      {"check_finite", test_check_finite},
      {"bad_plans", test_bad_plans},
      {"dtypes_and_devices", test_dtypes_and_devices},
      {"zero_nets", test_zero_nets},
      {"empty_segments", test_empty_segments},
      {"many_tensors", test_many_tensors},
      {"fuzz", test_fuzz},
      {"regressions", test_regressions},
  };
  for (const auto& [name, fn] : tests) {
    const int before = g_failed;
    g_case = name;
    const auto t0 = std::chrono::steady_clock::now();
    try {
      fn();
    } catch (const std::exception& e) {
      fail(std::string("uncaught exception: ") + first_line(e.what()));
    }
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%s %-20s %8.1f ms\n", g_failed == before ? "ok  " : "FAIL", name, ms);
    std::fflush(stdout);
  }
  std::cout << g_passed << " passed, " << g_failed << " failed" << std::endl;
  return g_failed == 0 ? 0 : 1;
}
