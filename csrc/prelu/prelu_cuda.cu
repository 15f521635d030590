// CUDA kernels of the prelu family: y = PReLU(x + b[c], w[c]) + r and its backward pass.
//
// Forward: one elementwise pass, 16-byte vector loads and stores where the pointers allow.
// Backward: one pass that writes grad_x and per-block partial sums of the slope and bias
// gradients, then a small kernel that adds the partials of each channel in a fixed order. No
// atomics: the result is the same run to run. Blocks own one channel (NCHW: a channel's planes
// are contiguous runs) or a tile of channels over a chunk of rows (channels_last, N x C: a row's
// channels are contiguous), so every load is coalesced. Arithmetic is in float (double for
// float64) through the functions of prelu.h, shared with the CPU kernels.
//
// prelu_pool: one thread per output element scans its window (scan_window, shared with the CPU).
// Its backward pass is one pass too: each thread takes output elements of one channel, writes
// their windows' grad_x (window_backward, shared with the CPU) and sums their slope and bias
// terms; blocks are laid out, and partials added, as in the PReLU backward pass.
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "common/cuda_utils.h"
#include "prelu/prelu_ops.h"

namespace pydcr::prelu {
namespace {

using pydcr::cuda::from_acc;
using pydcr::cuda::to_acc;

constexpr int kThreads = 256;
constexpr int kWarp = 32;
// Elements one backward block covers: about numel / 1024, so that any activation spreads over
// enough blocks to fill the GPU, within bounds that keep the partial sums few. A function of the
// shape only, so the order of additions is too.
int64_t block_elements(int64_t numel) { return std::clamp<int64_t>(numel / 1024, 2048, 16384); }

template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

// Elements per 16-byte vector.
template <typename T>
constexpr int vec_width() {
  return static_cast<int>(16 / sizeof(T));
}

bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T, int V, typename Index>
__device__ __forceinline__ Vec<T, V> load_vec(const T* p, Index i) {
  return *reinterpret_cast<const Vec<T, V>*>(p + i);
}

// The per-channel parameters in the accumulation type; a shared slope has weight_stride 0.
template <typename T, typename Acc, typename Index>
struct Params {
  const T* weight;
  const T* bias;  // nullptr: no bias
  Index weight_stride;
  __device__ __forceinline__ Acc w(Index c) const { return to_acc<Acc>(weight[c * weight_stride]); }
  __device__ __forceinline__ Acc b(Index c) const { return bias ? to_acc<Acc>(bias[c]) : Acc(0); }
};

// Steps (s, c), the position within a plane and the channel, to the next element.
template <typename Index>
__device__ __forceinline__ void advance(Index& s, Index& c, Index inner, Index channels) {
  if (++s == inner) {
    s = 0;
    if (++c == channels) c = 0;
  }
}

// y = PReLU(x + b[c], w[c]) + r, V elements per thread (V = 1: any alignment).
template <typename T, typename Acc, int V, typename Index>
__global__ void forward_kernel(const T* __restrict__ x, const T* __restrict__ r, T* __restrict__ y,
                               Params<T, Acc, Index> p, Index numel, Index channels, Index inner) {
  const Index vectors = (numel + V - 1) / V;
  const Index step = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index v = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; v < vectors; v += step) {
    const Index start = v * V;
    const Index q = start / inner;
    Index s = start - q * inner, c = q % channels;
    if (start + V <= numel) {
      const Vec<T, V> xv = load_vec<T, V>(x, start);
      Vec<T, V> rv;
      if (r) rv = load_vec<T, V>(r, start);
      Vec<T, V> out;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const Acc res = r ? to_acc<Acc>(rv.v[k]) : Acc(0);
        out.v[k] = from_acc<T>(forward_value(to_acc<Acc>(xv.v[k]), p.w(c), p.b(c), res));
        advance(s, c, inner, channels);
      }
      *reinterpret_cast<Vec<T, V>*>(y + start) = out;
    } else {  // the last, partial vector
      for (Index i = start; i < numel; ++i) {
        const Acc res = r ? to_acc<Acc>(r[i]) : Acc(0);
        y[i] = from_acc<T>(forward_value(to_acc<Acc>(x[i]), p.w(c), p.b(c), res));
        advance(s, c, inner, channels);
      }
    }
  }
}

