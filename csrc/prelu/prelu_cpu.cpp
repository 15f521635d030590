// CPU kernels of the prelu family: y = PReLU(x + b[c], w[c]) + r and its backward pass.
//
// One pass each way over the activation. Work goes to threads in planes (NCHW: one channel of one
// image, a contiguous run with one slope and bias) or in rows (channels_last and N x C: one pixel's
// C channels, contiguous, with the slopes and biases as vectors). Inner loops are `omp simd` and
// cloned for AVX-512 and AVX2. float16 and bfloat16 activations (autocast's) are computed on in
// float, and their gradient sums added in float, as on CUDA.
//
// The backward pass fuses the per-channel slope and bias reductions into the grad_x pass. Each
// plane, or each fixed chunk of rows, writes its own partial sums; the partials are then added in
// a fixed order, so the result depends on the shape only, never on the number of threads.
//
// prelu_pool runs window by window: the forward pass writes each window's largest activation,
// the backward pass writes the whole window's grad_x (zero but at the largest) and adds that
// element's terms to the plane's, or the output row's, partial sums.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "common/cpu_float16.h"
#include "prelu/prelu_ops.h"

namespace pydcr::prelu {
namespace {

using pydcr::cpu::acc_t;
using pydcr::cpu::BFloat16;
using pydcr::cpu::Half;
using pydcr::cpu::narrow;
using pydcr::cpu::widen;

// Elements per task: enough that a task's memory traffic outweighs the scheduling cost.
constexpr int64_t kTaskElements = 1 << 15;

// The hot loops, one set per element type T (target_clones does not apply to templates). They
// compute in Acc = acc_t<T> (float for the 16-bit types) and take the slopes and biases, and give
// the sums, in Acc.
//
// forward_planes: planes [begin, end) of `inner` elements, plane p in channel p % channels.
// forward_rows:   `rows` rows of `channels` elements, slopes and biases as vectors.
// backward_planes: as forward_planes, writing grad_x and each plane's (slope, bias) sums to
//                  sums[2p], sums[2p + 1].
// backward_rows:  as forward_rows, adding each channel's terms to sum_w[c] and sum_b[c].
// r == nullptr: no residual.
#define PYDCR_PRELU_LOOPS(T)                                                                                  \
  PYDCR_CPU_CLONES void forward_planes(T* __restrict y, const T* __restrict x, const T* __restrict r,       \
                                       int64_t begin, int64_t end, int64_t channels, int64_t inner,          \
                                       const acc_t<T>* __restrict w, const acc_t<T>* __restrict b) {         \
    using Acc = acc_t<T>;                                                                                    \
    for (int64_t p = begin; p < end; ++p) {                                                                  \
      const Acc wc = w[p % channels], bc = b[p % channels];                                                  \
      const int64_t o = p * inner;                                                                           \
      if (r) {                                                                                               \
        _Pragma("omp simd") for (int64_t i = 0; i < inner; ++i) y[o + i] =                                   \
            narrow<T>(forward_value(widen(x[o + i]), wc, bc, widen(r[o + i])));                              \
      } else {                                                                                               \
        _Pragma("omp simd") for (int64_t i = 0; i < inner; ++i) y[o + i] =                                   \
            narrow<T>(forward_value(widen(x[o + i]), wc, bc, Acc(0)));                                       \
      }                                                                                                      \
    }                                                                                                        \
  }                                                                                                          \
  PYDCR_CPU_CLONES void forward_rows(T* __restrict y, const T* __restrict x, const T* __restrict r,         \
                                     int64_t rows, int64_t channels, const acc_t<T>* __restrict w,           \
                                     const acc_t<T>* __restrict b) {                                         \
    using Acc = acc_t<T>;                                                                                    \
    for (int64_t row = 0; row < rows; ++row) {                                                               \
      const int64_t o = row * channels;                                                                      \
      if (r) {                                                                                               \
        _Pragma("omp simd") for (int64_t c = 0; c < channels; ++c) y[o + c] =                                \
            narrow<T>(forward_value(widen(x[o + c]), w[c], b[c], widen(r[o + c])));                          \
      } else {                                                                                               \
        _Pragma("omp simd") for (int64_t c = 0; c < channels; ++c) y[o + c] =                                \
            narrow<T>(forward_value(widen(x[o + c]), w[c], b[c], Acc(0)));                                   \
      }                                                                                                      \
    }                                                                                                        \
  }                                                                                                          \
  PYDCR_CPU_CLONES void backward_planes(T* __restrict gx, const T* __restrict g, const T* __restrict x,     \
                                        int64_t begin, int64_t end, int64_t channels, int64_t inner,         \
                                        const acc_t<T>* __restrict w, const acc_t<T>* __restrict b,          \
                                        acc_t<T>* __restrict sums) {                                         \
    using Acc = acc_t<T>;                                                                                    \
    for (int64_t p = begin; p < end; ++p) {                                                                  \
      const Acc wc = w[p % channels], bc = b[p % channels];                                                  \
      const int64_t o = p * inner;                                                                           \
      Acc sw = 0, sb = 0;                                                                                    \
      _Pragma("omp simd reduction(+ : sw, sb)") for (int64_t i = 0; i < inner; ++i) gx[o + i] =              \
          narrow<T>(backward_value(widen(g[o + i]), widen(x[o + i]), wc, bc, sw, sb));                       \
      sums[2 * p] = sw;                                                                                      \
      sums[2 * p + 1] = sb;                                                                                  \
    }                                                                                                        \
  }                                                                                                          \
  PYDCR_CPU_CLONES void backward_rows(T* __restrict gx, const T* __restrict g, const T* __restrict x,       \
                                      int64_t rows, int64_t channels, const acc_t<T>* __restrict w,          \
                                      const acc_t<T>* __restrict b, acc_t<T>* __restrict sum_w,              \
                                      acc_t<T>* __restrict sum_b) {                                          \
    for (int64_t row = 0; row < rows; ++row) {                                                               \
      const int64_t o = row * channels;                                                                      \
      _Pragma("omp simd") for (int64_t c = 0; c < channels; ++c) gx[o + c] =                                 \
          narrow<T>(backward_value(widen(g[o + c]), widen(x[o + c]), w[c], b[c], sum_w[c], sum_b[c]));       \
    }                                                                                                        \
  }

PYDCR_PRELU_LOOPS(float)
PYDCR_PRELU_LOOPS(double)
PYDCR_PRELU_LOOPS(BFloat16)
PYDCR_PRELU_LOOPS(Half)
#undef PYDCR_PRELU_LOOPS

// prelu_pool's hot loops run over kSpan full 2x2 windows side by side in one NCHW plane: input
// rows x0 and x1 (columns 2j and 2j + 1 for window j), output y or output gradient g. The fixed
// count gives vector code without a scalar remainder loop, whose branches would cost more than
// the vector part on rows this short (46 windows in the trunk's first pool, 4 in its last).
// pool_forward_span:  y[j] = the window's largest activation.
// pool_backward_span: grad_x of the two input rows (gx0, gx1), adding to sum_w and sum_b.
constexpr int64_t kSpan = 16;

// The scan of the full window whose top-left element is x0[0] (x1: the row below), in Acc.
template <typename T>
__attribute__((always_inline)) inline WindowScan<acc_t<T>> scan_full_window(const T* x0, const T* x1, int64_t step,
                                                                            acc_t<T> w, acc_t<T> b) {
  return scan_window4(widen(x0[0]), widen(x0[step]), widen(x1[0]), widen(x1[step]), w, b);
}

// grad_x of a full window's four elements, the PReLU backward value gk at the largest (s.at).
template <typename T, typename Acc>
__attribute__((always_inline)) inline void store_window_grad(T* gx00, T* gx01, T* gx10, T* gx11, const WindowScan<Acc>& s,
                                                             Acc gk) {
  *gx00 = narrow<T>(s.at == Acc(0) ? gk : Acc(0));
  *gx01 = narrow<T>(s.at == Acc(1) ? gk : Acc(0));
  *gx10 = narrow<T>(s.at == Acc(2) ? gk : Acc(0));
  *gx11 = narrow<T>(s.at == Acc(3) ? gk : Acc(0));
}

template <typename T>
__attribute__((always_inline)) inline void pool_forward_span(T* __restrict y, const T* __restrict x0,
                                                             const T* __restrict x1, acc_t<T> w, acc_t<T> b) {
#pragma omp simd
  for (int64_t j = 0; j < kSpan; ++j) y[j] = narrow<T>(scan_full_window(x0 + 2 * j, x1 + 2 * j, 1, w, b).best);
}

template <typename T>
__attribute__((always_inline)) inline void pool_backward_span(T* __restrict gx0, T* __restrict gx1,
                                                              const T* __restrict g, const T* __restrict x0,
                                                              const T* __restrict x1, acc_t<T> w, acc_t<T> b,
                                                              acc_t<T>& sum_w, acc_t<T>& sum_b) {
  using Acc = acc_t<T>;
  Acc sw = 0, sb = 0;
#pragma omp simd reduction(+ : sw, sb)
  for (int64_t j = 0; j < kSpan; ++j) {
    const WindowScan<Acc> s = scan_full_window(x0 + 2 * j, x1 + 2 * j, 1, w, b);
    const Acc gk = backward_value(widen(g[j]), s.x, w, b, sw, sb);
    store_window_grad(gx0 + 2 * j, gx0 + 2 * j + 1, gx1 + 2 * j, gx1 + 2 * j + 1, s, gk);
  }
  sum_w += sw;
  sum_b += sb;
}

// A row of `count` windows: whole spans, then the last count % kSpan windows as a span of
// zero-padded copies (padding windows have zero gradient and add exact zeros to the sums).
#define PYDCR_POOL_LOOPS(T)                                                                                 \
  PYDCR_CPU_CLONES void pool_forward_row(T* y, const T* x0, const T* x1, int64_t count, acc_t<T> w,         \
                                         acc_t<T> b) {                                                      \
    int64_t j = 0;                                                                                          \
    for (; j + kSpan <= count; j += kSpan) pool_forward_span(y + j, x0 + 2 * j, x1 + 2 * j, w, b);          \
    if (j == count) return;                                                                                 \
    T px0[2 * kSpan] = {}, px1[2 * kSpan] = {}, py[kSpan];                                                  \
    std::copy(x0 + 2 * j, x0 + 2 * count, px0);                                                             \
    std::copy(x1 + 2 * j, x1 + 2 * count, px1);                                                             \
    pool_forward_span(py, px0, px1, w, b);                                                                  \
    std::copy(py, py + (count - j), y + j);                                                                 \
  }                                                                                                         \
  PYDCR_CPU_CLONES void pool_backward_row(T* gx0, T* gx1, const T* g, const T* x0, const T* x1,             \
                                          int64_t count, acc_t<T> w, acc_t<T> b, acc_t<T>& sum_w,           \
                                          acc_t<T>& sum_b) {                                                \
    int64_t j = 0;                                                                                          \
    for (; j + kSpan <= count; j += kSpan)                                                                  \
      pool_backward_span(gx0 + 2 * j, gx1 + 2 * j, g + j, x0 + 2 * j, x1 + 2 * j, w, b, sum_w, sum_b);      \
    if (j == count) return;                                                                                 \
    T px0[2 * kSpan] = {}, px1[2 * kSpan] = {}, pg[kSpan] = {}, pgx0[2 * kSpan], pgx1[2 * kSpan];           \
    std::copy(x0 + 2 * j, x0 + 2 * count, px0);                                                             \
    std::copy(x1 + 2 * j, x1 + 2 * count, px1);                                                             \
    std::copy(g + j, g + count, pg);                                                                        \
    pool_backward_span(pgx0, pgx1, pg, px0, px1, w, b, sum_w, sum_b);                                       \
    std::copy(pgx0, pgx0 + 2 * (count - j), gx0 + 2 * j);                                                   \
    std::copy(pgx1, pgx1 + 2 * (count - j), gx1 + 2 * j);                                                   \
  }                                                                                                         \
  /* channels_last: one full window, its four pixels' channels contiguous (`step` apart in a row, */       \
  /* the row below `down` further). */                                                                      \
  PYDCR_CPU_CLONES void pool_forward_pixels(T* __restrict y, const T* __restrict x, int64_t step,           \
                                            int64_t down, int64_t channels, const acc_t<T>* __restrict w,   \
                                            const acc_t<T>* __restrict b) {                                 \
    _Pragma("omp simd") for (int64_t c = 0; c < channels; ++c) y[c] =                                       \
        narrow<T>(scan_full_window(x + c, x + down + c, step, w[c], b[c]).best);                            \
  }                                                                                                         \
  PYDCR_CPU_CLONES void pool_backward_pixels(T* __restrict gx, const T* __restrict g, const T* __restrict x, \
                                             int64_t step, int64_t down, int64_t channels,                  \
                                             const acc_t<T>* __restrict w, const acc_t<T>* __restrict b,    \
                                             acc_t<T>* __restrict sum_w, acc_t<T>* __restrict sum_b) {      \
    using Acc = acc_t<T>;                                                                                   \
    _Pragma("omp simd") for (int64_t c = 0; c < channels; ++c) {                                            \
      const WindowScan<Acc> s = scan_full_window(x + c, x + down + c, step, w[c], b[c]);                    \
      const Acc gk = backward_value(widen(g[c]), s.x, w[c], b[c], sum_w[c], sum_b[c]);                      \
      store_window_grad(gx + c, gx + step + c, gx + down + c, gx + down + step + c, s, gk);                 \
    }                                                                                                       \
  }

PYDCR_POOL_LOOPS(float)
PYDCR_POOL_LOOPS(double)
PYDCR_POOL_LOOPS(BFloat16)
PYDCR_POOL_LOOPS(Half)
#undef PYDCR_POOL_LOOPS

// The slopes and biases as per-channel vectors in acc_t<T>: a shared slope repeated, an absent
// bias as zeros.
template <typename T>
struct ChannelParams {
  using Acc = acc_t<T>;
  std::vector<Acc> weight, bias;

