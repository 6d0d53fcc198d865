// C++ tests of the batched layer ops (csrc/batched_layers_cpu.cpp) through the dispatcher:
// netspace_fast::batched_conv2d, batched_conv2d_backward, batched_linear, batched_linear_backward.
//
// Every case is checked against a plain-loop reference computed here in float64 (the direct
// convolution / matrix product, bias, residual, activation; and their gradients), never against
// another ATen call. The backward ops must write the weight and bias gradients into their slices
// of grad_preps and leave every other value of it untouched (checked with a sentinel). The
// kernels' own parallel loops (the epilogue over B*N chunks, the activation gradient over 16384
// values per chunk) run with 1 and with 4 threads on shapes large enough to split. Built with
// NETSPACE_SANITIZE=ON (`make sanitize`), ASan/UBSan check every access. Python-level tests of the
// ops: tests/ops/test_batched_layers.py.
//
// Exit status 0 when all pass; the last line printed is "N passed, N failed".
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

namespace {

int g_passed = 0, g_failed = 0;
std::string g_case;

void expect(bool ok, const std::string& what) {
  if (ok) {
    ++g_passed;
  } else {
    ++g_failed;
    std::cout << "FAIL [" << g_case << "] " << what << std::endl;
  }
}

constexpr double kSlope = 0.01, kW0 = 30.0, kSentinel = 123.25;
using Pair = std::tuple<at::Tensor, at::Tensor>;
using OptT = c10::optional<at::Tensor>;

// ---------------------------------------------------------------------------------------------
// the ops, through the dispatcher (the schemas of registration.cpp, the CPU kernels)

Pair conv(const at::Tensor& x, const at::Tensor& preps, int64_t w_off, int64_t b_off, int64_t cout, int64_t cin,
          int64_t k, int64_t stride, int64_t padding, int64_t act, const OptT& residual) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("netspace_fast::batched_conv2d", "")
                       .typed<Pair(const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t, int64_t, int64_t,
                                   int64_t, int64_t, int64_t, const OptT&)>();
  return op.call(x, preps, w_off, b_off, cout, cin, k, stride, padding, act, residual);
}

Pair conv_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& preps, const at::Tensor& y,
                   const at::Tensor& z, int64_t w_off, int64_t b_off, int64_t cout, int64_t cin, int64_t k,
                   int64_t stride, int64_t padding, int64_t act, at::Tensor& grad_preps, bool need_grad_x) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("netspace_fast::batched_conv2d_backward", "")
                       .typed<Pair(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   const at::Tensor&, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                   int64_t, at::Tensor&, bool)>();
  return op.call(grad_y, x, preps, y, z, w_off, b_off, cout, cin, k, stride, padding, act, grad_preps, need_grad_x);
}

Pair linear(const at::Tensor& x, const at::Tensor& preps, int64_t w_off, int64_t b_off, int64_t out, int64_t in,
            int64_t act, const OptT& residual) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("netspace_fast::batched_linear", "")
                       .typed<Pair(const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t, int64_t, int64_t,
                                   const OptT&)>();
  return op.call(x, preps, w_off, b_off, out, in, act, residual);
}

Pair linear_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& preps, const at::Tensor& y,
                     const at::Tensor& z, int64_t w_off, int64_t b_off, int64_t out, int64_t in, int64_t act,
                     at::Tensor& grad_preps, bool need_grad_x) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("netspace_fast::batched_linear_backward", "")
                       .typed<Pair(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   const at::Tensor&, int64_t, int64_t, int64_t, int64_t, int64_t, at::Tensor&, bool)>();
  return op.call(grad_y, x, preps, y, z, w_off, b_off, out, in, act, grad_preps, need_grad_x);
}

// ---------------------------------------------------------------------------------------------
// comparisons

// float64 contiguous copy and its values
std::vector<double> values(const at::Tensor& t) {
  auto c = t.to(at::kDouble).contiguous();
  const double* p = c.const_data_ptr<double>();
  return std::vector<double>(p, p + c.numel());
}

