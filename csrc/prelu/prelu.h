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
//
// prelu_pool follows the PReLU with a 2x2 max-pool of stride 2 in ceil mode (Caffe's pooling, as
// the trunk uses after its widening convolutions): output (i, j) is the largest activation of
// rows 2i, 2i + 1 and columns 2j, 2j + 1, clipped at the edges, so every input element lies in
// exactly one window. Its backward pass routes each output gradient to its window's largest
// element and is then the PReLU backward pass above, with zero gradient everywhere else.
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

// Output size of the 2x2, stride 2, ceil-mode pool along an axis of n elements.
PYDCR_HOST_DEVICE int64_t pooled_size(int64_t n) { return (n + 1) / 2; }

// A pooling window's scan so far: its largest activation, the input element that gave it, and
// where that lies (0 to 3, row-major in the 2x2 window; a T, so that vector code selects it
// like the rest).
template <typename T>
struct WindowScan {
  T best, x, at;
};

// The scan of a window's first element.
template <typename T>
PYDCR_HOST_DEVICE WindowScan<T> start_window(T x, T w, T b) {
  return {activate(x + b, w), x, T(0)};
}

// Adds element x at position `at` to the scan. The first maximum, or the last NaN, wins, as in
// ATen's max-pool, so that the gradient goes where eager's goes. One select per comparison:
// compilers vectorise that, and not `v > best || v != v`.
template <typename T>
PYDCR_HOST_DEVICE void scan_element(WindowScan<T>& s, T x, T at, T w, T b) {
  const T v = activate(x + b, w);
  const bool greater = v > s.best;
  s.best = greater ? v : s.best;
  s.x = greater ? x : s.x;
  s.at = greater ? at : s.at;
  const bool nan = v != v;
  s.best = nan ? v : s.best;
  s.x = nan ? x : s.x;
  s.at = nan ? at : s.at;
}

// The scan of a full 2x2 window from its elements, row-major.
template <typename T>
PYDCR_HOST_DEVICE WindowScan<T> scan_window4(T x00, T x01, T x10, T x11, T w, T b) {
  WindowScan<T> s = start_window(x00, w, b);
  scan_element(s, x01, T(1), w, b);
  scan_element(s, x10, T(2), w, b);
  scan_element(s, x11, T(3), w, b);
  return s;
}

// The scan of a window of rows x cols elements (1 or 2 each, fewer at the edges in ceil mode);
// load(r, c) gives the element at offset (r, c) from the window's top-left.
template <typename T, typename Load>
PYDCR_HOST_DEVICE WindowScan<T> scan_window(Load load, int rows, int cols, T w, T b) {
  WindowScan<T> s = start_window(load(0, 0), w, b);
  if (cols == 2) scan_element(s, load(0, 1), T(1), w, b);
  if (rows == 2) {
    scan_element(s, load(1, 0), T(2), w, b);
    if (cols == 2) scan_element(s, load(1, 1), T(3), w, b);
  }
  return s;
}

// The backward pass of one window of rows x cols elements: the PReLU backward terms of its
// largest element (added to sum_w and sum_b) as that element's gradient, zero at the others.
// load(r, c) reads x and store(r, c, v) writes grad_x at offset (r, c) from the window's top-left.
template <typename T, typename Load, typename Store>
PYDCR_HOST_DEVICE void window_backward(Load load, Store store, int rows, int cols, T grad, T w, T b, T& sum_w,
                                       T& sum_b) {
  const WindowScan<T> s = scan_window<T>(load, rows, cols, w, b);
  const T grad_x = backward_value(grad, s.x, w, b, sum_w, sum_b);
  const int at = static_cast<int>(s.at);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) store(r, c, 2 * r + c == at ? grad_x : T(0));
}

}  // namespace pydcr::prelu
