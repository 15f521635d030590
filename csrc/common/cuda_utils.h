#pragma once
// CUDA helpers for the stable ABI: streams, error checks, dtype conversions, and device copies
// of host-built lookup tables.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/Exception.h>

#include <cstring>
#include <vector>

namespace pydcr::cuda {

#define PYDCR_CUDA_CHECK(expr)                                                                   \
  do {                                                                                            \
    const cudaError_t pydcr_err_ = (expr);                                                        \
    STD_TORCH_CHECK(pydcr_err_ == cudaSuccess, "CUDA error: ", cudaGetErrorString(pydcr_err_)); \
  } while (0)

inline cudaStream_t current_stream(int32_t device) {
  void* stream = nullptr;
  STD_TORCH_CHECK(aoti_torch_get_current_cuda_stream(device, &stream) == AOTI_TORCH_SUCCESS,
                  "pydcr: could not get the current CUDA stream");
  return static_cast<cudaStream_t>(stream);
}

inline int64_t blocks_for(int64_t work, int64_t threads) {
  const int64_t b = (work + threads - 1) / threads;
  return b < 1 ? 1 : (b > 2147483647 ? 2147483647 : b);
}

// Loads any supported element type as the accumulation type, and stores it back.
template <typename Acc>
__device__ __forceinline__ Acc to_acc(uint8_t v) { return static_cast<Acc>(v); }
template <typename Acc>
__device__ __forceinline__ Acc to_acc(float v) { return static_cast<Acc>(v); }
template <typename Acc>
__device__ __forceinline__ Acc to_acc(double v) { return static_cast<Acc>(v); }
template <typename Acc>
__device__ __forceinline__ Acc to_acc(__half v) { return static_cast<Acc>(__half2float(v)); }
template <typename Acc>
__device__ __forceinline__ Acc to_acc(__nv_bfloat16 v) { return static_cast<Acc>(__bfloat162float(v)); }

template <typename Out>
__device__ __forceinline__ Out from_acc(float v) { return static_cast<Out>(v); }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <typename Out>
__device__ __forceinline__ Out from_acc(double v) { return static_cast<Out>(v); }

// Packs host arrays into one pinned buffer and copies it to the device on the current stream
// (torch's pinned allocator keeps the buffer alive until the copy is done).
class TableUpload {
 public:
  // Appends n elements and returns their byte offset in the packed buffer.
  template <typename T>
  size_t add(const T* data, size_t n) {
    const size_t offset = (bytes_.size() + 15) / 16 * 16;
    bytes_.resize(offset + n * sizeof(T));
    if (n) std::memcpy(bytes_.data() + offset, data, n * sizeof(T));
    return offset;
  }

  // The device copy; pointers into it are base + offset.
  torch::stable::Tensor to_device(const torch::stable::Device& device) const {
    const int64_t n = static_cast<int64_t>(bytes_.empty() ? 1 : bytes_.size());
    torch::stable::Tensor host = torch::stable::empty({n}, torch::headeronly::ScalarType::Byte, std::nullopt,
                                                      std::nullopt, /*pin_memory=*/true);
    std::memcpy(host.mutable_data_ptr(), bytes_.data(), bytes_.size());
    return torch::stable::to(host, device, /*non_blocking=*/true);
  }

 private:
  std::vector<unsigned char> bytes_;
};

}  // namespace pydcr::cuda