// |got - want| <= tol * (|want| + max|want|) everywhere (tol relative to the tensor's scale: sums
// of products in float32 round relative to the largest values), and the shapes agree. Where want
// holds kSentinel (grad_preps outside the layer's slices), got must be exactly kSentinel, and
// those values do not count in the scale.
void expect_close(const at::Tensor& got, const std::vector<double>& want, at::IntArrayRef shape, double tol,
                  const std::string& what) {
  if (got.sizes() != shape) {
    std::ostringstream s;
    s << what << ": shape " << got.sizes() << ", expected " << shape;
    expect(false, s.str());
    return;
  }
  const auto g = values(got);
  double scale = 0.0;
  for (double v : want)
    if (v != kSentinel) scale = std::max(scale, std::abs(v));
  int64_t bad = 0, first = -1;
  for (size_t i = 0; i < want.size(); ++i) {
    const bool ok = want[i] == kSentinel ? g[i] == kSentinel : std::abs(g[i] - want[i]) <= tol * (std::abs(want[i]) + scale);
    if (!ok) {
      if (first < 0) first = static_cast<int64_t>(i);
      ++bad;
    }
  }
  std::ostringstream s;
  if (bad) {
    s << what << ": " << bad << " of " << want.size() << " values differ beyond " << tol << " (first at " << first
      << ": " << g[first] << " vs " << want[first] << ", scale " << scale << ")";
  }
  expect(bad == 0, s.str());
}

double act_fwd(double z, int64_t act) {
  if (act == 1) return z > 0 ? z : kSlope * z;
  if (act == 2) return std::sin(kW0 * z);
  return z;
}

// grad_z from grad_y: LeakyReLU from the sign of the given y, sin from the given z
double act_bwd(double gy, double y, double z, int64_t act) {
  if (act == 1) return gy * (y > 0 ? 1.0 : kSlope);
  if (act == 2) return gy * kW0 * std::cos(kW0 * z);
  return gy;
}

// ---------------------------------------------------------------------------------------------
// the plain-loop references (float64)

struct ConvCase {
  int64_t B, N, cin, cout, H, W, k, stride, padding, act;
  bool shared, residual;
  at::ScalarType dtype;
  int64_t w_off, b_off, P;
  int64_t Ho() const { return (H + 2 * padding - k) / stride + 1; }
  int64_t Wo() const { return (W + 2 * padding - k) / stride + 1; }
  std::string name() const {
    std::ostringstream s;
    s << "conv B" << B << " N" << N << " cin" << cin << " cout" << cout << " " << H << "x" << W << " k" << k << " s"
      << stride << " p" << padding << " act" << act << (shared ? " shared" : " per-net")
      << (residual ? " residual" : "") << " " << dtype;
    return s.str();
  }
};

// PRep layout of a case: a few unrelated values, the bias, more unrelated values, the weight, a tail
void place(int64_t w_numel, int64_t out, int64_t& w_off, int64_t& b_off, int64_t& P) {
  b_off = 5;
  w_off = b_off + out + 3;
  P = w_off + w_numel + 7;
}

// y, z of the forward
std::pair<std::vector<double>, std::vector<double>> conv_ref(const ConvCase& c, const at::Tensor& x,
                                                             const at::Tensor& preps, const at::Tensor& res) {
  const auto xv = values(x), pv = values(preps);
  const std::vector<double> rv = c.residual ? values(res) : std::vector<double>();
  const int64_t Ho = c.Ho(), Wo = c.Wo(), P = preps.size(1);
  std::vector<double> y(c.B * c.N * c.cout * Ho * Wo), z(y.size());
  for (int64_t b = 0; b < c.B; ++b) {
    const double* w = pv.data() + b * P + c.w_off;
    const double* bias = pv.data() + b * P + c.b_off;
    for (int64_t n = 0; n < c.N; ++n) {
      const double* xi = xv.data() + ((c.shared ? 0 : b * c.N) + n) * c.cin * c.H * c.W;
      for (int64_t o = 0; o < c.cout; ++o)
        for (int64_t oy = 0; oy < Ho; ++oy)
          for (int64_t ox = 0; ox < Wo; ++ox) {
            double acc = bias[o];
            for (int64_t i = 0; i < c.cin; ++i)
              for (int64_t ky = 0; ky < c.k; ++ky)
                for (int64_t kx = 0; kx < c.k; ++kx) {
                  const int64_t iy = oy * c.stride - c.padding + ky, ix = ox * c.stride - c.padding + kx;
                  if (iy < 0 || iy >= c.H || ix < 0 || ix >= c.W) continue;
                  acc += xi[(i * c.H + iy) * c.W + ix] * w[((o * c.cin + i) * c.k + ky) * c.k + kx];
                }
            const int64_t i = (((b * c.N + n) * c.cout + o) * Ho + oy) * Wo + ox;
            if (c.residual) acc += rv[i];
            z[i] = acc;
            y[i] = act_fwd(acc, c.act);
          }
    }
  }
  return {y, z};
}

