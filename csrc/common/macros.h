#pragma once
// Qualifiers for kernel code.
#if defined(__CUDACC__)
#define PYDCR_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define PYDCR_HOST_DEVICE inline
#endif

// CPU hot loops: cloned for AVX-512 and AVX2, the clone picked at load time by the CPU it runs on.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PYDCR_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PYDCR_CPU_CLONES
#endif
