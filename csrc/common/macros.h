#pragma once
// Qualifiers for arithmetic shared by the CPU and CUDA kernels.
#if defined(__CUDACC__)
#define PYDCR_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PYDCR_HOST_DEVICE inline
#endif