struct Grads {
  std::vector<double> grad_x, grad_z, grad_preps;
};

// gradients from the given grad_y, y, z (the op's inputs); grad_preps starts as the sentinel
Grads conv_backward_ref(const ConvCase& c, const at::Tensor& gy_t, const at::Tensor& x, const at::Tensor& preps,
                        const at::Tensor& y_t, const at::Tensor& z_t) {
  const auto gy = values(gy_t), xv = values(x), pv = values(preps), yv = values(y_t);
  const std::vector<double> zv = c.act == 2 ? values(z_t) : std::vector<double>();
  const int64_t Ho = c.Ho(), Wo = c.Wo(), P = preps.size(1);
  Grads g;
  g.grad_z.resize(gy.size());
  for (size_t i = 0; i < gy.size(); ++i) g.grad_z[i] = act_bwd(gy[i], yv[i], c.act == 2 ? zv[i] : 0.0, c.act);
  g.grad_x.assign(x.numel(), 0.0);
  g.grad_preps.assign(c.B * P, kSentinel);
  for (int64_t b = 0; b < c.B; ++b) {
    const double* w = pv.data() + b * P + c.w_off;
    double* gw = g.grad_preps.data() + b * P + c.w_off;
    double* gb = g.grad_preps.data() + b * P + c.b_off;
    std::fill(gw, gw + c.cout * c.cin * c.k * c.k, 0.0);
    std::fill(gb, gb + c.cout, 0.0);
    for (int64_t n = 0; n < c.N; ++n) {
      const int64_t xo = ((c.shared ? 0 : b * c.N) + n) * c.cin * c.H * c.W;
      for (int64_t o = 0; o < c.cout; ++o)
        for (int64_t oy = 0; oy < Ho; ++oy)
          for (int64_t ox = 0; ox < Wo; ++ox) {
            const double gz = g.grad_z[(((b * c.N + n) * c.cout + o) * Ho + oy) * Wo + ox];
            gb[o] += gz;
            for (int64_t i = 0; i < c.cin; ++i)
              for (int64_t ky = 0; ky < c.k; ++ky)
                for (int64_t kx = 0; kx < c.k; ++kx) {
                  const int64_t iy = oy * c.stride - c.padding + ky, ix = ox * c.stride - c.padding + kx;
                  if (iy < 0 || iy >= c.H || ix < 0 || ix >= c.W) continue;
                  const int64_t xi = xo + (i * c.H + iy) * c.W + ix, wi = ((o * c.cin + i) * c.k + ky) * c.k + kx;
                  gw[wi] += gz * xv[xi];
                  g.grad_x[xi] += gz * w[wi];
                }
          }
    }
  }
  return g;
}

at::Tensor make_preps(int64_t B, int64_t P, at::ScalarType dtype, bool strided) {
  auto opts = at::TensorOptions().dtype(dtype);
  // strided: rows of a wider buffer (row stride P + 4, contiguous within a row)
  if (strided) return (at::randn({B, P + 4}, opts) * 0.4).narrow(1, 2, P);
  return at::randn({B, P}, opts) * 0.4;
}