  ChannelParams(const Tensor& w, const std::optional<Tensor>& b, int64_t channels)
      : weight(channels), bias(channels, Acc(0)) {
    const Tensor wd = in_layout(w, MemoryFormat::Contiguous);
    const T* wp = data<T>(wd);
    for (int64_t c = 0; c < channels; ++c) weight[c] = widen(wp[w.size(0) == 1 ? 0 : c]);
    if (b) {
      const Tensor bd = in_layout(*b, MemoryFormat::Contiguous);
      const T* bp = data<T>(bd);
      for (int64_t c = 0; c < channels; ++c) bias[c] = widen(bp[c]);
    }
  }
};

template <typename T>
void forward(const Activation& a, const T* r, T* y, const ChannelParams<T>& p) {
  const ChannelLayout& l = a.layout;
  const T* x = data<T>(a.x);
  const acc_t<T>* w = p.weight.data();
  const acc_t<T>* b = p.bias.data();
  if (l.inner > 1) {
    const int64_t grain = std::max<int64_t>(1, kTaskElements / l.inner);
    torch::stable::parallel_for(0, l.outer * l.channels, grain, [&](int64_t begin, int64_t end) {
      forward_planes(y, x, r, begin, end, l.channels, l.inner, w, b);
    });
  } else {
    const int64_t grain = std::max<int64_t>(1, kTaskElements / l.channels);
    torch::stable::parallel_for(0, l.outer, grain, [&](int64_t begin, int64_t end) {
      const int64_t o = begin * l.channels;
      forward_rows(y + o, x + o, r ? r + o : nullptr, end - begin, l.channels, w, b);
    });
  }
}

// Fills per-channel (slope, bias) gradient sums, channel-major: sums[c], sums[channels + c].
template <typename T, typename Acc = acc_t<T>>
void backward(const Activation& a, const T* g, T* gx, const ChannelParams<T>& p, std::vector<Acc>& sums) {
  const ChannelLayout& l = a.layout;
  const int64_t channels = l.channels;
  const T* x = data<T>(a.x);
  const Acc *w = p.weight.data(), *b = p.bias.data();
  sums.assign(2 * channels, Acc(0));
  if (l.inner > 1) {
    // One partial per plane; plane p = n * channels + c.
    std::vector<Acc> partial(2 * l.outer * channels);
    const int64_t grain = std::max<int64_t>(1, kTaskElements / l.inner);
    torch::stable::parallel_for(0, l.outer * channels, grain, [&](int64_t begin, int64_t end) {
      backward_planes(gx, g, x, begin, end, channels, l.inner, w, b, partial.data());
    });
    for (int64_t n = 0; n < l.outer; ++n)
      for (int64_t c = 0; c < channels; ++c) {
        sums[c] += partial[2 * (n * channels + c)];
        sums[channels + c] += partial[2 * (n * channels + c) + 1];
      }
  } else {
    // One partial per chunk of rows; the chunk size depends on the shape only.
    const int64_t chunk = std::max<int64_t>(1, kTaskElements / channels);
    const int64_t chunks = (l.outer + chunk - 1) / chunk;
    std::vector<Acc> partial(2 * chunks * channels, Acc(0));
    torch::stable::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const int64_t row = k * chunk, rows = std::min(chunk, l.outer - row), o = row * channels;
        Acc* sum_w = partial.data() + 2 * k * channels;
        backward_rows(gx + o, g + o, x + o, rows, channels, w, b, sum_w, sum_w + channels);
      }
    });
    for (int64_t k = 0; k < chunks; ++k)
      for (int64_t c = 0; c < 2 * channels; ++c) sums[c] += partial[2 * k * channels + c];
  }
}

