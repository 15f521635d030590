#pragma once
// 16-bit floating-point storage for the CPU kernels: bfloat16 and IEEE half elements are read into
// float, computed on in float and rounded back to nearest-even on store, as ATen's CPU kernels do.
// Plain structs of the bits, so that the hot loops stay plain loops over plain data: the
// conversions are integer shifts, adds and selects that the compiler vectorises (GCC 12 does not
// vectorise conversions through _Float16).
#include <bit>
#include <cstdint>
#include <type_traits>

namespace pydcr::cpu {

struct BFloat16 {
  uint16_t bits;
};

struct Half {
  uint16_t bits;
};

// The type a kernel computes in for element type T: double for double, float for the rest.
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

inline float widen(float v) { return v; }
inline double widen(double v) { return v; }
inline float widen(BFloat16 v) { return std::bit_cast<float>(static_cast<uint32_t>(v.bits) << 16); }

// IEEE half to float. Exponent and mantissa move up by 13 bits and the exponent is rebased from
// 15 to 127; infinities and NaNs get the largest exponent, and subnormals (exponent 0) are made
// normal with one float subtraction. Selects, not branches, so that loops of it vectorise.
inline float widen(Half v) {
  const uint32_t magnitude = static_cast<uint32_t>(v.bits & 0x7fffu) << 13;
  const uint32_t exponent = magnitude & 0x0f800000u;
  const uint32_t rebased = magnitude + (112u << 23);
  const float subnormal = std::bit_cast<float>(rebased + (1u << 23)) - std::bit_cast<float>(113u << 23);
  const uint32_t bits = exponent == 0x0f800000u ? rebased + (112u << 23)
                        : exponent == 0         ? std::bit_cast<uint32_t>(subnormal)
                                                : rebased;
  return std::bit_cast<float>(bits | (static_cast<uint32_t>(v.bits & 0x8000u) << 16));
}

// v rounded to T (nearest, ties to even; NaN stays NaN).
template <typename T>
inline T narrow(acc_t<T> v) {
  if constexpr (std::is_same_v<T, BFloat16>) {
    const uint32_t u = std::bit_cast<uint32_t>(v);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return {static_cast<uint16_t>(v != v ? 0x7fc0u : rounded)};
  } else if constexpr (std::is_same_v<T, Half>) {
    const uint32_t u = std::bit_cast<uint32_t>(v);
    const uint32_t magnitude = u & 0x7fffffffu;
    // Normal halves: rebase the exponent from 127 to 15 and round the 13 dropped mantissa bits.
    const uint32_t normal = (magnitude - (112u << 23) + 0xfffu + ((magnitude >> 13) & 1u)) >> 13;
    // Subnormal halves (and zero): adding 0.5 lines the half's last mantissa bit up with the
    // float's, and the float addition rounds to nearest even.
    const float aligned = std::bit_cast<float>(magnitude) + 0.5f;
    const uint32_t subnormal = std::bit_cast<uint32_t>(aligned) - std::bit_cast<uint32_t>(0.5f);
    const uint32_t out = magnitude > 0x7f800000u   ? 0x7e00u   // NaN
                         : magnitude >= 0x47800000u ? 0x7c00u  // overflows to infinity (65520 and up)
                         : magnitude < 0x38800000u  ? subnormal
                                                    : normal;
    return {static_cast<uint16_t>(out | ((u >> 16) & 0x8000u))};
  } else {
    return v;
  }
}

}  // namespace pydcr::cpu