void run_conv(const ConvCase& c0, bool strided_preps = false, bool need_grad_x = true) {
  ConvCase c = c0;
  place(c.cout * c.cin * c.k * c.k, c.cout, c.w_off, c.b_off, c.P);
  const std::string name = c.name() + (strided_preps ? " strided-preps" : "") + (need_grad_x ? "" : " no-grad-x");
  const auto opts = at::TensorOptions().dtype(c.dtype);
  const double tol = c.dtype == at::kFloat ? 2e-5 : 1e-12;
  at::Tensor preps = make_preps(c.B, c.P, c.dtype, strided_preps);
  at::Tensor x = c.shared ? at::randn({c.N, c.cin, c.H, c.W}, opts) : at::randn({c.B, c.N, c.cin, c.H, c.W}, opts);
  if (c.act == 2) x = x * 0.05;  // sin(30 z): keep 30 z in a few periods
  const std::vector<int64_t> oshape{c.B, c.N, c.cout, c.Ho(), c.Wo()};
  at::Tensor res = c.residual ? at::randn(oshape, opts) * (c.act == 2 ? 0.05 : 1.0) : at::Tensor();
  auto [y, z] = conv(x, preps, c.w_off, c.b_off, c.cout, c.cin, c.k, c.stride, c.padding, c.act,
                     c.residual ? OptT(res) : c10::nullopt);
  const auto [yr, zr] = conv_ref(c, x, preps, res);
  // sin(30 z): an error e in z is up to 30 e in y
  expect_close(y, yr, oshape, c.act == 2 ? 30 * tol : tol, name + ": y");
  if (c.act == 2) {
    expect_close(z, zr, oshape, tol, name + ": z");
  } else {
    expect(z.numel() == 0, name + ": z is empty unless act == 2");
  }
  at::Tensor gy = at::randn(oshape, opts);
  at::Tensor grad_preps = at::full({c.B, c.P}, kSentinel, opts);
  auto [gx, gz] = conv_backward(gy, x, preps, y, z, c.w_off, c.b_off, c.cout, c.cin, c.k, c.stride, c.padding, c.act,
                                grad_preps, need_grad_x);
  const Grads r = conv_backward_ref(c, gy, x, preps, y, z);
  expect_close(gz, r.grad_z, oshape, tol, name + ": grad_z");
  if (need_grad_x) {
    expect_close(gx, r.grad_x, x.sizes(), tol, name + ": grad_x");
  } else {
    expect(gx.numel() == 0, name + ": grad_x is empty when need_grad_x is false");
  }
  expect_close(grad_preps, r.grad_preps, {c.B, c.P}, tol, name + ": grad_preps (sentinel outside the layer)");
}

struct LinCase {
  int64_t B, N, in, out, act;
  bool shared, residual;
  at::ScalarType dtype;
  std::string name() const {
    std::ostringstream s;
    s << "linear B" << B << " N" << N << " in" << in << " out" << out << " act" << act
      << (shared ? " shared" : " per-net") << (residual ? " residual" : "") << " " << dtype;
    return s.str();
  }
};

