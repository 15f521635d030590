// CPU kernels of the resample family: resize, degrade and their adjoints.
//
// Every op is a short pipeline of separable banded maps applied image by image, in parallel over
// images. Intermediates (for degrade: the low-resolution image) live in per-thread buffers of a
// few kilobytes and never reach memory as tensors. Vertical maps run as row AXPYs, which
// vectorise over the contiguous row; the pipelines put them on the large images. uint8, float16 and
// bfloat16 images are widened to float once per image; 16-bit results are rounded once, from the
// last pass's float values, as the CUDA kernels round them.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "common/cpu_float16.h"
#include "resample/resample_ops.h"

namespace pydcr::resample {
namespace {

// One separable map of a pipeline, along the vertical or horizontal axis.
struct Pass {
  bool vertical;
  Band<double> band;
};

// A pass prepared for element type T.
template <typename T>
struct Stage {
  bool vertical;
  Band<T> band;
  // Horizontal maps on planes: the transpose, when scattering each input sample over its
  // contiguous outputs vectorises better than gathering taps (upsampling).
  Band<T> scatter;
  bool use_scatter = false;
};

template <typename T>
Stage<T> make_stage(const Pass& pass) {
  Stage<T> s{pass.vertical, cast<T>(pass.band), {}, false};
  if (!pass.vertical) {
    const Band<double>& band = pass.band;
    Band<double> t = transpose(band);
    s.use_scatter = t.width > band.width;
    if (s.use_scatter) s.scatter = cast<T>(t);
  }
  return s;
}

// 64-byte vectors of T: one AVX-512 register, two AVX2 or four SSE ones, as the clone compiles.
template <typename T>
struct Vec64 {
  typedef T type __attribute__((vector_size(64)));
  static constexpr int64_t lanes = 64 / sizeof(T);
};

// Columns [c, ...) of one output row in blocks of NV vectors while a whole block fits; returns the
// first column left. The accumulators stay in registers across the taps.
template <int NV, typename T>
__attribute__((always_inline)) inline int64_t vertical_block(T* __restrict y, const T* __restrict x, int64_t line,
                                                             const T* __restrict w, int64_t len, int64_t c) {
  using V = typename Vec64<T>::type;
  constexpr int64_t L = Vec64<T>::lanes;
  for (; c + NV * L <= line; c += NV * L) {
    V acc[NV] = {};
    for (int64_t t = 0; t < len; ++t) {
      const T* __restrict xt = x + t * line + c;
      const T wt = w[t];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        V xv;
        __builtin_memcpy(&xv, xt + v * L, sizeof(V));
        acc[v] += wt * xv;
      }
    }
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) __builtin_memcpy(y + c + v * L, &acc[v], sizeof(V));
  }
  return c;
}

// The columns left after the vector blocks, one at a time.
template <typename T>
__attribute__((always_inline)) inline void vertical_tail(T* __restrict y, const T* __restrict x, int64_t line,
                                                         const T* __restrict w, int64_t len, int64_t c) {
  for (; c < line; ++c) {
    T acc = 0;
    for (int64_t t = 0; t < len; ++t) acc += w[t] * x[t * line + c];
    y[c] = acc;
  }
}

// A vertical map, rows x line -> band.rows x line: y_i[c] = sum_t w_it x_{start_i + t}[c]. The hot
// loop: columns go in register-sized blocks so each tap costs one load and one multiply-add, and
// the function is cloned for AVX-512 and AVX2 (picked at load time by the CPU it runs on).
#define PYDCR_VERTICAL(T)                                                                               \
  PYDCR_CPU_CLONES void vertical_pass(T* __restrict out, const T* __restrict in, int64_t line,         \
                                      const Band<T>& b) {                                              \
    for (int64_t i = 0; i < b.rows; ++i) {                                                             \
      T* y = out + i * line;                                                                           \
      const T* x = in + b.start[i] * line;                                                             \
      const T* w = b.weight.data() + i * b.width;                                                      \
      const int64_t len = b.len[i];                                                                    \
      int64_t c = vertical_block<4>(y, x, line, w, len, 0);                                            \
      c = vertical_block<1>(y, x, line, w, len, c);                                                    \
      vertical_tail(y, x, line, w, len, c);                                                            \
    }                                                                                                  \
  }