// Sum over the block of one value per thread, in a fixed order; the result is in thread 0.
// `scratch` holds one value per warp. blockDim.x * blockDim.y is a multiple of 32.
template <typename Acc>
__device__ __forceinline__ Acc block_sum(Acc v, Acc* scratch) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int thread = threadIdx.y * blockDim.x + threadIdx.x;
  const int warps = blockDim.x * blockDim.y / kWarp;
  if (thread % kWarp == 0) scratch[thread / kWarp] = v;
  __syncthreads();
  Acc total = 0;
  if (thread == 0)
    for (int w = 0; w < warps; ++w) total += scratch[w];
  __syncthreads();  // scratch may be reused
  return total;
}

// Where the partial sum of chunk `chunk` (of `chunks`) lies for channel c: the slope sums, then
// the bias sums (q = 0, 1), each channel's chunks side by side so that finish_channels_kernel
// reads them coalesced.
template <typename Index>
__device__ __forceinline__ Index partial_index(int q, Index c, Index chunk, Index channels, Index chunks) {
  return (q * channels + c) * chunks + chunk;
}

// The block's sums of channel c, written as its chunk's partials. `scratch` as in block_sum.
template <typename Acc, typename Index>
__device__ __forceinline__ void store_channel_partials(Acc sum_w, Acc sum_b, Acc* scratch, Acc* __restrict__ partial,
                                                       Index chunk, Index chunks, Index channels, Index c) {
  sum_w = block_sum(sum_w, scratch);
  sum_b = block_sum(sum_b, scratch);
  if (threadIdx.x == 0 && threadIdx.y == 0) {
    partial[partial_index(0, c, chunk, channels, chunks)] = sum_w;
    partial[partial_index(1, c, chunk, channels, chunks)] = sum_b;
  }
}

// Thread (tx, ty)'s sums of the V channels from c0 of a tile of tx * V channels: they meet in
// shared memory (`sums`, 2 x ty x (tx * V) values), are added over ty in a tree (ty is a power of
// two; every thread takes part, where a loop in the ty == 0 threads alone left a handful of
// threads adding hundreds of values at the block's end), and are written as the block's chunk's
// partials (partial_index). The tree's order is fixed by the shape.
template <typename Acc, int V, typename Index>
__device__ __forceinline__ void store_tile_partials(const Acc (&sum_w)[V], const Acc (&sum_b)[V], Acc* sums,
                                                    Acc* __restrict__ partial, Index chunk, Index chunks,
                                                    Index channels, Index c0) {
  const Index tile = static_cast<Index>(blockDim.x) * V;
  const Index lane = threadIdx.x * V;
  Acc* w_row = sums + threadIdx.y * tile + lane;                  // this thread's slope sums
  Acc* b_row = sums + (blockDim.y + threadIdx.y) * tile + lane;    // and bias sums
#pragma unroll
  for (int e = 0; e < V; ++e) {
    w_row[e] = sum_w[e];
    b_row[e] = sum_b[e];
  }
  __syncthreads();
  for (unsigned half = blockDim.y / 2; half > 0; half /= 2) {
    if (threadIdx.y < half) {
#pragma unroll
      for (int e = 0; e < V; ++e) {
        w_row[e] += w_row[half * tile + e];
        b_row[e] += b_row[half * tile + e];
      }
    }
    __syncthreads();
  }
  if (threadIdx.y != 0) return;
#pragma unroll
  for (int e = 0; e < V; ++e) {
    if (c0 + e >= channels) break;
    partial[partial_index(0, c0 + e, chunk, channels, chunks)] = w_row[e];
    partial[partial_index(1, c0 + e, chunk, channels, chunks)] = b_row[e];
  }
}

// Channel-major layouts (inner > 1). Block chunk + chunks * c covers elements [chunk * per_block, ...)
// of channel c, in order n, then position in the plane. V > 1 needs inner % V == 0 and per_block % V == 0,
// so a vector never leaves its plane.
template <typename T, typename Acc, int V, typename Index>
__global__ void backward_planes_kernel(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ gx,
                                       Acc* __restrict__ partial, Params<T, Acc, Index> p, Index channels,
                                       Index inner, Index per_channel, Index per_block, Index chunks) {
  __shared__ Acc scratch[kThreads / kWarp];
  const Index chunk = blockIdx.x % chunks, c = blockIdx.x / chunks;
  const Acc w = p.w(c), b = p.b(c);
  const Index begin = chunk * per_block;
  const Index end = per_channel - begin < per_block ? per_channel : begin + per_block;
  Acc sum_w = 0, sum_b = 0;
  for (Index k = begin + threadIdx.x * V; k < end; k += static_cast<Index>(blockDim.x) * V) {
    const Index n = k / inner;
    const Index i = (n * channels + c) * inner + (k - n * inner);
    const Vec<T, V> gv = load_vec<T, V>(g, i), xv = load_vec<T, V>(x, i);
    Vec<T, V> out;
#pragma unroll
    for (int e = 0; e < V; ++e)
      out.v[e] = from_acc<T>(backward_value(to_acc<Acc>(gv.v[e]), to_acc<Acc>(xv.v[e]), w, b, sum_w, sum_b));
    *reinterpret_cast<Vec<T, V>*>(gx + i) = out;
  }
  store_channel_partials(sum_w, sum_b, scratch, partial, chunk, chunks, channels, c);
}