// The pooling geometry of a 4-D activation: input h x w, output oh x ow, and the strides of a row
// and a column in x's layout (NCHW: w and 1 within a plane; channels_last: w * C and C).
struct PoolGeometry {
  int64_t n, channels, h, w, oh, ow, ow_full, row_stride, col_stride;
  bool channels_last;

  explicit PoolGeometry(const Activation& a)
      : n(a.x.size(0)), channels(a.x.size(1)), h(a.x.size(2)), w(a.x.size(3)), oh(pooled_size(h)),
        ow(pooled_size(w)), ow_full(w / 2), channels_last(a.format == MemoryFormat::ChannelsLast) {
    row_stride = channels_last ? w * channels : w;
    col_stride = channels_last ? channels : 1;
  }

  // NCHW: call full(output row i, x offset of its first input row, y offset) for every output row
  // of `plane` whose windows are two rows tall (the hot loops take its ow_full full windows), and
  // edge(x offset of the window's top-left, y offset, channel, rows, cols) for the ceil-mode
  // windows one element tall or wide, when H or W is odd.
  template <typename Full, typename Edge>
  void for_rows_of_plane(int64_t plane, Full&& full, Edge&& edge) const {
    const int64_t c = plane % channels;
    const int64_t x0 = plane * h * w, y0 = plane * oh * ow;
    for (int64_t i = 0; i < oh; ++i) {
      const int64_t xi = x0 + 2 * i * w, yi = y0 + i * ow;
      if (2 * i + 1 < h) {
        full(xi, yi);
        if (ow_full < ow) edge(xi + 2 * ow_full, yi + ow_full, c, 2, 1);
      } else {
        for (int64_t j = 0; j < ow; ++j) edge(xi + 2 * j, yi + j, c, 1, 2 * j + 1 < w ? 2 : 1);
      }
    }
  }
  // channels_last: call full(x offset of the window's top-left pixel, y offset) for every full
  // window of output row i of `image`, and edge(x offset, y offset, channel, rows, cols) for each
  // channel of the ceil-mode windows one pixel tall or wide.
  template <typename Full, typename Edge>
  void for_pixels_of_row(int64_t image, int64_t i, Full&& full, Edge&& edge) const {
    const int rows = 2 * i + 1 < h ? 2 : 1;
    for (int64_t j = 0; j < ow; ++j) {
      const int64_t x0 = ((image * h + 2 * i) * w + 2 * j) * channels, y0 = ((image * oh + i) * ow + j) * channels;
      const int cols = 2 * j + 1 < w ? 2 : 1;
      if (rows == 2 && cols == 2) {
        full(x0, y0);
      } else {
        for (int64_t c = 0; c < channels; ++c) edge(x0 + c, y0 + c, c, rows, cols);
      }
    }
  }
};