PYDCR_VERTICAL(float)
PYDCR_VERTICAL(double)
#undef PYDCR_VERTICAL

// Element-type conversions of a whole image, into and out of the float the passes compute in.
PYDCR_CPU_CLONES void widen_all(float* __restrict y, const uint8_t* __restrict x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i];
}

#define PYDCR_CONVERT(T)                                                                    \
  PYDCR_CPU_CLONES void widen_all(float* __restrict y, const T* __restrict x, int64_t n) {  \
    for (int64_t i = 0; i < n; ++i) y[i] = cpu::widen(x[i]);                                \
  }                                                                                         \
  PYDCR_CPU_CLONES void narrow_all(T* __restrict y, const float* __restrict x, int64_t n) { \
    for (int64_t i = 0; i < n; ++i) y[i] = cpu::narrow<T>(x[i]);                            \
  }

PYDCR_CONVERT(cpu::Half)
PYDCR_CONVERT(cpu::BFloat16)
#undef PYDCR_CONVERT

// Horizontal maps on planes (one value per pixel): each output row from one input row.
// Gather: y_j = sum_t w_jt x_{start_j + t}, a dot product per output, taken for kGatherRows rows at
// once: a dot product of a few taps is one chain of dependent multiply-adds, bound by their
// latency, and rows that share the weights give independent chains to overlap (about 8x faster
// when shrinking 96 columns to 40, where ~10 taps do not fill a vector).
// Scatter (with the transposed band): y_{start_q + t} += w_qt x_q, a contiguous AXPY per input.
constexpr int64_t kGatherRows = 8;

#define PYDCR_HORIZONTAL(T)                                                                             \
  PYDCR_CPU_CLONES void horizontal_gather(T* __restrict y, const T* __restrict x, int64_t rows,           \
                                          int64_t in_cols, const Band<T>& b) {                            \
    int64_t r0 = 0;                                                                                       \
    for (; r0 + kGatherRows <= rows; r0 += kGatherRows) {                                                 \
      for (int64_t j = 0; j < b.rows; ++j) {                                                              \
        const T* __restrict xs = x + r0 * in_cols + b.start[j];                                           \
        const T* __restrict w = b.weight.data() + j * b.width;                                            \
        const int64_t n = b.len[j];                                                                       \
        T acc[kGatherRows] = {};                                                                          \
        for (int64_t t = 0; t < n; ++t) {                                                                 \
          const T wt = w[t];                                                                              \
          _Pragma("GCC unroll 8") for (int64_t i = 0; i < kGatherRows; ++i) acc[i] += wt * xs[i * in_cols + t]; \
        }                                                                                                 \
        _Pragma("GCC unroll 8") for (int64_t i = 0; i < kGatherRows; ++i) y[(r0 + i) * b.rows + j] = acc[i]; \
      }                                                                                                   \
    }                                                                                                     \
    for (int64_t r = r0; r < rows; ++r) {                                                                 \
      const T* __restrict xr = x + r * in_cols;                                                           \
      T* __restrict yr = y + r * b.rows;                                                                  \
      for (int64_t j = 0; j < b.rows; ++j) {                                                              \
        const T* __restrict xs = xr + b.start[j];                                                         \
        const T* __restrict w = b.weight.data() + j * b.width;                                            \
        const int64_t n = b.len[j];                                                                       \
        T acc = 0;                                                                                        \
        _Pragma("omp simd reduction(+ : acc)") for (int64_t t = 0; t < n; ++t) acc += w[t] * xs[t]; \
        yr[j] = acc;                                                                                      \
      }                                                                                                   \
    }                                                                                                     \
  }                                                                                                       \
  PYDCR_CPU_CLONES void horizontal_scatter(T* __restrict y, const T* __restrict x, int64_t rows,          \
                                           int64_t out_cols, const Band<T>& bt) {                         \
    for (int64_t r = 0; r < rows; ++r) {                                                                  \
      const T* __restrict xr = x + r * bt.rows;                                                           \
      T* __restrict yr = y + r * out_cols;                                                                \
      for (int64_t j = 0; j < out_cols; ++j) yr[j] = 0;                                                   \
      for (int64_t q = 0; q < bt.rows; ++q) {                                                             \
        const T v = xr[q];                                                                \
        T* __restrict ys = yr + bt.start[q];                                                              \
        const T* __restrict w = bt.weight.data() + q * bt.width;                                          \
        const int64_t n = bt.len[q];                                                                      \
        _Pragma("omp simd") for (int64_t t = 0; t < n; ++t) ys[t] += v * w[t];                            \
      }                                                                                                   \
    }                                                                                                     \
  }

