// CPU kernels of the prelu family: y = PReLU(x + b[c], w[c]) + r and its backward pass.
//
// One pass each way over the activation. Work goes to threads in planes (NCHW: one channel of one
// image, a contiguous run with one slope and bias) or in rows (channels_last and N x C: one pixel's
// C channels, contiguous, with the slopes and biases as vectors). Inner loops are `omp simd` and
// cloned for AVX-512 and AVX2.
//
// The backward pass fuses the per-channel slope and bias reductions into the grad_x pass. Each
// plane, or each fixed chunk of rows, writes its own partial sums; the partials are then added in
// a fixed order, so the result depends on the shape only, never on the number of threads.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "prelu/prelu_ops.h"

namespace pydcr::prelu {
namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PYDCR_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PYDCR_CPU_CLONES
#endif

// Elements per task: enough that a task's memory traffic outweighs the scheduling cost.
constexpr int64_t kTaskElements = 1 << 15;

// The hot loops, one set per element type (target_clones does not apply to templates).
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
                                       const T* __restrict w, const T* __restrict b) {                       \
    for (int64_t p = begin; p < end; ++p) {                                                                  \
      const T wc = w[p % channels], bc = b[p % channels];                                                    \
      const int64_t o = p * inner;                                                                           \
      if (r) {                                                                                               \
        _Pragma("omp simd") for (int64_t i = 0; i < inner; ++i) y[o + i] = forward_value(x[o + i], wc, bc,   \
                                                                                         r[o + i]);          \
      } else {                                                                                               \
        _Pragma("omp simd") for (int64_t i = 0; i < inner; ++i) y[o + i] = forward_value(x[o + i], wc, bc,   \
                                                                                         T(0));              \
      }                                                                                                      \
    }                                                                                                        \
  }                                                                                                          \
  PYDCR_CPU_CLONES void forward_rows(T* __restrict y, const T* __restrict x, const T* __restrict r,         \
                                     int64_t rows, int64_t channels, const T* __restrict w,                  \
                                     const T* __restrict b) {                                                \
    for (int64_t row = 0; row < rows; ++row) {                                                               \
      const int64_t o = row * channels;                                                                      \
      if (r) {                                                                                               \
        _Pragma("omp simd") for (int64_t c = 0; c < channels; ++c) y[o + c] =                                \
            forward_value(x[o + c], w[c], b[c], r[o + c]);                                                   \
      } else {                                                                                               \
        _Pragma("omp simd") for (int64_t c = 0; c < channels; ++c) y[o + c] =                                \
            forward_value(x[o + c], w[c], b[c], T(0));                                                       \
      }                                                                                                      \
    }                                                                                                        \
  }                                                                                                          \
  PYDCR_CPU_CLONES void backward_planes(T* __restrict gx, const T* __restrict g, const T* __restrict x,     \
                                        int64_t begin, int64_t end, int64_t channels, int64_t inner,         \
                                        const T* __restrict w, const T* __restrict b, T* __restrict sums) {  \
    for (int64_t p = begin; p < end; ++p) {                                                                  \
      const T wc = w[p % channels], bc = b[p % channels];                                                    \
      const int64_t o = p * inner;                                                                           \
      T sw = 0, sb = 0;                                                                                      \
      _Pragma("omp simd reduction(+ : sw, sb)") for (int64_t i = 0; i < inner; ++i) gx[o + i] =              \
          backward_value(g[o + i], x[o + i], wc, bc, sw, sb);                                                \
      sums[2 * p] = sw;                                                                                      \
      sums[2 * p + 1] = sb;                                                                                  \
    }                                                                                                        \
  }                                                                                                          \
  PYDCR_CPU_CLONES void backward_rows(T* __restrict gx, const T* __restrict g, const T* __restrict x,       \
                                      int64_t rows, int64_t channels, const T* __restrict w,                 \
                                      const T* __restrict b, T* __restrict sum_w, T* __restrict sum_b) {     \
    for (int64_t row = 0; row < rows; ++row) {                                                               \
      const int64_t o = row * channels;                                                                      \
      _Pragma("omp simd") for (int64_t c = 0; c < channels; ++c) gx[o + c] =                                 \
          backward_value(g[o + c], x[o + c], w[c], b[c], sum_w[c], sum_b[c]);                                \
    }                                                                                                        \
  }

PYDCR_PRELU_LOOPS(float)
PYDCR_PRELU_LOOPS(double)
#undef PYDCR_PRELU_LOOPS

// The slopes and biases as per-channel vectors: a shared slope repeated, an absent bias as zeros.
template <typename T>
struct ChannelParams {
  std::vector<T> weight, bias;