template <typename T>
void pool_forward(const Activation& a, T* y, const ChannelParams<T>& p) {
  using Acc = acc_t<T>;
  const PoolGeometry geo(a);
  const T* x = data<T>(a.x);
  auto window = [&](int64_t x0, int64_t y0, int64_t c, int rows, int cols) {
    const T* xw = x + x0;
    auto load = [&](int r, int cc) { return widen(xw[r * geo.row_stride + cc * geo.col_stride]); };
    y[y0] = narrow<T>(scan_window<Acc>(load, rows, cols, p.weight[c], p.bias[c]).best);
  };
  if (!geo.channels_last) {
    const int64_t grain = std::max<int64_t>(1, kTaskElements / (geo.h * geo.w));
    torch::stable::parallel_for(0, geo.n * geo.channels, grain, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const Acc w = p.weight[plane % geo.channels], b = p.bias[plane % geo.channels];
        auto full = [&](int64_t xi, int64_t yi) {
          pool_forward_row(y + yi, x + xi, x + xi + geo.w, geo.ow_full, w, b);
        };
        geo.for_rows_of_plane(plane, full, window);
      }
    });
  } else {
    const int64_t grain = std::max<int64_t>(1, kTaskElements / (2 * geo.w * geo.channels));
    torch::stable::parallel_for(0, geo.n * geo.oh, grain, [&](int64_t begin, int64_t end) {
      auto full = [&](int64_t x0, int64_t y0) {
        pool_forward_pixels(y + y0, x + x0, geo.col_stride, geo.row_stride, geo.channels, p.weight.data(),
                            p.bias.data());
      };
      for (int64_t r = begin; r < end; ++r) geo.for_pixels_of_row(r / geo.oh, r % geo.oh, full, window);
    });
  }
}