void run_linear(const LinCase& c, bool strided_preps = false, bool need_grad_x = true) {
  int64_t w_off, b_off, P;
  place(c.out * c.in, c.out, w_off, b_off, P);
  const std::string name = c.name() + (strided_preps ? " strided-preps" : "") + (need_grad_x ? "" : " no-grad-x");
  const auto opts = at::TensorOptions().dtype(c.dtype);
  const double tol = c.dtype == at::kFloat ? 2e-5 : 1e-12;
  at::Tensor preps = make_preps(c.B, P, c.dtype, strided_preps);
  at::Tensor x = c.shared ? at::randn({c.N, c.in}, opts) : at::randn({c.B, c.N, c.in}, opts);
  if (c.act == 2) x = x * 0.05;
  const std::vector<int64_t> oshape{c.B, c.N, c.out};
  at::Tensor res = c.residual ? at::randn(oshape, opts) * (c.act == 2 ? 0.05 : 1.0) : at::Tensor();
  auto [y, z] = linear(x, preps, w_off, b_off, c.out, c.in, c.act, c.residual ? OptT(res) : c10::nullopt);
  // reference forward and backward in one pass over (b, n, o)
  const auto xv = values(x), pv = values(preps);
  const std::vector<double> rv = c.residual ? values(res) : std::vector<double>();
  std::vector<double> yr(c.B * c.N * c.out), zr(yr.size());
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t n = 0; n < c.N; ++n)
      for (int64_t o = 0; o < c.out; ++o) {
        const double* xi = xv.data() + ((c.shared ? 0 : b * c.N) + n) * c.in;
        const double* w = pv.data() + b * P + w_off + o * c.in;
        double acc = pv[b * P + b_off + o];
        for (int64_t i = 0; i < c.in; ++i) acc += xi[i] * w[i];
        const int64_t j = (b * c.N + n) * c.out + o;
        if (c.residual) acc += rv[j];
        zr[j] = acc;
        yr[j] = act_fwd(acc, c.act);
      }
  expect_close(y, yr, oshape, c.act == 2 ? 30 * tol : tol, name + ": y");
  if (c.act == 2) {
    expect_close(z, zr, oshape, tol, name + ": z");
  } else {
    expect(z.numel() == 0, name + ": z is empty unless act == 2");
  }
  at::Tensor gy = at::randn(oshape, opts);
  at::Tensor grad_preps = at::full({c.B, P}, kSentinel, opts);
  auto [gx, gz] = linear_backward(gy, x, preps, y, z, w_off, b_off, c.out, c.in, c.act, grad_preps, need_grad_x);
  const auto gyv = values(gy), yv = values(y);
  const std::vector<double> zv = c.act == 2 ? values(z) : std::vector<double>();
  std::vector<double> gzr(gyv.size()), gxr(x.numel(), 0.0), gpr(c.B * P, kSentinel);
  for (size_t i = 0; i < gyv.size(); ++i) gzr[i] = act_bwd(gyv[i], yv[i], c.act == 2 ? zv[i] : 0.0, c.act);
  for (int64_t b = 0; b < c.B; ++b) {
    std::fill(gpr.begin() + b * P + w_off, gpr.begin() + b * P + w_off + c.out * c.in, 0.0);
    std::fill(gpr.begin() + b * P + b_off, gpr.begin() + b * P + b_off + c.out, 0.0);
    for (int64_t n = 0; n < c.N; ++n)
      for (int64_t o = 0; o < c.out; ++o) {
        const double g = gzr[(b * c.N + n) * c.out + o];
        const int64_t xo = ((c.shared ? 0 : b * c.N) + n) * c.in;
        gpr[b * P + b_off + o] += g;
        for (int64_t i = 0; i < c.in; ++i) {
          gpr[b * P + w_off + o * c.in + i] += g * xv[xo + i];
          gxr[xo + i] += g * pv[b * P + w_off + o * c.in + i];
        }
      }
  }
  expect_close(gz, gzr, oshape, tol, name + ": grad_z");
  if (need_grad_x) {
    expect_close(gx, gxr, x.sizes(), tol, name + ": grad_x");
  } else {
    expect(gx.numel() == 0, name + ": grad_x is empty when need_grad_x is false");
  }
  expect_close(grad_preps, gpr, {c.B, P}, tol, name + ": grad_preps (sentinel outside the layer)");
}

// ---------------------------------------------------------------------------------------------
// the tests

void test_conv() {
  struct G {
    int64_t cin, cout, H, W, k, stride, padding;
  };
  const std::vector<G> geoms = {{3, 4, 6, 6, 3, 1, 1}, {2, 3, 7, 5, 5, 2, 2}, {1, 2, 5, 4, 1, 2, 0}};
  for (const G& g : geoms)
    for (int64_t act : {0, 1, 2})
      for (bool shared : {true, false})
        for (bool residual : {false, true})
          run_conv({3, 2, g.cin, g.cout, g.H, g.W, g.k, g.stride, g.padding, act, shared, residual, at::kFloat, 0, 0, 0});
  for (int64_t act : {1, 2})
    for (bool shared : {true, false})
      run_conv({2, 3, 2, 3, 5, 5, 3, 1, 1, act, shared, true, at::kDouble, 0, 0, 0});
  run_conv({3, 2, 3, 4, 6, 6, 3, 1, 1, 1, false, true, at::kFloat, 0, 0, 0}, /*strided_preps=*/true);
  run_conv({3, 2, 3, 4, 6, 6, 3, 1, 1, 2, true, false, at::kFloat, 0, 0, 0}, /*strided_preps=*/true);
  run_conv({3, 2, 3, 4, 6, 6, 3, 1, 1, 1, true, false, at::kFloat, 0, 0, 0}, false, /*need_grad_x=*/false);
  run_conv({3, 2, 3, 4, 6, 6, 3, 1, 1, 0, false, false, at::kFloat, 0, 0, 0}, false, /*need_grad_x=*/false);
}

