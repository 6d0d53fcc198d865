// Vectorizable float32 sin / cos for the sin(30 z) epilogue of the batched layer ops (CPU).
//
// Why our own: std::sin(float) is one libm call per value (~5 ns), and ATen's
// at::vec::Vectorized<float>::sin is SLEEF only in translation units compiled with a
// CPU_CAPABILITY_AVX2/AVX512 macro (ATen compiles its own kernels once per capability); in this
// extension's build it is vec_base.h's generic fallback, a std::sin loop (measured: 6.8 ns a
// value against 6.5 for std::sin and 0.4 for these; BENCHMARKS.md, "SIREN fitting",
// "Vectorized sin/cos epilogue").
//
// Method (float32 argument a, |a| <= kMaxArg): the reduction and the polynomials run in double.
//   k = nearest integer to a * 2/pi (the 1.5 * 2^52 shifter: k is also the low bits of the sum,
//       so the quadrant needs no float -> int conversion);
//   r = (a - k * PIO2_HI) - k * PIO2_LO, |r| <= pi/4 (+ rounding), PIO2_HI = pi/2 to 33 bits so
//       k * PIO2_HI is exact for |k| < 2^20 (Cody-Waite, two parts); |PIO2_HI + PIO2_LO - pi/2|
//       = 3.5e-27, so r's absolute error is < 1e-20 for |a| <= kMaxArg;
//   sin r, cos r: Taylor polynomials to r^11 / r^12 (truncation < 1e-11 relative on |r| <= pi/4);
//   the quadrant k mod 4 selects +-sin r / +-cos r (sign by xor of the sign bit).
// The double result has relative error ~1e-11 (a few 1e-4 float32 ulp), so the float result is
// the correctly rounded one unless the exact value lies that close to a rounding midpoint: error
// <= 0.5 ulp + a few 1e-4 ulp, i.e. <= 1 ulp of float32 against sin/cos computed in float64
// (measured max 0.5001 ulp; tested, tests/ops/test_batched_layers.py::
// test_sin_epilogue_float32_accuracy). |a| > kMaxArg (and +-inf) fall back to std::sin / std::cos
// for those values; NaN gives NaN.
//
// The loops are branch-free and auto-vectorize; target_clones compiles them for AVX-512, AVX2+FMA
// and the baseline, picked once at load time (the extension itself is built for baseline x86-64).
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

namespace netspace_fast::trig {

constexpr float kMaxArg = 1.0e6f;  // |k| <= 636,620 < 2^20
constexpr double kTwoOverPi = 0x1.45f306dc9c883p-1;
constexpr double kPio2Hi = 0x1.921fb544p+0;         // pi/2, 33 significant bits
constexpr double kPio2Lo = 0x1.0b4611a626331p-34;   // pi/2 - kPio2Hi
constexpr double kShifter = 0x1.8p52;

// sin(a) (COS false) or cos(a) (COS true) of one float32 value, in double; valid for |a| <= kMaxArg
template <bool COS>
inline double sincos_core(float a) {
  const double x = static_cast<double>(a);
  double kd = x * kTwoOverPi + kShifter;
  const uint64_t q = std::bit_cast<uint64_t>(kd);  // low bits: k (two's complement)
  kd -= kShifter;
  const double r = (x - kd * kPio2Hi) - kd * kPio2Lo;
  const double r2 = r * r;
  // r * (1 + ...), not r + r * (...): sin(-0) = -0
  const double ps =
      r * (1.0 + r2 * (-0x1.5555555555555p-3 +
                       r2 * (0x1.1111111111111p-7 +
                             r2 * (-0x1.a01a01a01a01ap-13 +
                                   r2 * (0x1.71de3a556c734p-19 + r2 * -0x1.ae64567f544e4p-26)))));
  const double pc =
      1.0 + r2 * (-0.5 + r2 * (0x1.5555555555555p-5 +
                               r2 * (-0x1.6c16c16c16c17p-10 +
                                     r2 * (0x1.a01a01a01a01ap-16 +
                                           r2 * (-0x1.27e4fb7789f5cp-22 + r2 * 0x1.1eed8eff8d898p-29)))));
  // sin, quadrant k mod 4 = 0..3: sin r, cos r, -sin r, -cos r; cos(a) = sin(a + pi/2): quadrant + 1
  const uint64_t qq = COS ? q + 1 : q;
  const double v = (qq & 1) ? pc : ps;
  return std::bit_cast<double>(std::bit_cast<uint64_t>(v) ^ ((qq & 2) << 62));
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define NETSPACE_TRIG_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define NETSPACE_TRIG_CLONES
#endif

// out[i] = sin(w0 * z[i]) (the product rounded to float32 first, like the reference); out must not
// overlap z (the fallback for |w0 z| > kMaxArg rereads z)
NETSPACE_TRIG_CLONES __attribute__((noinline)) static void sin_scaled_f32(const float* __restrict__ z,
                                                                           float* __restrict__ out, int64_t n,
                                                                           float w0) {
  int bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float a = w0 * z[i];
    bad |= std::fabs(a) > kMaxArg;
    out[i] = static_cast<float>(sincos_core<false>(a));
  }
  if (bad) {
    for (int64_t i = 0; i < n; ++i) {
      const float a = w0 * z[i];
      if (std::fabs(a) > kMaxArg) out[i] = std::sin(a);
    }
  }
}

// out[i] = g[i] * w0 * cos(w0 * z[i]) (the derivative of sin(w0 z) times g), the product formed in
// double and rounded once; out must not overlap z or g
NETSPACE_TRIG_CLONES __attribute__((noinline)) static void cos_grad_scaled_f32(const float* __restrict__ z,
                                                                                const float* __restrict__ g,
                                                                                float* __restrict__ out, int64_t n,
                                                                                float w0) {
  int bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float a = w0 * z[i];
    bad |= std::fabs(a) > kMaxArg;
    out[i] = static_cast<float>(static_cast<double>(g[i]) * w0 * sincos_core<true>(a));  // one rounding
  }
  if (bad) {
    for (int64_t i = 0; i < n; ++i) {
      const float a = w0 * z[i];
      if (std::fabs(a) > kMaxArg) out[i] = static_cast<float>(static_cast<double>(g[i]) * w0 * std::cos(a));
    }
  }
}

}  // namespace netspace_fast::trig
