#pragma once
// Host-side plumbing shared by the CPU and CUDA kernels of the prelu family: argument checks and
// the dense layout (prelu.h) a kernel reads. NCHW and channels_last inputs are read in place;
// any other strides are made contiguous first. Results keep the layout of x.
#include <torch/csrc/stable/ops.h>

#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "common/tensor_checks.h"
#include "prelu/prelu.h"

namespace pydcr::prelu {

using torch::headeronly::MemoryFormat;

inline std::string shape_of(const Tensor& t) {
  std::string s = "[";
  for (int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + std::to_string(t.size(d));
  return s + "]";
}

inline std::string device_of(const Tensor& t) {
  return t.is_cuda() ? "cuda:" + std::to_string(t.get_device_index()) : (t.is_cpu() ? "cpu" : "another device");
}

// `t` must share x's dtype and device.
inline void check_like_x(const char* op, const char* arg, const Tensor& t, const Tensor& x) {
  STD_TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", arg, " has dtype ", dtype_name(t.scalar_type()),
                  "; expected ", dtype_name(x.scalar_type()), ", the dtype of x");
  STD_TORCH_CHECK(t.device() == x.device(), op, ": ", arg, " is on ", device_of(t), "; expected ", device_of(x),
                  ", the device of x");
}

inline void check_same_shape(const char* op, const char* arg, const Tensor& t, const Tensor& x) {
  bool same = t.dim() == x.dim();
  for (int64_t d = 0; same && d < t.dim(); ++d) same = t.size(d) == x.size(d);
  STD_TORCH_CHECK(same, op, ": ", arg, " must have the shape of x, ", shape_of(x), ", got ", shape_of(t));
}

// x in the layout a kernel reads, with the view of it described in prelu.h.
struct Activation {
  Tensor x;
  ChannelLayout layout;
  MemoryFormat format;
  bool shared_weight;  // one slope for every channel

  int64_t numel() const { return layout.outer * layout.channels * layout.inner; }
  // `t` (of x's shape) in x's layout: itself when it already is, else a dense copy.
  Tensor dense(const Tensor& t) const { return in_layout(t, format); }
  // An uninitialised tensor of x's shape, dtype, device and layout.
  Tensor empty_like_x() const { return empty_of(sizes_of(x)); }
  // An uninitialised tensor for prelu_pool's output: N x C x ceil(H / 2) x ceil(W / 2) in x's layout.
  Tensor empty_pooled() const { return empty_of(pooled_sizes(x)); }

  static std::vector<int64_t> sizes_of(const Tensor& t) {
    std::vector<int64_t> sizes(t.dim());
    for (int64_t d = 0; d < t.dim(); ++d) sizes[d] = t.size(d);
    return sizes;
  }
  static std::vector<int64_t> pooled_sizes(const Tensor& t) {
    return {t.size(0), t.size(1), pooled_size(t.size(2)), pooled_size(t.size(3))};
  }

 private:
  Tensor empty_of(const std::vector<int64_t>& sizes) const { return empty_on(x, sizes, x.scalar_type(), format); }
};

// Checks x, weight and bias (dtypes `allowed` on this device, named by `where`) and reads x's layout.
inline Activation check_prelu(const char* op, const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias,
                              std::initializer_list<ScalarType> allowed, const char* where) {
  STD_TORCH_CHECK(x.dim() >= 2, op, ": x must be N x C or N x C x H x W (at least 2 dimensions), got ", x.dim(),
                  " dimension", x.dim() == 1 ? "" : "s");
  check_dtype(op, "x", x, allowed, where);
  const int64_t channels = x.size(1);
  check_like_x(op, "weight", weight, x);
  STD_TORCH_CHECK(weight.dim() == 1 && (weight.size(0) == 1 || weight.size(0) == channels), op,
                  ": weight must hold 1 or C = ", channels, " slopes, shape [1] or [", channels, "], got shape ",
                  shape_of(weight));
  if (bias) {
    check_like_x(op, "bias", *bias, x);
    STD_TORCH_CHECK(bias->dim() == 1 && bias->size(0) == channels, op, ": bias must hold C = ", channels,
                    " values, shape [", channels, "], got shape ", shape_of(*bias));
  }
  const bool channels_last = is_channels_last(x);
  Activation a;
  a.format = channels_last ? MemoryFormat::ChannelsLast : MemoryFormat::Contiguous;
  a.x = in_layout(x, a.format);
  int64_t inner = 1;
  for (int64_t d = 2; d < x.dim(); ++d) inner *= x.size(d);
  a.layout = channels_last ? ChannelLayout{x.size(0) * inner, channels, 1} : ChannelLayout{x.size(0), channels, inner};
  a.shared_weight = weight.size(0) == 1 && channels != 1;
  return a;
}

// A residual (forward) or an output gradient (backward): x's shape, dtype and device.
inline void check_like_activation(const char* op, const char* arg, const Tensor& t, const Tensor& x) {
  check_like_x(op, arg, t, x);
  check_same_shape(op, arg, t, x);
}

// prelu_pool takes N x C x H x W activations only.
inline void check_pool_input(const char* op, const Tensor& x) {
  STD_TORCH_CHECK(x.dim() == 4, op, ": x must be N x C x H x W, got ", x.dim(), " dimension", x.dim() == 1 ? "" : "s");
}

// prelu_pool's output gradient: x's dtype and device, the pooled shape.
inline void check_pooled_grad(const char* op, const Tensor& grad, const Tensor& x) {
  check_like_x(op, "grad", grad, x);
  const std::vector<int64_t> expected = Activation::pooled_sizes(x);
  bool same = grad.dim() == 4;
  for (int64_t d = 0; same && d < 4; ++d) same = grad.size(d) == expected[d];
  STD_TORCH_CHECK(same, op, ": grad must have the pooled shape of x, ", shape_of(x), " -> [", expected[0], ", ",
                  expected[1], ", ", expected[2], ", ", expected[3], "], got ", shape_of(grad));
}

}  // namespace pydcr::prelu
