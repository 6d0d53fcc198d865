// C++ test of netspace_fast::gather_grouped through the dispatcher: a fuzz over shapes, strides,
// padding wider than the image, flips and empty batches against a scalar definition, and bad
// input refused with an exception (never an out-of-bounds access: run under ASan/UBSan by
// `make sanitize`). Python-level tests of the op: tests/ops/test_gather_grouped.py (the Triton
// kernel: tests/ops/test_gather_grouped_triton.py).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <iostream>
#include <random>
#include <string>
#include <vector>

namespace {

int g_passed = 0, g_failed = 0;

void expect(bool ok, const std::string& what) {
  if (ok) {
    ++g_passed;
  } else {
    ++g_failed;
    std::cout << "FAIL " << what << std::endl;
  }
}

at::Tensor gather(const at::Tensor& images, const at::Tensor& index, const c10::optional<at::Tensor>& offsets,
                  const c10::optional<at::Tensor>& flips, int64_t pad,
                  c10::optional<at::ArrayRef<double>> fill = c10::nullopt) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("netspace_fast::gather_grouped", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                                         const c10::optional<at::Tensor>&, int64_t,
                                         c10::optional<at::ArrayRef<double>>)>();
  return op.call(images, index, offsets, flips, pad, fill);
}

// out[j, b*C + c, y, x] = images[index[b, j], c, y + oy - pad, x' + ox - pad], 0 outside
at::Tensor definition(const at::Tensor& images, const at::Tensor& index, const at::Tensor& off, const at::Tensor& fl,
                      int64_t pad, bool use_off, bool use_fl, const std::vector<double>& fill) {
  const int64_t C = images.size(1), H = images.size(2), W = images.size(3), B = index.size(0), n = index.size(1);
  auto out = at::zeros({n, B * C, H, W}, images.options());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C && !fill.empty(); ++c) out.select(1, b * C + c).fill_(fill[c]);
  auto im = images.accessor<float, 4>();
  auto o = out.accessor<float, 4>();
  auto ix = index.accessor<int64_t, 2>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < n; ++j) {
      const int64_t oy = use_off ? off[b][j][0].item<int64_t>() : pad;
      const int64_t ox = use_off ? off[b][j][1].item<int64_t>() : pad;
      const bool f = use_fl && fl[b][j].item<bool>();
      for (int64_t c = 0; c < C; ++c)
        for (int64_t y = 0; y < H; ++y)
          for (int64_t x = 0; x < W; ++x) {
            const int64_t sy = y + oy - pad, sx = (f ? W - 1 - x : x) + ox - pad;
            if (sy >= 0 && sy < H && sx >= 0 && sx < W) o[j][b * C + c][y][x] = im[ix[b][j]][c][sy][sx];
          }
    }
  return out;
}

void test_fuzz() {
  std::mt19937 rng(7);
  auto r = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int t = 0; t < 300; ++t) {
    const int64_t M = r(1, 5), C = r(1, 4), H = r(1, 7), W = r(1, 7), B = r(0, 4), n = r(0, 4), pad = r(0, 9);
    at::Tensor images = at::randn({M, C, H, W});
    if (t % 3 == 1) images = images.contiguous(at::MemoryFormat::ChannelsLast);
    if (t % 3 == 2) images = at::randn({M, 2 * C, H, 2 * W}).slice(1, 0, 2 * C, 2).slice(3, 0, 2 * W, 2);
    const at::Tensor index = at::randint(0, M, {B, n}, at::kLong);
    const at::Tensor off = at::randint(0, 2 * pad + 1, {B, n, 2}, at::kLong);
    const at::Tensor fl = at::rand({B, n}) < 0.5;
    const bool use_off = r(0, 1), use_fl = r(0, 1), use_fill = r(0, 1);
    std::vector<double> fill;
    for (int64_t c = 0; use_fill && c < C; ++c) fill.push_back(0.25 * static_cast<double>(r(-8, 8)));
    const at::Tensor got = gather(images, index, use_off ? c10::optional<at::Tensor>(off) : c10::nullopt,
                                  use_fl ? c10::optional<at::Tensor>(fl) : c10::nullopt, pad,
                                  use_fill ? c10::optional<at::ArrayRef<double>>(fill) : c10::nullopt);
    const at::Tensor want = definition(images.contiguous(), index, off, fl, pad, use_off, use_fl, fill);
    expect(got.sizes() == want.sizes() && at::equal(got, want), "fuzz case " + std::to_string(t));
    expect(got.numel() == 0 || got.is_contiguous(at::MemoryFormat::ChannelsLast), "channels-last " + std::to_string(t));
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

void test_bad_input() {
  const at::Tensor images = at::randn({4, 3, 5, 5});
  const at::Tensor index = at::randint(0, 4, {2, 3}, at::kLong);
  expect_throws([&] { gather(images, index.clone().fill_(4), c10::nullopt, c10::nullopt, 0); }, "index >= M");
  expect_throws([&] { gather(images, index.clone().fill_(-1), c10::nullopt, c10::nullopt, 0); }, "index < 0");
  expect_throws([&] { gather(images, index, at::full({2, 3, 2}, 5, at::kLong), c10::nullopt, 2); }, "offset > 2*pad");
  expect_throws([&] { gather(images, index, at::full({2, 3, 2}, -1, at::kLong), c10::nullopt, 2); }, "offset < 0");
  expect_throws([&] { gather(images, index, at::zeros({2, 2, 2}, at::kLong), c10::nullopt, 2); }, "offsets shape");
  expect_throws([&] { gather(images, index, c10::nullopt, at::zeros({3, 2}, at::kBool), 2); }, "flips shape");
  expect_throws([&] { gather(images, index, c10::nullopt, c10::nullopt, -1); }, "pad < 0");
  expect_throws([&] { gather(images.to(at::kInt), index, c10::nullopt, c10::nullopt, 0); }, "int images");
  expect_throws([&] { gather(images, index.to(at::kInt), c10::nullopt, c10::nullopt, 0); }, "int32 index");
  expect_throws([&] { gather(images[0], index, c10::nullopt, c10::nullopt, 0); }, "3-D images");
  const std::vector<double> two{0.0, 1.0};
  expect_throws([&] { gather(images, index, c10::nullopt, c10::nullopt, 1, two); }, "fill size");
}

}  // namespace

int main() {
  at::manual_seed(11);
  test_fuzz();
  test_bad_input();
  std::cout << g_passed << " passed, " << g_failed << " failed" << std::endl;
  return g_failed == 0 ? 0 : 1;
}