// grad_x for every window (the backward terms at its largest element, zero elsewhere), and the
// per-channel (slope, bias) gradient sums, channel-major as in backward(). Each NCHW plane, or
// each channels_last output row, keeps its own partial sums, added in a fixed order after.
template <typename T, typename Acc = acc_t<T>>
void pool_backward(const Activation& a, const T* g, T* gx, const ChannelParams<T>& p, std::vector<Acc>& sums) {
  const PoolGeometry geo(a);
  const int64_t channels = geo.channels;
  const T* x = data<T>(a.x);
  auto window = [&](int64_t x0, int64_t y0, int64_t c, int rows, int cols, Acc& sum_w, Acc& sum_b) {
    const T* xw = x + x0;
    T* gw = gx + x0;
    auto at = [&](int r, int cc) { return r * geo.row_stride + cc * geo.col_stride; };
    window_backward<Acc>([&](int r, int cc) { return widen(xw[at(r, cc)]); },
                         [&](int r, int cc, Acc v) { gw[at(r, cc)] = narrow<T>(v); }, rows, cols, widen(g[y0]),
                         p.weight[c], p.bias[c], sum_w, sum_b);
  };
  sums.assign(2 * channels, Acc(0));
  if (!geo.channels_last) {
    std::vector<Acc> partial(2 * geo.n * channels);  // (slope, bias) of plane n * channels + c
    const int64_t grain = std::max<int64_t>(1, kTaskElements / (geo.h * geo.w));
    torch::stable::parallel_for(0, geo.n * channels, grain, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const Acc w = p.weight[plane % channels], b = p.bias[plane % channels];
        Acc sum_w = 0, sum_b = 0;
        auto full = [&](int64_t xi, int64_t yi) {
          pool_backward_row(gx + xi, gx + xi + geo.w, g + yi, x + xi, x + xi + geo.w, geo.ow_full, w, b, sum_w, sum_b);
        };
        geo.for_rows_of_plane(plane, full, [&](int64_t x0, int64_t y0, int64_t c, int rows, int cols) {
          window(x0, y0, c, rows, cols, sum_w, sum_b);
        });
        partial[2 * plane] = sum_w;
        partial[2 * plane + 1] = sum_b;
      }
    });
    for (int64_t plane = 0; plane < geo.n * channels; ++plane) {
      sums[plane % channels] += partial[2 * plane];
      sums[channels + plane % channels] += partial[2 * plane + 1];
    }
  } else {
    const int64_t units = geo.n * geo.oh;  // output rows, each with slope then bias sums per channel
    std::vector<Acc> partial(2 * units * channels, Acc(0));
    const int64_t grain = std::max<int64_t>(1, kTaskElements / (2 * geo.w * channels));
    torch::stable::parallel_for(0, units, grain, [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) {
        Acc* part = partial.data() + 2 * u * channels;
        auto full = [&](int64_t x0, int64_t y0) {
          pool_backward_pixels(gx + x0, g + y0, x + x0, geo.col_stride, geo.row_stride, channels, p.weight.data(),
                               p.bias.data(), part, part + channels);
        };
        geo.for_pixels_of_row(u / geo.oh, u % geo.oh, full, [&](int64_t x0, int64_t y0, int64_t c, int rows, int cols) {
          window(x0, y0, c, rows, cols, part[c], part[channels + c]);
        });
      }
    });
    for (int64_t u = 0; u < units; ++u)
      for (int64_t c = 0; c < 2 * channels; ++c) sums[c] += partial[2 * u * channels + c];
  }
}