// Channel-minor layouts (inner == 1): rows of `channels` contiguous elements. A block is tx x ty
// threads over a tile of tx * V channels (blockIdx.y) and rows [chunk * per_block, ...) (blockIdx.x);
// thread (tx, ty) takes V channels and every ty-th row. V > 1 needs channels % V == 0.
template <typename T, typename Acc, int V, typename Index>
__global__ void backward_rows_kernel(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ gx,
                                     Acc* __restrict__ partial, Params<T, Acc, Index> p, Index rows, Index channels,
                                     Index per_block) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  Acc* sums = reinterpret_cast<Acc*>(shared_bytes);
  const Index tile = static_cast<Index>(blockDim.x) * V;
  const Index c0 = blockIdx.y * tile + threadIdx.x * V;
  const Index chunk = blockIdx.x;
  const Index begin = chunk * per_block;
  const Index end = rows - begin < per_block ? rows : begin + per_block;
  Acc sum_w[V], sum_b[V], w[V], b[V];
#pragma unroll
  for (int e = 0; e < V; ++e) {
    sum_w[e] = sum_b[e] = 0;
    w[e] = c0 + e < channels ? p.w(c0 + e) : Acc(0);
    b[e] = c0 + e < channels ? p.b(c0 + e) : Acc(0);
  }
  if (c0 < channels) {
    for (Index row = begin + threadIdx.y; row < end; row += blockDim.y) {
      const Index i = row * channels + c0;
      const Vec<T, V> gv = load_vec<T, V>(g, i), xv = load_vec<T, V>(x, i);
      Vec<T, V> out;
#pragma unroll
      for (int e = 0; e < V; ++e)
        out.v[e] = from_acc<T>(
            backward_value(to_acc<Acc>(gv.v[e]), to_acc<Acc>(xv.v[e]), w[e], b[e], sum_w[e], sum_b[e]));
      *reinterpret_cast<Vec<T, V>*>(gx + i) = out;
    }
  }
  store_tile_partials<Acc, V, Index>(sum_w, sum_b, sums, partial, chunk, static_cast<Index>(gridDim.x), channels, c0);
}

// Block (c, q) adds channel c's partials of quantity q over the chunks, in order: q = 0 gives the
// slope gradient (into grad_w, or into channel_w when one slope is shared), q = 1 the bias gradient.
template <typename T, typename Acc>
__global__ void finish_channels_kernel(const Acc* __restrict__ partial, int64_t chunks, int64_t channels,
                                       T* __restrict__ grad_w, T* __restrict__ grad_b, Acc* __restrict__ channel_w) {
  __shared__ Acc scratch[kThreads / kWarp];
  const int64_t c = blockIdx.x, q = blockIdx.y;
  Acc sum = 0;
  const Acc* sums = partial + partial_index<int64_t>(static_cast<int>(q), c, 0, channels, chunks);
  for (int64_t k = threadIdx.x; k < chunks; k += blockDim.x) sum += sums[k];
  sum = block_sum(sum, scratch);
  if (threadIdx.x != 0) return;
  if (q == 1) grad_b[c] = from_acc<T>(sum);
  else if (channel_w) channel_w[c] = sum;
  else grad_w[c] = from_acc<T>(sum);
}

// grad_w[0] = the sum of the channels' slope gradients (one block).
template <typename T, typename Acc>
__global__ void finish_shared_slope_kernel(const Acc* __restrict__ channel_w, int64_t channels, T* __restrict__ grad_w) {
  __shared__ Acc scratch[kThreads / kWarp];
  Acc sum = 0;
  for (int64_t c = threadIdx.x; c < channels; c += blockDim.x) sum += channel_w[c];
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) grad_w[0] = from_acc<T>(sum);
}

// The pooling geometry, and the window of output element o (in x's layout): the offset of its
// top-left element in x, its channel, and how many rows and columns it has (1 at a ceil-mode edge).
template <typename Index>
struct PoolDims {
  Index channels, h, w, oh, ow;
  bool channels_last;

  __device__ __forceinline__ Index row_stride() const { return channels_last ? w * channels : w; }
  __device__ __forceinline__ Index col_stride() const { return channels_last ? channels : 1; }