  ChannelParams(const Tensor& w, const std::optional<Tensor>& b, int64_t channels)
      : weight(channels), bias(channels, T(0)) {
    const Tensor wd = torch::stable::contiguous(w);
    const T* wp = wd.const_data_ptr<T>();
    for (int64_t c = 0; c < channels; ++c) weight[c] = wp[w.size(0) == 1 ? 0 : c];
    if (b) {
      const Tensor bd = torch::stable::contiguous(*b);
      std::copy_n(bd.const_data_ptr<T>(), channels, bias.begin());
    }
  }
};

template <typename T>
void forward(const Activation& a, const T* r, T* y, const ChannelParams<T>& p) {
  const ChannelLayout& l = a.layout;
  const T* x = a.x.const_data_ptr<T>();
  const T *w = p.weight.data(), *b = p.bias.data();
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
template <typename T>
void backward(const Activation& a, const T* g, T* gx, const ChannelParams<T>& p, std::vector<T>& sums) {
  const ChannelLayout& l = a.layout;
  const int64_t channels = l.channels;
  const T* x = a.x.const_data_ptr<T>();
  const T *w = p.weight.data(), *b = p.bias.data();
  sums.assign(2 * channels, T(0));
  if (l.inner > 1) {
    // One partial per plane; plane p = n * channels + c.
    std::vector<T> partial(2 * l.outer * channels);
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
    std::vector<T> partial(2 * chunks * channels, T(0));
    torch::stable::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const int64_t row = k * chunk, rows = std::min(chunk, l.outer - row), o = row * channels;
        T* sum_w = partial.data() + 2 * k * channels;
        backward_rows(gx + o, g + o, x + o, rows, channels, w, b, sum_w, sum_w + channels);
      }
    });
    for (int64_t k = 0; k < chunks; ++k)
      for (int64_t c = 0; c < 2 * channels; ++c) sums[c] += partial[2 * k * channels + c];
  }
}

constexpr const char* kForward = "pydcr.prelu";
constexpr const char* kBackward = "pydcr.prelu_backward";

Activation check_cpu(const char* op, const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias) {
  return check_prelu(op, x, weight, bias, {ScalarType::Float, ScalarType::Double}, "on CPU");
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
  auto run = [&](auto tag) {
    using T = decltype(tag);
    forward<T>(a, r ? r->const_data_ptr<T>() : nullptr, y.mutable_data_ptr<T>(),
               ChannelParams<T>(weight, bias, a.layout.channels));
  };
  if (x.scalar_type() == ScalarType::Float) run(float{});
  else run(double{});
  return y;
}

std::tuple<Tensor, Tensor, Tensor> prelu_backward_cpu(Tensor grad, Tensor x, Tensor weight,
                                                      std::optional<Tensor> bias) {
  const Activation a = check_cpu(kBackward, x, weight, bias);
  check_like_activation(kBackward, "grad", grad, x);
  const Tensor g = a.dense(grad);
  const int64_t channels = a.layout.channels;
  Tensor grad_x = a.empty_like_x();
  Tensor grad_w = torch::stable::empty({weight.size(0)}, x.scalar_type(), std::nullopt, x.device());
  Tensor grad_b = torch::stable::empty({channels}, x.scalar_type(), std::nullopt, x.device());
  auto run = [&](auto tag) {
    using T = decltype(tag);
    std::vector<T> sums(2 * channels, T(0));
    if (a.numel() > 0)
      backward<T>(a, g.const_data_ptr<T>(), grad_x.mutable_data_ptr<T>(), ChannelParams<T>(weight, bias, channels),
                  sums);
    T* gw = grad_w.mutable_data_ptr<T>();
    if (weight.size(0) == channels) {
      std::copy_n(sums.begin(), channels, gw);
    } else {  // one shared slope: the channels' sums, added in channel order
      gw[0] = 0;
      for (int64_t c = 0; c < channels; ++c) gw[0] += sums[c];
    }
    std::copy_n(sums.begin() + channels, channels, grad_b.mutable_data_ptr<T>());
  };
  if (x.scalar_type() == ScalarType::Float) run(float{});
  else run(double{});
  return {grad_x, grad_w, grad_b};
}

}  // namespace
}  // namespace pydcr::prelu

STABLE_TORCH_LIBRARY_IMPL(pydcr, CPU, m) {
  using namespace pydcr::prelu;
  m.impl("prelu", TORCH_BOX(&prelu_cpu));
  m.impl("prelu_backward", TORCH_BOX(&prelu_backward_cpu));
}