constexpr const char* kForward = "pydcr.prelu";
constexpr const char* kBackward = "pydcr.prelu_backward";
constexpr const char* kPoolForward = "pydcr.prelu_pool";
constexpr const char* kPoolBackward = "pydcr.prelu_pool_backward";

Activation check_cpu(const char* op, const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias) {
  return check_prelu(op, x, weight, bias, {ScalarType::Half, ScalarType::BFloat16, ScalarType::Float, ScalarType::Double},
                     "on CPU");
}

// Calls f(T{}) for x's element type.
template <typename F>
void dispatch(const Tensor& x, F&& f) {
  switch (x.scalar_type()) {
    case ScalarType::Half: f(Half{}); break;
    case ScalarType::BFloat16: f(BFloat16{}); break;
    case ScalarType::Float: f(float{}); break;
    default: f(double{}); break;
  }
}

Tensor prelu_cpu(Tensor x, Tensor weight, std::optional<Tensor> bias, std::optional<Tensor> residual) {
  const Activation a = check_cpu(kForward, x, weight, bias);
  std::optional<Tensor> r;
  if (residual) {
    check_like_activation(kForward, "residual", *residual, x);
    r = a.dense(*residual);
  }
  Tensor y = a.empty_like_x();
  if (a.numel() == 0) return y;
  dispatch(x, [&](auto tag) {
    using T = decltype(tag);
    forward<T>(a, r ? data<T>(*r) : nullptr, mutable_data<T>(y), ChannelParams<T>(weight, bias, a.layout.channels));
  });
  return y;
}