  __device__ __forceinline__ void window(Index o, Index& base, Index& c, int& rows, int& cols) const {
    Index n, i, j;
    if (channels_last) {
      c = o % channels;
      Index rest = o / channels;
      j = rest % ow;
      rest /= ow;
      i = rest % oh;
      n = rest / oh;
      base = ((n * h + 2 * i) * w + 2 * j) * channels + c;
    } else {
      j = o % ow;
      Index rest = o / ow;
      i = rest % oh;
      rest /= oh;
      c = rest % channels;
      n = rest / channels;
      base = ((n * channels + c) * h + 2 * i) * w + 2 * j;
    }
    rows = 2 * i + 1 < h ? 2 : 1;
    cols = 2 * j + 1 < w ? 2 : 1;
  }
};

template <typename T, typename Acc, typename Index>
__device__ __forceinline__ WindowScan<Acc> scan_output_window(const T* __restrict__ x, const PoolDims<Index>& d,
                                                              const Params<T, Acc, Index>& p, Index base, Index c,
                                                              int rows, int cols) {
  const Index rs = d.row_stride(), cs = d.col_stride();
  return scan_window<Acc>([&](int r, int cc) { return to_acc<Acc>(x[base + r * rs + cc * cs]); }, rows, cols, p.w(c),
                          p.b(c));
}

// y[o] = the largest activation of output o's window.
template <typename T, typename Acc, typename Index>
__global__ void pool_forward_kernel(const T* __restrict__ x, T* __restrict__ y, Params<T, Acc, Index> p,
                                    PoolDims<Index> d, Index outputs) {
  const Index step = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index o = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; o < outputs; o += step) {
    Index base, c;
    int rows, cols;
    d.window(o, base, c, rows, cols);
    y[o] = from_acc<T>(scan_output_window(x, d, p, base, c, rows, cols).best);
  }
}

// Output o's window: grad_x of its elements, its terms added to sum_w and sum_b.
template <typename T, typename Acc, typename Index>
__device__ __forceinline__ void pool_window_backward(const T* __restrict__ g, const T* __restrict__ x,
                                                     T* __restrict__ gx, const Params<T, Acc, Index>& p,
                                                     const PoolDims<Index>& d, Index o, Acc& sum_w, Acc& sum_b) {
  Index base, c;
  int rows, cols;
  d.window(o, base, c, rows, cols);
  const Index rs = d.row_stride(), cs = d.col_stride();
  window_backward<Acc>([&](int r, int cc) { return to_acc<Acc>(x[base + r * rs + cc * cs]); },
                       [&](int r, int cc, Acc v) { gx[base + r * rs + cc * cs] = from_acc<T>(v); }, rows, cols,
                       to_acc<Acc>(g[o]), p.w(c), p.b(c), sum_w, sum_b);
}

// prelu_pool's backward pass, NCHW: as backward_planes_kernel over the output. Block
// chunk + chunks * c takes outputs [chunk * per_block, ...) of channel c, in order n, then
// position in the pooled plane; the windows tile x, so every element of gx is written.
template <typename T, typename Acc, typename Index>
__global__ void pool_backward_planes_kernel(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ gx,
                                            Acc* __restrict__ partial, Params<T, Acc, Index> p, PoolDims<Index> d,
                                            Index per_channel, Index per_block, Index chunks) {
  __shared__ Acc scratch[kThreads / kWarp];
  const Index chunk = blockIdx.x % chunks, c = blockIdx.x / chunks;
  const Index plane = d.oh * d.ow;
  const Index begin = chunk * per_block;
  const Index end = per_channel - begin < per_block ? per_channel : begin + per_block;
  Acc sum_w = 0, sum_b = 0;
  for (Index k = begin + threadIdx.x; k < end; k += blockDim.x) {
    const Index n = k / plane;
    pool_window_backward(g, x, gx, p, d, (n * d.channels + c) * plane + (k - n * plane), sum_w, sum_b);
  }
  store_channel_partials(sum_w, sum_b, scratch, partial, chunk, chunks, d.channels, c);
}

