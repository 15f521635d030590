#pragma once
// Bicubic resampling as banded matrices: the arithmetic shared by the CPU and CUDA kernels
// of resize and degrade.
//
// Resizing one axis from n to m samples is a linear map, an m x n matrix whose row i holds the
// filter taps of output sample i. The taps of a row are contiguous and their window slides
// monotonically with i, so a row is stored as (start, len, weights). The transposed map (the
// backward pass) has the same structure, which lets forward and backward share every kernel.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/macros.h"

namespace pydcr::resample {

// Keys' cubic convolution kernel with parameter a: -0.5 for the antialiased (PIL, MATLAB imresize)
// convention, -0.75 for the plain one (torch's default bicubic, OpenCV INTER_CUBIC).
PYDCR_HOST_DEVICE double cubic(double x, double a) {
  x = x < 0 ? -x : x;
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
  return 0;
}

constexpr double kCubicAntialias = -0.5;
constexpr double kCubicPlain = -0.75;

// One row of a band: output = sum_t weight[t] * input[start + t], t < len.
template <typename W>
struct BandRow {
  int64_t start;
  int64_t len;
  const W* weight;
};

// Dot product of one band row with a strided input line; the inner loop of every kernel.
template <typename Acc, typename W, typename Load>
PYDCR_HOST_DEVICE Acc band_dot(const BandRow<W>& row, int64_t stride, Load load) {
  Acc acc = 0;
  for (int64_t t = 0; t < row.len; ++t) acc += static_cast<Acc>(row.weight[t]) * load((row.start + t) * stride);
  return acc;
}

// A rows x cols banded matrix, rows padded to the widest.
template <typename W>
struct Band {
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t width = 0;
  std::vector<int64_t> start;
  std::vector<int64_t> len;
  std::vector<W> weight;  // rows x width

  BandRow<W> row(int64_t i) const { return {start[i], len[i], weight.data() + i * width}; }
};

// Taps of output sample i when resizing n -> m with align_corners=False semantics, matching
// torch.nn.functional.interpolate(mode="bicubic"):
//  - antialias: support 2 widened by the scale when shrinking, a = -0.5, window clipped to the
//    input and renormalised (torch's separable antialiased kernel);
//  - plain: four taps at a = -0.75 around the source position, indices clamped to the border
//    (clamped taps fold onto the border sample).
inline Band<double> resize_band(int64_t n, int64_t m, bool antialias) {
  Band<double> b;
  b.rows = m;
  b.cols = n;
  const double scale = static_cast<double>(n) / static_cast<double>(m);
  std::vector<std::vector<double>> taps(m);
  b.start.resize(m);
  b.len.resize(m);
  for (int64_t i = 0; i < m; ++i) {
    std::vector<double>& w = taps[i];
    if (antialias) {
      const double support = scale >= 1 ? 2.0 * scale : 2.0;
      const double invscale = scale >= 1 ? 1.0 / scale : 1.0;
      const double center = scale * (i + 0.5);
      // Truncation toward zero, as in torch, before clipping to the input.
      const int64_t lo = std::max<int64_t>(static_cast<int64_t>(center - support + 0.5), 0);
      const int64_t hi = std::min<int64_t>(static_cast<int64_t>(center + support + 0.5), n);
      double total = 0;
      for (int64_t j = lo; j < hi; ++j) {
        w.push_back(cubic((j - center + 0.5) * invscale, kCubicAntialias));
        total += w.back();
      }
      if (total != 0)
        for (double& v : w) v /= total;
      b.start[i] = lo;
    } else {
      const double real = scale * (i + 0.5) - 0.5;
      const int64_t base = static_cast<int64_t>(std::floor(real));
      const double t = real - static_cast<double>(base);
      const double coeff[4] = {cubic(t + 1, kCubicPlain), cubic(t, kCubicPlain), cubic(1 - t, kCubicPlain),
                               cubic(2 - t, kCubicPlain)};
      const int64_t lo = std::clamp<int64_t>(base - 1, 0, n - 1);
      const int64_t hi = std::clamp<int64_t>(base + 2, 0, n - 1);
      w.assign(hi - lo + 1, 0.0);
      for (int k = 0; k < 4; ++k) w[std::clamp<int64_t>(base - 1 + k, 0, n - 1) - lo] += coeff[k];
      b.start[i] = lo;
    }
    b.len[i] = static_cast<int64_t>(w.size());
    b.width = std::max(b.width, b.len[i]);
  }
  b.weight.assign(m * b.width, 0.0);
  for (int64_t i = 0; i < m; ++i) std::copy(taps[i].begin(), taps[i].end(), b.weight.begin() + i * b.width);
  return b;
}

// The adjoint map. Windows slide monotonically, so each column's rows are contiguous too.
inline Band<double> transpose(const Band<double>& b) {
  Band<double> t;
  t.rows = b.cols;
  t.cols = b.rows;
  std::vector<std::vector<double>> taps(t.rows);
  t.start.assign(t.rows, 0);
  t.len.assign(t.rows, 0);
  for (int64_t i = 0; i < b.rows; ++i) {
    for (int64_t k = 0; k < b.len[i]; ++k) {
      const int64_t j = b.start[i] + k;
      if (taps[j].empty()) t.start[j] = i;
      // Rows of column j form a run start[j], start[j] + 1, ...: fill any row skipped with a zero.
      while (t.start[j] + static_cast<int64_t>(taps[j].size()) < i) taps[j].push_back(0.0);
      taps[j].push_back(b.weight[i * b.width + k]);
    }
  }
  for (int64_t j = 0; j < t.rows; ++j) {
    t.len[j] = static_cast<int64_t>(taps[j].size());
    t.width = std::max(t.width, t.len[j]);
  }
  t.weight.assign(t.rows * t.width, 0.0);
  for (int64_t j = 0; j < t.rows; ++j) std::copy(taps[j].begin(), taps[j].end(), t.weight.begin() + j * t.width);
  return t;
}

template <typename W>
Band<W> cast(const Band<double>& b) {
  Band<W> c;
  c.rows = b.rows;
  c.cols = b.cols;
  c.width = b.width;
  c.start = b.start;
  c.len = b.len;
  c.weight.assign(b.weight.begin(), b.weight.end());
  return c;
}

// The four per-axis maps of degrade, and of its adjoint. A pipeline applies, in order:
// vertical `reduce_h`, horizontal `reduce_w`, horizontal `expand_w`, vertical `expand_h`.
// Forward: down to the low resolution, then up. Backward: the transposed maps, the output
// gradient first reduced through the up-maps' transposes, then expanded through the down-maps'.
struct DegradePlan {
  Band<double> reduce_h, reduce_w, expand_w, expand_h;
};

inline DegradePlan degrade_plan(int64_t in_h, int64_t in_w, int64_t low_h, int64_t low_w, int64_t out_h,
                                int64_t out_w, bool antialias, bool adjoint) {
  Band<double> down_h = resize_band(in_h, low_h, antialias), down_w = resize_band(in_w, low_w, antialias);
  Band<double> up_h = resize_band(low_h, out_h, antialias), up_w = resize_band(low_w, out_w, antialias);
  if (!adjoint) return {down_h, down_w, up_w, up_h};
  return {transpose(up_h), transpose(up_w), transpose(down_w), transpose(down_h)};
}

}  // namespace pydcr::resample