void test_linear() {
  for (int64_t act : {0, 1, 2})
    for (bool shared : {true, false})
      for (bool residual : {false, true}) run_linear({3, 5, 7, 4, act, shared, residual, at::kFloat});
  for (int64_t act : {1, 2})
    for (bool shared : {true, false}) run_linear({2, 4, 6, 3, act, shared, true, at::kDouble});
  run_linear({3, 5, 7, 4, 1, false, true, at::kFloat}, /*strided_preps=*/true);
  run_linear({3, 5, 7, 4, 2, true, false, at::kFloat}, /*strided_preps=*/true);
  run_linear({3, 5, 7, 4, 1, true, false, at::kFloat}, false, /*need_grad_x=*/false);
  run_linear({3, 5, 7, 4, 0, false, true, at::kFloat}, false, /*need_grad_x=*/false);
}

// The kernels' parallel loops with several threads: the epilogue splits B*N chunks (grain 1), the
// activation gradient n values (grain 16384); shapes here give each at least 4 chunks.
void test_threads() {
  const int before = at::get_num_threads();
  at::set_num_threads(4);
  expect(at::get_num_threads() == 4, "at::set_num_threads(4) took effect");
  {  // the parallel backend really runs a split range on several threads (else this test proves nothing)
    std::mutex mu;
    std::set<int> ids;
    at::parallel_for(0, 4 * 16384, 16384, [&](int64_t, int64_t) {
      std::lock_guard<std::mutex> lock(mu);
      ids.insert(at::get_thread_num());
    });
    expect(ids.size() > 1, "at::parallel_for split a 4-chunk range over more than one thread, got " +
                               std::to_string(ids.size()));
  }
  // conv: y has 2*2*16*32*32 = 65536 values (4 chunks of the activation gradient), B*N = 4 epilogue chunks
  for (int64_t act : {1, 2})
    for (bool shared : {true, false}) run_conv({2, 2, 3, 16, 32, 32, 3, 1, 1, act, shared, true, at::kFloat, 0, 0, 0});
  // linear: 4*256*64 = 65536 values, B*N = 1024 epilogue chunks
  for (int64_t act : {1, 2})
    for (bool shared : {true, false}) run_linear({4, 256, 8, 64, act, shared, act == 2, at::kFloat});
  at::set_num_threads(before);
}

void test_empty() {
  const auto f = at::TensorOptions().dtype(at::kFloat);
  for (auto [B, N] : {std::pair<int64_t, int64_t>{0, 3}, {2, 0}}) {
    at::Tensor preps = at::randn({B, 60}, f);
    at::Tensor x = at::randn({B, N, 2, 5, 5}, f);
    auto [y, z] = conv(x, preps, 0, 40, 3, 2, 3, 1, 1, 2, c10::nullopt);
    expect(y.sizes() == at::IntArrayRef({B, N, 3, 5, 5}) && z.sizes() == y.sizes(), "empty conv: shapes");
    at::Tensor gp = at::full({B, 60}, kSentinel, f);
    auto [gx, gz] = conv_backward(at::zeros_like(y), x, preps, y, z, 0, 40, 3, 2, 3, 1, 1, 2, gp, true);
    expect(gx.sizes() == x.sizes() && gz.sizes() == y.sizes(), "empty conv backward: shapes");
    at::Tensor xl = at::randn({B, N, 4}, f);
    auto [yl, zl] = linear(xl, preps, 0, 30, 5, 4, 1, c10::nullopt);
    expect(yl.sizes() == at::IntArrayRef({B, N, 5}) && zl.numel() == 0, "empty linear: shapes");
    auto [gxl, gzl] = linear_backward(at::zeros_like(yl), xl, preps, yl, zl, 0, 30, 5, 4, 1, gp, true);
    expect(gxl.sizes() == xl.sizes() && gzl.sizes() == yl.sizes(), "empty linear backward: shapes");
  }
}