PYDCR_HORIZONTAL(float)
PYDCR_HORIZONTAL(double)
#undef PYDCR_HORIZONTAL

// rows x cols x pixel -> rows x band.rows x pixel.
template <typename T>
void apply_horizontal(const T* in, T* out, int64_t rows, int64_t cols, int64_t pixel, const Stage<T>& s) {
  if (pixel == 1) {
    if (s.use_scatter) horizontal_scatter(out, in, rows, s.band.rows, s.scatter);
    else horizontal_gather(out, in, rows, cols, s.band);
    return;
  }
  const Band<T>& b = s.band;
  for (int64_t y = 0; y < rows; ++y) {
    const T* x = in + y * cols * pixel;
    T* o = out + y * b.rows * pixel;
    for (int64_t j = 0; j < b.rows; ++j)
      for (int64_t p = 0; p < pixel; ++p)
        o[j * pixel + p] = band_dot<T>(b.row(j), pixel, [&](int64_t off) { return x[off + p]; });
  }
}

// Runs `stages`, computing in T, over `images` images of rows x cols pixels, each pixel `pixel`
// contiguous values.
template <typename In, typename T, typename Out>
void run_stages(const In* src, Out* dst, int64_t images, int64_t rows, int64_t cols, int64_t pixel,
                const std::vector<Stage<T>>& stages) {
  int64_t capacity = 0, r = rows, c = cols;
  for (const Stage<T>& s : stages) {
    (s.vertical ? r : c) = s.band.rows;
    capacity = std::max(capacity, r * c * pixel);
  }
  const int64_t in_size = rows * cols * pixel, out_size = r * c * pixel;
  // Enough images per task that a task does ~64k multiply-adds or more.
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(in_size + out_size, 1));

  torch::stable::parallel_for(0, images, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> buffers[2] = {std::vector<T>(capacity), std::vector<T>(capacity)};
    // Images are widened once, so the taps that read a pixel several times convert it once.
    std::vector<T> widened(std::is_same_v<In, T> ? 0 : in_size);
    for (int64_t img = begin; img < end; ++img) {
      const T* prev;
      if constexpr (std::is_same_v<In, T>) {
        prev = src + img * in_size;
      } else {
        widen_all(widened.data(), src + img * in_size, in_size);
        prev = widened.data();
      }
      int64_t cur_r = rows, cur_c = cols;
      for (size_t k = 0; k < stages.size(); ++k) {
        const Stage<T>& s = stages[k];
        const bool last = k + 1 == stages.size();
        T* out;
        if constexpr (std::is_same_v<Out, T>) out = last ? dst + img * out_size : buffers[k % 2].data();
        else out = buffers[k % 2].data();
        if (s.vertical) {
          vertical_pass(out, prev, cur_c * pixel, s.band);
          cur_r = s.band.rows;
        } else {
          apply_horizontal(prev, out, cur_r, cur_c, pixel, s);
          cur_c = s.band.rows;
        }
        prev = out;
      }
      if constexpr (!std::is_same_v<Out, T>) narrow_all(dst + img * out_size, prev, out_size);
    }
  });
}