// The gradients of x, the slopes and the bias from a backward pass, pass(T{}, grad_x data, sums),
// that writes grad_x and the per-channel sums (slope sums, then bias sums).
template <typename Pass>
std::tuple<Tensor, Tensor, Tensor> backward_results(const Activation& a, const Tensor& weight, Pass&& pass) {
  const Tensor& x = a.x;
  const int64_t channels = a.layout.channels;
  Tensor grad_x = a.empty_like_x();
  Tensor grad_w = empty_on(x, {weight.size(0)}, x.scalar_type(), MemoryFormat::Contiguous);
  Tensor grad_b = empty_on(x, {channels}, x.scalar_type(), MemoryFormat::Contiguous);
  dispatch(x, [&](auto tag) {
    using T = decltype(tag);
    using Acc = acc_t<T>;
    std::vector<Acc> sums(2 * channels, Acc(0));
    if (a.numel() > 0) pass(tag, mutable_data<T>(grad_x), sums);
    T* gw = mutable_data<T>(grad_w);
    if (weight.size(0) == channels) {
      for (int64_t c = 0; c < channels; ++c) gw[c] = narrow<T>(sums[c]);
    } else {  // one shared slope: the channels' sums, added in channel order
      Acc total = 0;
      for (int64_t c = 0; c < channels; ++c) total += sums[c];
      gw[0] = narrow<T>(total);
    }
    T* gb = mutable_data<T>(grad_b);
    for (int64_t c = 0; c < channels; ++c) gb[c] = narrow<T>(sums[channels + c]);
  });
  return {grad_x, grad_w, grad_b};
}

