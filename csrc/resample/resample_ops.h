#pragma once
// Host-side plumbing shared by the CPU and CUDA kernels of the resample family: argument
// checks and the banded maps (resample.h) each op applies.
#include <array>
#include <vector>

#include "common/tensor_checks.h"
#include "resample/resample.h"

namespace pydcr::resample {

struct ResizeArgs {
  int64_t n, c, in_h, in_w, out_h, out_w;
};

// resize(x, size) and resize_backward(grad, input_size) share one shape rule: `src` is the
// tensor read, `dst_hw` the spatial size written.
inline ResizeArgs check_resize(const char* op, const char* arg, const Tensor& src, const std::vector<int64_t>& dst_hw,
                               const char* dst_name) {
  check_image_batch(op, arg, src);
  const auto hw = check_hw(op, dst_name, dst_hw);
  return {src.size(0), src.size(1), src.size(2), src.size(3), hw[0], hw[1]};
}

// Forward: n -> m per axis. Backward: the transpose, mapping the output size back to the input size.
inline std::array<Band<double>, 2> resize_bands(const ResizeArgs& a, bool antialias, bool adjoint) {
  if (!adjoint) return {resize_band(a.in_h, a.out_h, antialias), resize_band(a.in_w, a.out_w, antialias)};
  return {transpose(resize_band(a.out_h, a.in_h, antialias)), transpose(resize_band(a.out_w, a.in_w, antialias))};
}

struct DegradeArgs {
  int64_t n, c, in_h, in_w, out_h, out_w;
  DegradePlan plan;
};

// degrade(x, low, size): x is H x W, the result size. degrade_backward(grad, low, input_size):
// grad is the forward's size, the result the forward's input size.
inline DegradeArgs check_degrade(const char* op, const Tensor& src, const std::vector<int64_t>& low,
                                 const std::vector<int64_t>& dst_hw, bool antialias, bool adjoint) {
  check_image_batch(op, adjoint ? "grad" : "x", src);
  const auto lo = check_hw(op, "low", low);
  const auto hw = check_hw(op, adjoint ? "input_size" : "size", dst_hw);
  DegradeArgs a{src.size(0), src.size(1), src.size(2), src.size(3), hw[0], hw[1], {}};
  a.plan = adjoint ? degrade_plan(hw[0], hw[1], lo[0], lo[1], a.in_h, a.in_w, antialias, true)
                   : degrade_plan(a.in_h, a.in_w, lo[0], lo[1], hw[0], hw[1], antialias, false);
  return a;
}

}  // namespace pydcr::resample
