#pragma once
// PReLU with a per-channel bias and a residual add, y = PReLU(x + b[c], w[c]) + r, and its
// gradients: the arithmetic shared by the CPU and CUDA kernels.
//
// An activation is read as a dense outer x channels x inner array: NCHW is N x C x (H * W),
// channels_last is (N * H * W) x C x 1 and an N x C matrix is N x C x 1, so element i belongs to
// channel (i / inner) % channels in every layout.
//
// With z = x + b[c] and s = dPReLU/dz (1 where z > 0, else w[c]), the backward pass gives
//   grad_x = grad * s,  grad_b[c] = sum over channel c of grad_x,
//   grad_w[c] = sum over channel c of grad * min(z, 0),  grad_residual = grad.
// Only x is needed to recompute z, s and min(z, 0), so x is all the forward saves.
#include <cstdint>

#include "common/macros.h"

namespace pydcr::prelu {

// The dense view of an activation described above.
struct ChannelLayout {
  int64_t outer;
  int64_t channels;
  int64_t inner;
};

PYDCR_HOST_DEVICE int64_t channel_of(int64_t i, int64_t channels, int64_t inner) { return (i / inner) % channels; }

// PReLU(z) with slope w on the negative side.
template <typename T>
PYDCR_HOST_DEVICE T activate(T z, T w) {
  return z > T(0) ? z : w * z;
}

// dPReLU/dz: the factor from the output gradient to the input (and bias) gradient.
template <typename T>
PYDCR_HOST_DEVICE T input_slope(T z, T w) {
  return z > T(0) ? T(1) : w;
}

// dPReLU/dw times the output gradient: one term of the slope gradient's per-channel sum.
template <typename T>
PYDCR_HOST_DEVICE T slope_term(T grad, T z) {
  return z > T(0) ? T(0) : grad * z;
}

// y for one element: the activation of the biased input plus the residual (0 when absent).
template <typename T>
PYDCR_HOST_DEVICE T forward_value(T x, T w, T b, T r) {
  return activate(x + b, w) + r;
}

// One element of the backward pass: returns grad_x and adds the element's terms to its
// channel's slope and bias gradient sums.
template <typename T>
PYDCR_HOST_DEVICE T backward_value(T grad, T x, T w, T b, T& sum_w, T& sum_b) {
  const T z = x + b;
  const T grad_x = grad * input_slope(z, w);
  sum_w += slope_term(grad, z);
  sum_b += grad_x;
  return grad_x;
}

}  // namespace pydcr::prelu