std::tuple<Tensor, Tensor, Tensor> prelu_backward_cpu(Tensor grad, Tensor x, Tensor weight,
                                                      std::optional<Tensor> bias) {
  const Activation a = check_cpu(kBackward, x, weight, bias);
  check_like_activation(kBackward, "grad", grad, x);
  const Tensor g = a.dense(grad);
  return backward_results(a, weight, [&](auto tag, auto* gx, auto& sums) {
    using T = decltype(tag);
    backward<T>(a, data<T>(g), gx, ChannelParams<T>(weight, bias, a.layout.channels), sums);
  });
}

Tensor prelu_pool_cpu(Tensor x, Tensor weight, std::optional<Tensor> bias) {
  check_pool_input(kPoolForward, x);
  const Activation a = check_cpu(kPoolForward, x, weight, bias);
  Tensor y = a.empty_pooled();
  if (a.numel() == 0) return y;
  dispatch(x, [&](auto tag) {
    using T = decltype(tag);
    pool_forward<T>(a, mutable_data<T>(y), ChannelParams<T>(weight, bias, a.layout.channels));
  });
  return y;
}

std::tuple<Tensor, Tensor, Tensor> prelu_pool_backward_cpu(Tensor grad, Tensor x, Tensor weight,
                                                           std::optional<Tensor> bias) {
  check_pool_input(kPoolBackward, x);
  const Activation a = check_cpu(kPoolBackward, x, weight, bias);
  check_pooled_grad(kPoolBackward, grad, x);
  const Tensor g = a.dense(grad);
  return backward_results(a, weight, [&](auto tag, auto* gx, auto& sums) {
    using T = decltype(tag);
    pool_backward<T>(a, data<T>(g), gx, ChannelParams<T>(weight, bias, a.layout.channels), sums);
  });
}

}  // namespace
}  // namespace pydcr::prelu

STABLE_TORCH_LIBRARY_IMPL(pydcr, CPU, m) {
  using namespace pydcr::prelu;
  m.impl("prelu", TORCH_BOX(&prelu_cpu));
  m.impl("prelu_backward", TORCH_BOX(&prelu_backward_cpu));
  m.impl("prelu_pool", TORCH_BOX(&prelu_pool_cpu));
  m.impl("prelu_pool_backward", TORCH_BOX(&prelu_pool_backward_cpu));
}
