#pragma once
// Argument checks shared by every op: errors name the op, the argument and what was expected.
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

#include <array>
#include <initializer_list>
#include <string>
#include <vector>

namespace pydcr {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

inline const char* dtype_name(ScalarType t) {
  switch (t) {
    case ScalarType::Byte: return "uint8";
    case ScalarType::Char: return "int8";
    case ScalarType::Int: return "int32";
    case ScalarType::Long: return "int64";
    case ScalarType::Half: return "float16";
    case ScalarType::BFloat16: return "bfloat16";
    case ScalarType::Float: return "float32";
    case ScalarType::Double: return "float64";
    case ScalarType::Bool: return "bool";
    default: return "an unsupported dtype";
  }
}

inline void check_dtype(const char* op, const char* arg, const Tensor& t, std::initializer_list<ScalarType> allowed,
                        const char* where) {
  for (ScalarType a : allowed)
    if (t.scalar_type() == a) return;
  std::string expected;
  for (ScalarType a : allowed) expected += std::string(expected.empty() ? "" : ", ") + dtype_name(a);
  STD_TORCH_CHECK(false, op, ": ", arg, " has dtype ", dtype_name(t.scalar_type()), "; expected one of ", expected,
                  " ", where);
}

// A 4-D image batch N x C x H x W with non-empty planes (N may be 0).
inline void check_image_batch(const char* op, const char* arg, const Tensor& x) {
  STD_TORCH_CHECK(x.dim() == 4, op, ": ", arg, " must be a 4-D tensor N x C x H x W, got ", x.dim(), " dimensions");
  STD_TORCH_CHECK(x.size(2) > 0 && x.size(3) > 0, op, ": ", arg, " must have positive height and width, got ",
                  x.size(2), " x ", x.size(3));
}

// A (height, width) pair of positive ints.
inline std::array<int64_t, 2> check_hw(const char* op, const char* arg, const std::vector<int64_t>& hw) {
  STD_TORCH_CHECK(hw.size() == 2, op, ": ", arg, " must be (height, width), got ", hw.size(), " values");
  STD_TORCH_CHECK(hw[0] > 0 && hw[1] > 0, op, ": ", arg, " must be positive, got (", hw[0], ", ", hw[1], ")");
  return {hw[0], hw[1]};
}

// True when x is laid out N x H x W x C in memory (channels_last) and not also plain contiguous.
inline bool is_channels_last(const Tensor& x) {
  if (x.dim() != 4 || x.is_contiguous()) return false;
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t expected[4] = {h * w * c, 1, w * c, c};
  const int64_t sizes[4] = {n, c, h, w};
  for (int d = 0; d < 4; ++d)
    if (sizes[d] != 1 && x.stride(d) != expected[d]) return false;
  return true;
}

// An uninitialised tensor on like's device with the given sizes, dtype and layout (channels_last
// for 4-D sizes). Made through the C shim's empty_strided rather than the dispatcher's by-name
// call, which costs more than a small op's arithmetic.
inline Tensor empty_on(const Tensor& like, const std::vector<int64_t>& sizes, ScalarType dtype,
                       torch::headeronly::MemoryFormat format) {
  const int64_t dims = static_cast<int64_t>(sizes.size());
  std::vector<int64_t> strides(dims);
  if (format == torch::headeronly::MemoryFormat::ChannelsLast && dims == 4) {
    const int64_t c = sizes[1], h = sizes[2], w = sizes[3];
    strides = {h * w * c, 1, w * c, c};
  } else {
    int64_t stride = 1;
    for (int64_t d = dims - 1; d >= 0; --d) {
      strides[d] = stride;
      stride *= sizes[d] > 1 ? sizes[d] : 1;
    }
  }
  int32_t device_type = 0;
  AtenTensorHandle handle = nullptr;
  const int32_t shim_dtype = torch::stable::detail::to<int32_t>(torch::stable::detail::from(dtype));
  STD_TORCH_CHECK(aoti_torch_get_device_type(like.get(), &device_type) == AOTI_TORCH_SUCCESS &&
                      aoti_torch_empty_strided(dims, sizes.data(), strides.data(), shim_dtype, device_type,
                                               like.get_device_index(), &handle) == AOTI_TORCH_SUCCESS,
                  "pydcr: could not allocate a tensor");
  return Tensor(handle);
}

// t in the given layout: t itself when it already is (no dispatcher call, which costs more than a
// small op's arithmetic), else a dense copy.
inline Tensor in_layout(const Tensor& t, torch::headeronly::MemoryFormat format) {
  const bool ready = format == torch::headeronly::MemoryFormat::ChannelsLast ? is_channels_last(t) : t.is_contiguous();
  return ready ? t : torch::stable::contiguous(t, format);
}

// The floating dtype an op returns for x: float32 for uint8 images, else x's own.
inline ScalarType float_result_type(const Tensor& x) {
  return x.scalar_type() == ScalarType::Byte ? ScalarType::Float : x.scalar_type();
}

// t's elements as T, for element types the stable API's typed accessors do not know (the CPU
// kernels' 16-bit structs).
template <typename T>
const T* data(const Tensor& t) {
  return static_cast<const T*>(t.const_data_ptr());
}

template <typename T>
T* mutable_data(Tensor& t) {
  return static_cast<T*>(t.mutable_data_ptr());
}

// An uninitialised N x C x H x W tensor on x's device, in x's memory format (NCHW or channels_last).
inline Tensor empty_image_batch(const Tensor& x, int64_t n, int64_t c, int64_t h, int64_t w, ScalarType dtype) {
  const auto format = is_channels_last(x) ? torch::headeronly::MemoryFormat::ChannelsLast
                                          : torch::headeronly::MemoryFormat::Contiguous;
  return empty_on(x, {n, c, h, w}, dtype, format);
}

}  // namespace pydcr