template <typename F>
void expect_throws(F fn, const std::string& what) {
  try {
    fn();
    expect(false, what + ": no exception");
  } catch (const c10::Error&) {
    expect(true, what);
  }
}

// Layer slices outside the PRep and mismatched shapes are refused (never read: ASan would see it)
void test_bad_input() {
  const auto f = at::TensorOptions().dtype(at::kFloat);
  at::Tensor preps = at::randn({2, 50}, f);
  at::Tensor x = at::randn({3, 2, 5, 5}, f);
  expect_throws([&] { conv(x, preps, 20, 0, 2, 2, 3, 1, 1, 0, c10::nullopt); }, "conv weight past the PRep end");
  expect_throws([&] { conv(x, preps, 0, 49, 2, 2, 3, 1, 1, 0, c10::nullopt); }, "conv bias past the PRep end");
  expect_throws([&] { conv(x, preps, -1, 40, 2, 2, 3, 1, 1, 0, c10::nullopt); }, "negative w_off");
  expect_throws([&] { conv(x, preps, 0, 40, 2, 3, 1, 1, 0, 0, c10::nullopt); }, "channel mismatch");
  expect_throws([&] { conv(x, preps, 0, 40, 2, 2, 3, 1, 1, 3, c10::nullopt); }, "act 3");
  expect_throws([&] { conv(at::randn({3, 1, 3, 3}, f), preps, 0, 40, 1, 1, 5, 1, 0, 0, c10::nullopt); },
                "kernel larger than the input");
  expect_throws([&] { conv(x.to(at::kDouble), preps, 0, 40, 2, 2, 3, 1, 1, 0, c10::nullopt); }, "dtype mismatch");
  expect_throws([&] { conv(x, preps, 0, 40, 2, 2, 3, 1, 1, 0, OptT(at::zeros({2, 3, 2, 5, 4}, f))); },
                "residual shape");
  expect_throws([&] { conv(at::randn({3, 3, 2, 5, 5}, f), preps, 0, 40, 2, 2, 3, 1, 1, 0, c10::nullopt); },
                "per-network x of another B");
  at::Tensor xl = at::randn({4, 6}, f);
  expect_throws([&] { linear(xl, preps, 40, 0, 2, 6, 0, c10::nullopt); }, "linear weight past the PRep end");
  expect_throws([&] { linear(xl, preps, 0, 30, 2, 5, 0, c10::nullopt); }, "feature mismatch");
  auto [y, z] = linear(xl, preps, 0, 30, 2, 6, 2, c10::nullopt);
  at::Tensor gp = at::zeros({2, 49}, f);
  expect_throws([&] { linear_backward(at::ones_like(y), xl, preps, y, z, 0, 30, 2, 6, 2, gp, true); },
                "grad_preps of another shape");
  at::Tensor gp2 = at::zeros({2, 50}, f);
  expect_throws([&] { linear_backward(at::ones({2, 4, 3}, f), xl, preps, y, z, 0, 30, 2, 6, 2, gp2, true); },
                "grad_y of another shape");
  expect_throws([&] { linear_backward(at::ones_like(y), xl, preps, y, at::empty({0}, f), 0, 30, 2, 6, 2, gp2, true); },
                "sin backward without z");
}

}  // namespace

int main() {
  at::manual_seed(1234);
  at::set_num_threads(1);
  const std::vector<std::pair<const char*, void (*)()>> tests = {
      {"conv", test_conv}, {"linear", test_linear}, {"threads", test_threads},
      {"empty", test_empty}, {"bad_input", test_bad_input},
  };
  for (const auto& [name, fn] : tests) {
    const int before = g_failed;
    g_case = name;
    const auto t0 = std::chrono::steady_clock::now();
    try {
      fn();
    } catch (const std::exception& e) {
      expect(false, std::string("uncaught exception: ") + e.what());
    }
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%s %-12s %8.1f ms\n", g_failed == before ? "ok  " : "FAIL", name, ms);
    std::fflush(stdout);
  }
  std::cout << g_passed << " passed, " << g_failed << " failed" << std::endl;
  return g_failed == 0 ? 0 : 1;
}