// prelu_pool's backward pass, channels_last: as backward_rows_kernel (V = 1) over the output's
// pixels, a row of `channels` contiguous outputs each.
template <typename T, typename Acc, typename Index>
__global__ void pool_backward_rows_kernel(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ gx,
                                          Acc* __restrict__ partial, Params<T, Acc, Index> p, PoolDims<Index> d,
                                          Index pixels, Index per_block) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  const Index c = blockIdx.y * blockDim.x + threadIdx.x;
  const Index chunk = blockIdx.x;
  const Index begin = chunk * per_block;
  const Index end = pixels - begin < per_block ? pixels : begin + per_block;
  Acc sum_w[1] = {0}, sum_b[1] = {0};
  if (c < d.channels)
    for (Index pixel = begin + threadIdx.y; pixel < end; pixel += blockDim.y)
      pool_window_backward(g, x, gx, p, d, pixel * d.channels + c, sum_w[0], sum_b[0]);
  store_tile_partials<Acc, 1, Index>(sum_w, sum_b, reinterpret_cast<Acc*>(shared_bytes), partial, chunk,
                                     static_cast<Index>(gridDim.x), d.channels, c);
}

// Calls f(T{}, Acc{}) for x's element type.
template <typename F>
void dispatch(ScalarType t, F&& f) {
  switch (t) {
    case ScalarType::Half: f(__half{}, float{}); break;
    case ScalarType::BFloat16: f(__nv_bfloat16{}, float{}); break;
    case ScalarType::Float: f(float{}, float{}); break;
    default: f(double{}, double{}); break;
  }
}

// Calls f(Index{}) with 32-bit indices when every index fits.
template <typename F>
void dispatch_index(int64_t numel, F&& f) {
  if (numel <= INT32_MAX) f(uint32_t{});
  else f(int64_t{});
}

// Calls f(T{}, Acc{}, Index{}): dispatch and dispatch_index in one.
template <typename F>
void dispatch_all(ScalarType t, int64_t numel, F&& f) {
  dispatch(t, [&](auto t_tag, auto acc_tag) { dispatch_index(numel, [&](auto index_tag) { f(t_tag, acc_tag, index_tag); }); });
}

constexpr const char* kForward = "pydcr.prelu";
constexpr const char* kBackward = "pydcr.prelu_backward";
constexpr const char* kPoolForward = "pydcr.prelu_pool";
constexpr const char* kPoolBackward = "pydcr.prelu_pool_backward";

Activation check_cuda(const char* op, const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias) {
  STD_TORCH_CHECK(x.is_cuda(), op, ": x is on ", device_of(x),
                  " while another argument is on a CUDA device; expected every tensor on the device of x");
  return check_prelu(op, x, weight, bias, {ScalarType::Half, ScalarType::BFloat16, ScalarType::Float, ScalarType::Double},
                     "on CUDA");
}

// The slopes and the bias, dense: the kernels read them in place.
std::pair<Tensor, std::optional<Tensor>> dense_params(const Tensor& weight, const std::optional<Tensor>& bias) {
  const auto dense = [](const Tensor& t) { return in_layout(t, MemoryFormat::Contiguous); };
  return {dense(weight), bias ? std::optional<Tensor>(dense(*bias)) : std::nullopt};
}

template <typename T, typename Acc, typename Index>
Params<T, Acc, Index> params_of(const Activation& a, const Tensor& weight, const std::optional<Tensor>& bias) {
  return {static_cast<const T*>(weight.const_data_ptr()), bias ? static_cast<const T*>(bias->const_data_ptr()) : nullptr,
          static_cast<Index>(a.shared_weight ? 0 : 1)};
}