// Applies the passes to an N x C x H x W batch (NCHW or channels_last) into a new tensor.
Tensor run_on_batch(const char* op, const Tensor& input, const std::vector<Pass>& passes, int64_t out_h,
                    int64_t out_w, bool uint8_ok) {
  if (uint8_ok)
    check_dtype(op, "x", input,
                {ScalarType::Byte, ScalarType::Half, ScalarType::BFloat16, ScalarType::Float, ScalarType::Double},
                "on CPU");
  else
    check_dtype(op, "grad", input, {ScalarType::Half, ScalarType::BFloat16, ScalarType::Float, ScalarType::Double},
                "on CPU");
  const bool channels_last = is_channels_last(input);
  const Tensor x = in_layout(input, channels_last ? torch::headeronly::MemoryFormat::ChannelsLast
                                                  : torch::headeronly::MemoryFormat::Contiguous);
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  Tensor out = empty_image_batch(x, n, c, out_h, out_w, float_result_type(x));
  if (n * c == 0) return out;
  const int64_t images = channels_last ? n : n * c, pixel = channels_last ? c : 1;

  // In: x's element type, T: the type computed in, Out: the result's element type.
  auto typed = [&](auto in_tag, auto tag, auto out_tag) {
    using In = decltype(in_tag);
    using T = decltype(tag);
    using Out = decltype(out_tag);
    std::vector<Stage<T>> typed_stages;
    for (const Pass& p : passes) typed_stages.push_back(make_stage<T>(p));
    run_stages(data<In>(x), mutable_data<Out>(out), images, h, w, pixel, typed_stages);
  };
  switch (x.scalar_type()) {
    case ScalarType::Byte: typed(uint8_t{}, float{}, float{}); break;
    case ScalarType::Half: typed(cpu::Half{}, float{}, cpu::Half{}); break;
    case ScalarType::BFloat16: typed(cpu::BFloat16{}, float{}, cpu::BFloat16{}); break;
    case ScalarType::Float: typed(float{}, float{}, float{}); break;
    default: typed(double{}, double{}, double{}); break;
  }
  return out;
}

// Two separable maps, in the cheaper order. Vertical passes vectorise across a whole row (about
// 16 lanes); horizontal ones mostly do not, so the estimate counts their taps one by one.
std::vector<Pass> two_pass(std::array<Band<double>, 2> hw, int64_t in_h, int64_t in_w) {
  const double lanes = 16;
  const double out_h = hw[0].rows, out_w = hw[1].rows, taps_h = hw[0].width, taps_w = hw[1].width;
  const double vertical_first = out_h * taps_h * in_w / lanes + out_h * out_w * taps_w;
  const double horizontal_first = in_h * out_w * taps_w + out_h * taps_h * out_w / lanes;
  Pass v{true, std::move(hw[0])}, h{false, std::move(hw[1])};
  if (vertical_first <= horizontal_first) return {v, h};
  return {h, v};
}

Tensor resize_cpu(Tensor x, std::vector<int64_t> size, bool antialias) {
  const ResizeArgs a = check_resize("pydcr.resize", "x", x, size, "size");
  return run_on_batch("pydcr.resize", x, two_pass(resize_bands(a, antialias, false), a.in_h, a.in_w), a.out_h,
                      a.out_w, true);
}

Tensor resize_backward_cpu(Tensor grad, std::vector<int64_t> input_size, bool antialias) {
  const ResizeArgs a = check_resize("pydcr.resize_backward", "grad", grad, input_size, "input_size");
  return run_on_batch("pydcr.resize_backward", grad, two_pass(resize_bands(a, antialias, true), a.in_h, a.in_w),
                      a.out_h, a.out_w, false);
}

std::vector<Pass> degrade_passes(DegradePlan p) {
  return {{true, std::move(p.reduce_h)},
          {false, std::move(p.reduce_w)},
          {false, std::move(p.expand_w)},
          {true, std::move(p.expand_h)}};
}

Tensor degrade_cpu(Tensor x, std::vector<int64_t> low, std::vector<int64_t> size, bool antialias) {
  DegradeArgs a = check_degrade("pydcr.degrade", x, low, size, antialias, false);
  return run_on_batch("pydcr.degrade", x, degrade_passes(std::move(a.plan)), a.out_h, a.out_w, true);
}

Tensor degrade_backward_cpu(Tensor grad, std::vector<int64_t> low, std::vector<int64_t> input_size, bool antialias) {
  DegradeArgs a = check_degrade("pydcr.degrade_backward", grad, low, input_size, antialias, true);
  return run_on_batch("pydcr.degrade_backward", grad, degrade_passes(std::move(a.plan)), a.out_h, a.out_w, false);
}

}  // namespace
}  // namespace pydcr::resample

STABLE_TORCH_LIBRARY_IMPL(pydcr, CPU, m) {
  using namespace pydcr::resample;
  m.impl("resize", TORCH_BOX(&resize_cpu));
  m.impl("resize_backward", TORCH_BOX(&resize_backward_cpu));
  m.impl("degrade", TORCH_BOX(&degrade_cpu));
  m.impl("degrade_backward", TORCH_BOX(&degrade_backward_cpu));
}
