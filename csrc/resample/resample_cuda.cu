// CUDA kernels of the resample family: resize, degrade and their adjoints.
//
// resize: one thread per output element, a 2-D band dot product read straight from the input.
// degrade: one block per image plane; the vertically reduced rows and the low-resolution image
// stay in shared memory and each output element is expanded from them, so the low-resolution
// image never reaches global memory. Both read any strides and write NCHW or channels_last.
// Weights are host-built bands (resample.h), copied to the device once per call; the tap
// arithmetic is band_dot, the same function the CPU kernels use.
#include <limits>
#include <type_traits>

#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include "common/cuda_utils.h"
#include "resample/resample_ops.h"

namespace pydcr::resample {
namespace {

using pydcr::cuda::from_acc;
using pydcr::cuda::to_acc;

struct Strides {
  int64_t n, c, h, w;
};

Strides strides_of(const Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

template <typename W>
struct DeviceBand {
  int64_t rows, width;
  const int64_t* start;
  const int64_t* len;
  const W* weight;
  __device__ BandRow<W> row(int64_t i) const { return {start[i], len[i], weight + i * width}; }
};

// Host bands and the offsets of their packed device copy.
template <typename W>
class DeviceBands {
 public:
  explicit DeviceBands(std::initializer_list<const Band<double>*> bands) {
    for (const Band<double>* b : bands) {
      Band<W> c = cast<W>(*b);
      Offsets o{c.rows, c.width, upload_.add(c.start.data(), c.rows), upload_.add(c.len.data(), c.rows),
                upload_.add(c.weight.data(), c.weight.size())};
      offsets_.push_back(o);
    }
  }
  void to_device(const torch::stable::Device& device) { table_ = upload_.to_device(device); }
  DeviceBand<W> operator[](size_t i) const {
    const auto* base = static_cast<const unsigned char*>(table_.const_data_ptr());
    const Offsets& o = offsets_[i];
    return {o.rows, o.width, reinterpret_cast<const int64_t*>(base + o.start),
            reinterpret_cast<const int64_t*>(base + o.len), reinterpret_cast<const W*>(base + o.weight)};
  }

 private:
  struct Offsets {
    int64_t rows, width;
    size_t start, len, weight;
  };
  pydcr::cuda::TableUpload upload_;
  std::vector<Offsets> offsets_;
  Tensor table_;
};

// y[n, c, i, j] = sum_a bh[i, a] * sum_b bw[j, b] * x[n, c, start_i + a, start_j + b].
template <typename In, typename Out, typename Acc>
__global__ void resize_kernel(const In* __restrict__ x, Out* __restrict__ y, int64_t n, int64_t c, int64_t out_h,
                              int64_t out_w, Strides xs, Strides ys, bool channels_last, DeviceBand<Acc> bh,
                              DeviceBand<Acc> bw) {
  const int64_t total = n * c * out_h * out_w;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    // Consecutive threads walk the output's innermost dimension, so writes coalesce.
    int64_t ni, ci, i, j, t = idx;
    if (channels_last) {
      ci = t % c, t /= c, j = t % out_w, t /= out_w, i = t % out_h, ni = t / out_h;
    } else {
      j = t % out_w, t /= out_w, i = t % out_h, t /= out_h, ci = t % c, ni = t / c;
    }
    const In* plane = x + ni * xs.n + ci * xs.c;
    const BandRow<Acc> rw = bw.row(j);
    const Acc acc = band_dot<Acc>(bh.row(i), xs.h, [&](int64_t row) {
      return band_dot<Acc>(rw, xs.w, [&](int64_t col) { return to_acc<Acc>(plane[row + col]); });
    });
    y[ni * ys.n + ci * ys.c + i * ys.h + j * ys.w] = from_acc<Out>(acc);
  }
}

// One block per (n, c) plane: reduce rows into shared memory, reduce columns to the low
// resolution image (also shared), then expand each output element from it.
template <typename In, typename Out, typename Acc>
__global__ void degrade_kernel(const In* __restrict__ x, Out* __restrict__ y, int64_t c, int64_t in_w, int64_t out_h,
                               int64_t out_w, Strides xs, Strides ys, DeviceBand<Acc> reduce_h,
                               DeviceBand<Acc> reduce_w, DeviceBand<Acc> expand_w, DeviceBand<Acc> expand_h) {
  extern __shared__ __align__(16) unsigned char shared[];
  const int64_t low_h = reduce_h.rows, low_w = reduce_w.rows;
  Acc* rows_low = reinterpret_cast<Acc*>(shared);  // low_h x in_w
  Acc* low = rows_low + low_h * in_w;               // low_h x low_w
  const int64_t ni = blockIdx.x / c, ci = blockIdx.x % c;
  const In* plane = x + ni * xs.n + ci * xs.c;

  for (int64_t e = threadIdx.x; e < low_h * in_w; e += blockDim.x) {
    const int64_t r = e / in_w, col = e % in_w;
    rows_low[e] = band_dot<Acc>(reduce_h.row(r), xs.h, [&](int64_t off) { return to_acc<Acc>(plane[off + col * xs.w]); });
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < low_h * low_w; e += blockDim.x) {
    const int64_t r = e / low_w, q = e % low_w;
    low[e] = band_dot<Acc>(reduce_w.row(q), 1, [&](int64_t off) { return rows_low[r * in_w + off]; });
  }
  __syncthreads();
  Out* out = y + ni * ys.n + ci * ys.c;
  for (int64_t e = threadIdx.x; e < out_h * out_w; e += blockDim.x) {
    const int64_t i = e / out_w, j = e % out_w;
    const BandRow<Acc> rw = expand_w.row(j);
    const Acc acc = band_dot<Acc>(expand_h.row(i), low_w, [&](int64_t row) {
      return band_dot<Acc>(rw, 1, [&](int64_t col) { return low[row + col]; });
    });
    out[i * ys.h + j * ys.w] = from_acc<Out>(acc);
  }
}

constexpr int kThreads = 256;

// Calls f(In{}, Out{}, Acc{}) for the element types of x: uint8 reads give float32 results.
template <typename F>
void dispatch(const Tensor& x, F&& f) {
  switch (x.scalar_type()) {
    case ScalarType::Byte: f(uint8_t{}, float{}, float{}); break;
    case ScalarType::Half: f(__half{}, __half{}, float{}); break;
    case ScalarType::BFloat16: f(__nv_bfloat16{}, __nv_bfloat16{}, float{}); break;
    case ScalarType::Float: f(float{}, float{}, float{}); break;
    default: f(double{}, double{}, double{}); break;
  }
}

void check_cuda_dtype(const char* op, const char* arg, const Tensor& x, bool uint8_ok) {
  if (uint8_ok)
    check_dtype(op, arg, x,
                {ScalarType::Byte, ScalarType::Half, ScalarType::BFloat16, ScalarType::Float, ScalarType::Double},
                "on CUDA");
  else
    check_dtype(op, arg, x, {ScalarType::Half, ScalarType::BFloat16, ScalarType::Float, ScalarType::Double},
                "on CUDA");
}

// Calls f(Out{}) for the element type of a float32 or 16-bit result.
template <typename F>
void dispatch_narrow_out(const Tensor& out, F&& f) {
  switch (out.scalar_type()) {
    case ScalarType::Half: f(__half{}); break;
    case ScalarType::BFloat16: f(__nv_bfloat16{}); break;
    default: f(float{}); break;
  }
}

// y = bh x bw^T for every plane of x, into `out` (allocated by the caller): of x's result type, or,
// between float32 and the 16-bit types, of the other one (degrade's large-plane passes).
void launch_resize(const Tensor& x, Tensor& out, const Band<double>& bh, const Band<double>& bw) {
  const int64_t total = out.numel();
  if (total == 0) return;
  cudaStream_t stream = pydcr::cuda::current_stream(x.get_device_index());
  dispatch(x, [&](auto in_tag, auto out_tag, auto acc_tag) {
    using In = decltype(in_tag);
    using Acc = decltype(acc_tag);
    auto launch = [&](auto result_tag) {
      using Out = decltype(result_tag);
      DeviceBands<Acc> bands({&bh, &bw});
      bands.to_device(x.device());
      resize_kernel<In, Out, Acc><<<pydcr::cuda::blocks_for(total, kThreads), kThreads, 0, stream>>>(
          static_cast<const In*>(x.const_data_ptr()), static_cast<Out*>(out.mutable_data_ptr()), out.size(0),
          out.size(1), out.size(2), out.size(3), strides_of(x), strides_of(out), is_channels_last(out), bands[0],
          bands[1]);
      PYDCR_CUDA_CHECK(cudaGetLastError());
    };
    if constexpr (std::is_same_v<Acc, double>) launch(out_tag);
    else dispatch_narrow_out(out, launch);
  });
}

Tensor resize_op(const char* op, const char* arg, const Tensor& x, const ResizeArgs& a, bool antialias, bool adjoint) {
  check_cuda_dtype(op, arg, x, !adjoint);
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  Tensor out = empty_image_batch(x, a.n, a.c, a.out_h, a.out_w, float_result_type(x));
  const auto bands = resize_bands(a, antialias, adjoint);
  launch_resize(x, out, bands[0], bands[1]);
  return out;
}

Tensor resize_cuda(Tensor x, std::vector<int64_t> size, bool antialias) {
  const ResizeArgs a = check_resize("pydcr.resize", "x", x, size, "size");
  return resize_op("pydcr.resize", "x", x, a, antialias, false);
}

Tensor resize_backward_cuda(Tensor grad, std::vector<int64_t> input_size, bool antialias) {
  const ResizeArgs a = check_resize("pydcr.resize_backward", "grad", grad, input_size, "input_size");
  return resize_op("pydcr.resize_backward", "grad", grad, a, antialias, true);
}

Tensor degrade_op(const char* op, const char* arg, const Tensor& x, const DegradeArgs& a, bool adjoint) {
  check_cuda_dtype(op, arg, x, !adjoint);
  torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
  Tensor out = empty_image_batch(x, a.n, a.c, a.out_h, a.out_w, float_result_type(x));
  if (out.numel() == 0) return out;
  const DegradePlan& p = a.plan;
  const int32_t device = x.get_device_index();
  cudaStream_t stream = pydcr::cuda::current_stream(device);

  bool fused = false;
  dispatch(x, [&](auto in_tag, auto out_tag, auto acc_tag) {
    using In = decltype(in_tag);
    using Out = decltype(out_tag);
    using Acc = decltype(acc_tag);
    const size_t smem = sizeof(Acc) * p.reduce_h.rows * (a.in_w + p.reduce_w.rows);
    int max_smem = 0;
    PYDCR_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    // The fused kernel takes one block per image plane, and a grid at most 2^31 - 1 blocks.
    if (smem > static_cast<size_t>(max_smem) || a.n * a.c > std::numeric_limits<int32_t>::max()) return;
    auto kernel = degrade_kernel<In, Out, Acc>;
    if (smem > 48 * 1024)
      PYDCR_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    DeviceBands<Acc> bands({&p.reduce_h, &p.reduce_w, &p.expand_w, &p.expand_h});
    bands.to_device(x.device());
    kernel<<<static_cast<unsigned>(a.n * a.c), kThreads, smem, stream>>>(
        static_cast<const In*>(x.const_data_ptr()), static_cast<Out*>(out.mutable_data_ptr()), a.c, a.in_w, a.out_h,
        a.out_w, strides_of(x), strides_of(out), bands[0], bands[1], bands[2], bands[3]);
    PYDCR_CUDA_CHECK(cudaGetLastError());
    fused = true;
  });
  if (!fused) {
    // The intermediate rows do not fit in shared memory, or the planes in one grid: two resize
    // passes through a low-resolution tensor in global memory. It is float32 for 16-bit batches,
    // so that they are rounded once, as in the fused kernel; else of the result's dtype, so the
    // second pass reads what it writes.
    const bool sixteen_bit = x.scalar_type() == ScalarType::Half || x.scalar_type() == ScalarType::BFloat16;
    Tensor low = empty_image_batch(x, a.n, a.c, p.reduce_h.rows, p.reduce_w.rows,
                                   sixteen_bit ? ScalarType::Float : float_result_type(x));
    launch_resize(x, low, p.reduce_h, p.reduce_w);
    launch_resize(low, out, p.expand_h, p.expand_w);
  }
  return out;
}

Tensor degrade_cuda(Tensor x, std::vector<int64_t> low, std::vector<int64_t> size, bool antialias) {
  const DegradeArgs a = check_degrade("pydcr.degrade", x, low, size, antialias, false);
  return degrade_op("pydcr.degrade", "x", x, a, false);
}

Tensor degrade_backward_cuda(Tensor grad, std::vector<int64_t> low, std::vector<int64_t> input_size, bool antialias) {
  const DegradeArgs a = check_degrade("pydcr.degrade_backward", grad, low, input_size, antialias, true);
  return degrade_op("pydcr.degrade_backward", "grad", grad, a, true);
}

}  // namespace
}  // namespace pydcr::resample

STABLE_TORCH_LIBRARY_IMPL(pydcr, CUDA, m) {
  using namespace pydcr::resample;
  m.impl("resize", TORCH_BOX(&resize_cuda));
  m.impl("resize_backward", TORCH_BOX(&resize_backward_cuda));
  m.impl("degrade", TORCH_BOX(&degrade_cuda));
  m.impl("degrade_backward", TORCH_BOX(&degrade_backward_cuda));
}