Tensor prelu_cuda(Tensor x, Tensor weight, std::optional<Tensor> bias, std::optional<Tensor> residual) {
  const Activation a = check_cuda(kForward, x, weight, bias);
  std::optional<Tensor> r;
  if (residual) {
    check_like_activation(kForward, "residual", *residual, x);
    r = a.dense(*residual);
  }
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  const auto [w, b] = dense_params(weight, bias);
  Tensor y = a.empty_like_x();
  const int64_t numel = a.numel();
  if (numel == 0) return y;
  cudaStream_t stream = pydcr::cuda::current_stream(x.get_device_index());
  const ChannelLayout& l = a.layout;
  dispatch(x.scalar_type(), [&](auto t_tag, auto acc_tag) {
    using T = decltype(t_tag);
    using Acc = decltype(acc_tag);
    const T* xp = static_cast<const T*>(a.x.const_data_ptr());
    const T* rp = r ? static_cast<const T*>(r->const_data_ptr()) : nullptr;
    T* yp = static_cast<T*>(y.mutable_data_ptr());
    dispatch_index(numel, [&](auto index_tag) {
      using Index = decltype(index_tag);
      const auto p = params_of<T, Acc, Index>(a, w, b);
      constexpr int V = vec_width<T>();
      if (aligned16(xp) && aligned16(rp) && aligned16(yp)) {
        forward_kernel<T, Acc, V, Index><<<pydcr::cuda::blocks_for((numel + V - 1) / V, kThreads), kThreads, 0, stream>>>(
            xp, rp, yp, p, numel, l.channels, l.inner);
      } else {
        forward_kernel<T, Acc, 1, Index><<<pydcr::cuda::blocks_for(numel, kThreads), kThreads, 0, stream>>>(
            xp, rp, yp, p, numel, l.channels, l.inner);
      }
      PYDCR_CUDA_CHECK(cudaGetLastError());
    });
  });
  return y;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int next_pow2(int64_t v) {
  int p = 1;
  while (p < v) p *= 2;
  return p;
}

// How the backward pass splits x into blocks: `chunks` blocks along each channel (or tile of
// channels), each of `per_block` elements (planes) or rows (rows); tx, the row kernel's threads
// across channels; v, the vector width the kernels use.
struct BackwardGrid {
  int64_t chunks, per_block;
  int tx, v;
};

// Runs the grad_x pass of x's layout, writing bg.chunks partial sums per channel.
template <typename T, typename Acc, typename Index>
void launch_backward(const ChannelLayout& l, const T* g, const T* x, T* gx, Acc* partial, Params<T, Acc, Index> p,
                     const BackwardGrid& bg, cudaStream_t stream) {
  constexpr int V = vec_width<T>();
  if (l.inner > 1) {
    const unsigned grid = static_cast<unsigned>(bg.chunks * l.channels);
    const Index per_channel = l.outer * l.inner;
    if (bg.v == V)
      backward_planes_kernel<T, Acc, V, Index><<<grid, kThreads, 0, stream>>>(g, x, gx, partial, p, l.channels, l.inner,
                                                                              per_channel, bg.per_block, bg.chunks);
    else
      backward_planes_kernel<T, Acc, 1, Index><<<grid, kThreads, 0, stream>>>(g, x, gx, partial, p, l.channels, l.inner,
                                                                              per_channel, bg.per_block, bg.chunks);
  } else {
    const dim3 block(bg.tx, kThreads / bg.tx);
    const dim3 grid(static_cast<unsigned>(bg.chunks), static_cast<unsigned>(ceil_div(l.channels, bg.tx * bg.v)));
    const size_t shared = 2 * sizeof(Acc) * kThreads * bg.v;
    if (bg.v == V)
      backward_rows_kernel<T, Acc, V, Index><<<grid, block, shared, stream>>>(g, x, gx, partial, p, l.outer, l.channels,
                                                                             bg.per_block);
    else
      backward_rows_kernel<T, Acc, 1, Index><<<grid, block, shared, stream>>>(g, x, gx, partial, p, l.outer, l.channels,
                                                                             bg.per_block);
  }
  PYDCR_CUDA_CHECK(cudaGetLastError());
}

// v: the vector width the pointers and the layout allow (inner % v == 0 for planes,
// channels % v == 0 for rows). Depends on the shape and alignment only.
BackwardGrid backward_grid(const ChannelLayout& l, int v) {
  constexpr int64_t kMaxGridX = 2147483647, kMaxGridY = 65535;
  const int64_t target = block_elements(l.outer * l.channels * l.inner);
  if (l.inner > 1) {
    const int64_t per_channel = l.outer * l.inner;
    const int64_t per_block = ceil_div(std::min(target, per_channel), v) * v;
    const int64_t chunks = ceil_div(per_channel, per_block);
    STD_TORCH_CHECK(chunks * l.channels <= kMaxGridX, kBackward, ": too many channels for CUDA, got ", l.channels);
    return {chunks, per_block, 0, v};
  }
  // tx threads cover a row's channels, up to a warp; ty threads go down the rows.
  const int tx = static_cast<int>(std::min<int64_t>(kWarp, next_pow2(ceil_div(l.channels, v))));
  const int ty = kThreads / tx;
  const int64_t tile = static_cast<int64_t>(tx) * v;
  STD_TORCH_CHECK(ceil_div(l.channels, tile) <= kMaxGridY, kBackward, ": too many channels for CUDA, got ", l.channels);
  const int64_t per_block = ceil_div(std::max<int64_t>(target / tile, ty), ty) * ty;
  return {ceil_div(l.outer, per_block), per_block, tx, v};
}

// The slope and bias gradients, uninitialised; zeros when x is empty (no pass adds to them).
std::pair<Tensor, Tensor> empty_parameter_gradients(const Activation& a, const Tensor& weight) {
  Tensor grad_w = empty_on(a.x, {weight.size(0)}, a.x.scalar_type(), MemoryFormat::Contiguous);
  Tensor grad_b = empty_on(a.x, {a.layout.channels}, a.x.scalar_type(), MemoryFormat::Contiguous);
  if (a.numel() == 0) {
    torch::stable::zero_(grad_w);
    torch::stable::zero_(grad_b);
  }
  return {grad_w, grad_b};
}

// Writes grad_w and grad_b: pass(partial) fills `chunks` partial (slope, bias) sums per channel,
// laid out by partial_index, which are then added per channel in a fixed order (and over the
// channels when one slope is shared).
template <typename T, typename Acc, typename Pass>
void parameter_gradients(const Activation& a, int64_t chunks, Tensor& grad_w, Tensor& grad_b, cudaStream_t stream,
                         Pass pass) {
  const int64_t channels = a.layout.channels;
  const ScalarType acc_type = sizeof(Acc) == 8 ? ScalarType::Double : ScalarType::Float;
  // Partials of every chunk, then (shared slope only) the per-channel slope sums.
  const int64_t partial_size = 2 * chunks * channels + (a.shared_weight ? channels : 0);
  Tensor partial = empty_on(a.x, {partial_size}, acc_type, MemoryFormat::Contiguous);
  Acc* pp = static_cast<Acc*>(partial.mutable_data_ptr());
  Acc* channel_w = a.shared_weight ? pp + 2 * chunks * channels : nullptr;
  pass(pp);
  T* gwp = static_cast<T*>(grad_w.mutable_data_ptr());
  finish_channels_kernel<T, Acc><<<dim3(static_cast<unsigned>(channels), 2), kThreads, 0, stream>>>(
      pp, chunks, channels, gwp, static_cast<T*>(grad_b.mutable_data_ptr()), channel_w);
  PYDCR_CUDA_CHECK(cudaGetLastError());
  if (channel_w) {
    finish_shared_slope_kernel<T, Acc><<<1, kThreads, 0, stream>>>(channel_w, channels, gwp);
    PYDCR_CUDA_CHECK(cudaGetLastError());
  }
}

// The gradients of x, the slopes and the bias for output gradient g (dense, in x's layout).
std::tuple<Tensor, Tensor, Tensor> backward_results(const Activation& a, const Tensor& g, const Tensor& weight,
                                                    const std::optional<Tensor>& bias) {
  const ChannelLayout& l = a.layout;
  Tensor grad_x = a.empty_like_x();
  auto [grad_w, grad_b] = empty_parameter_gradients(a, weight);
  const int64_t numel = a.numel();
  if (numel == 0) return {grad_x, grad_w, grad_b};
  const auto [w, b] = dense_params(weight, bias);
  cudaStream_t stream = pydcr::cuda::current_stream(a.x.get_device_index());
  dispatch(a.x.scalar_type(), [&](auto t_tag, auto acc_tag) {
    using T = decltype(t_tag);
    using Acc = decltype(acc_tag);
    const T* gp = static_cast<const T*>(g.const_data_ptr());
    const T* xp = static_cast<const T*>(a.x.const_data_ptr());
    T* gxp = static_cast<T*>(grad_x.mutable_data_ptr());
    constexpr int V = vec_width<T>();
    const bool aligned = aligned16(gp) && aligned16(xp) && aligned16(gxp);
    const bool fits = l.inner > 1 ? l.inner % V == 0 : l.channels % V == 0;
    const BackwardGrid bg = backward_grid(l, aligned && fits ? V : 1);
    parameter_gradients<T, Acc>(a, bg.chunks, grad_w, grad_b, stream, [&](Acc* partial) {
      dispatch_index(numel, [&](auto index_tag) {
        using Index = decltype(index_tag);
        launch_backward<T, Acc, Index>(l, gp, xp, gxp, partial, params_of<T, Acc, Index>(a, w, b), bg, stream);
      });
    });
  });
  return {grad_x, grad_w, grad_b};
}

std::tuple<Tensor, Tensor, Tensor> prelu_backward_cuda(Tensor grad, Tensor x, Tensor weight, std::optional<Tensor> bias) {
  const Activation a = check_cuda(kBackward, x, weight, bias);
  check_like_activation(kBackward, "grad", grad, x);
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  return backward_results(a, a.dense(grad), weight, bias);
}

template <typename Index>
PoolDims<Index> pool_dims(const Activation& a) {
  const Tensor& x = a.x;
  return {static_cast<Index>(x.size(1)), static_cast<Index>(x.size(2)), static_cast<Index>(x.size(3)),
          static_cast<Index>(pooled_size(x.size(2))), static_cast<Index>(pooled_size(x.size(3))),
          a.format == MemoryFormat::ChannelsLast};
}

Tensor prelu_pool_cuda(Tensor x, Tensor weight, std::optional<Tensor> bias) {
  check_pool_input(kPoolForward, x);
  const Activation a = check_cuda(kPoolForward, x, weight, bias);
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  const auto [w, b] = dense_params(weight, bias);
  Tensor y = a.empty_pooled();
  const int64_t outputs = y.numel();
  if (outputs == 0) return y;
  cudaStream_t stream = pydcr::cuda::current_stream(x.get_device_index());
  dispatch_all(x.scalar_type(), a.numel(), [&](auto t_tag, auto acc_tag, auto index_tag) {
    using T = decltype(t_tag);
    using Acc = decltype(acc_tag);
    using Index = decltype(index_tag);
    pool_forward_kernel<T, Acc, Index><<<pydcr::cuda::blocks_for(outputs, kThreads), kThreads, 0, stream>>>(
        static_cast<const T*>(a.x.const_data_ptr()), static_cast<T*>(y.mutable_data_ptr()),
        params_of<T, Acc, Index>(a, w, b), pool_dims<Index>(a), static_cast<Index>(outputs));
    PYDCR_CUDA_CHECK(cudaGetLastError());
  });
  return y;
}

std::tuple<Tensor, Tensor, Tensor> prelu_pool_backward_cuda(Tensor grad, Tensor x, Tensor weight,
                                                            std::optional<Tensor> bias) {
  check_pool_input(kPoolBackward, x);
  const Activation a = check_cuda(kPoolBackward, x, weight, bias);
  check_pooled_grad(kPoolBackward, grad, x);
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  Tensor grad_x = a.empty_like_x();
  auto [grad_w, grad_b] = empty_parameter_gradients(a, weight);
  if (a.numel() == 0) return {grad_x, grad_w, grad_b};
  const Tensor g = a.dense(grad);
  const auto [w, b] = dense_params(weight, bias);
  // The output as a dense outer x channels x inner array, as ChannelLayout reads x.
  const int64_t n = x.size(0), channels = x.size(1), pixels = pooled_size(x.size(2)) * pooled_size(x.size(3));
  const bool channels_last = a.format == MemoryFormat::ChannelsLast;
  const ChannelLayout out = channels_last ? ChannelLayout{n * pixels, channels, 1} : ChannelLayout{n, channels, pixels};
  const BackwardGrid bg = backward_grid(out, 1);
  cudaStream_t stream = pydcr::cuda::current_stream(x.get_device_index());
  dispatch(x.scalar_type(), [&](auto t_tag, auto acc_tag) {
    using T = decltype(t_tag);
    using Acc = decltype(acc_tag);
    const T* gp = static_cast<const T*>(g.const_data_ptr());
    const T* xp = static_cast<const T*>(a.x.const_data_ptr());
    T* gxp = static_cast<T*>(grad_x.mutable_data_ptr());
    parameter_gradients<T, Acc>(a, bg.chunks, grad_w, grad_b, stream, [&](Acc* partial) {
      dispatch_index(a.numel(), [&](auto index_tag) {
        using Index = decltype(index_tag);
        const auto p = params_of<T, Acc, Index>(a, w, b);
        const PoolDims<Index> d = pool_dims<Index>(a);
        if (out.inner > 1) {
          pool_backward_planes_kernel<T, Acc, Index>
              <<<static_cast<unsigned>(bg.chunks * channels), kThreads, 0, stream>>>(
                  gp, xp, gxp, partial, p, d, static_cast<Index>(out.outer * out.inner),
                  static_cast<Index>(bg.per_block), static_cast<Index>(bg.chunks));
        } else {
          const dim3 block(bg.tx, kThreads / bg.tx);
          const dim3 grid(static_cast<unsigned>(bg.chunks), static_cast<unsigned>(ceil_div(channels, bg.tx)));
          pool_backward_rows_kernel<T, Acc, Index><<<grid, block, 2 * sizeof(Acc) * kThreads, stream>>>(
              gp, xp, gxp, partial, p, d, static_cast<Index>(out.outer), static_cast<Index>(bg.per_block));
        }
        PYDCR_CUDA_CHECK(cudaGetLastError());
      });
    });
  });
  return {grad_x, grad_w, grad_b};
}

}  // namespace
}  // namespace pydcr::prelu

STABLE_TORCH_LIBRARY_IMPL(pydcr, CUDA, m) {
  using namespace pydcr::prelu;
  m.impl("prelu", TORCH_BOX(&prelu_cuda));
  m.impl("prelu_backward", TORCH_BOX(&prelu_backward_cuda));
  m.impl("prelu_pool", TORCH_BOX(&prelu_pool_cuda));
  m.impl("prelu_pool_backward", TORCH_BOX(&prelu_pool_backward_cuda));
}
