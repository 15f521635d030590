// CPU kernels of the resample family: resize, degrade and their adjoints.
//
// Every op is a short pipeline of separable banded maps applied image by image, in parallel over
// images. Intermediates (for degrade: the low-resolution image) live in per-thread buffers of a
// few kilobytes and never reach memory as tensors. Vertical maps run as row AXPYs, which
// vectorise over the contiguous row; the pipelines put them on the large images.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "resample/resample_ops.h"

namespace pydcr::resample {
namespace {

template <typename T>
struct Stage {
  bool vertical;
  Band<T> band;
};

// rows x line -> band.rows x line: y_i = sum_t w_t x_{start_i + t}, one contiguous row at a time.
template <typename S, typename T>
void apply_vertical(const S* __restrict in, T* __restrict out, int64_t line, const Band<T>& b) {
  for (int64_t i = 0; i < b.rows; ++i) {
    T* __restrict y = out + i * line;
    const BandRow<T> r = b.row(i);
    if (r.len == 0) {
      std::fill(y, y + line, T(0));
      continue;
    }
    const S* __restrict x = in + r.start * line;
    const T w0 = r.weight[0];
    for (int64_t c = 0; c < line; ++c) y[c] = w0 * static_cast<T>(x[c]);
    for (int64_t t = 1; t < r.len; ++t) {
      x = in + (r.start + t) * line;
      const T w = r.weight[t];
      for (int64_t c = 0; c < line; ++c) y[c] += w * static_cast<T>(x[c]);
    }
  }
}

// rows x cols x pixel -> rows x band.rows x pixel.
template <typename S, typename T>
void apply_horizontal(const S* __restrict in, T* __restrict out, int64_t rows, int64_t cols, int64_t pixel,
                      const Band<T>& b) {
  for (int64_t y = 0; y < rows; ++y) {
    const S* x = in + y * cols * pixel;
    T* o = out + y * b.rows * pixel;
    for (int64_t j = 0; j < b.rows; ++j)
      for (int64_t p = 0; p < pixel; ++p)
        o[j * pixel + p] = band_dot<T>(b.row(j), pixel, [&](int64_t off) { return static_cast<T>(x[off + p]); });
  }
}

// Runs `stages` over `images` images of rows x cols pixels, each pixel `pixel` contiguous values.
template <typename In, typename T>
void run_stages(const In* src, T* dst, int64_t images, int64_t rows, int64_t cols, int64_t pixel,
                const std::vector<Stage<T>>& stages) {
  int64_t capacity = 0, r = rows, c = cols;
  for (const Stage<T>& s : stages) {
    (s.vertical ? r : c) = s.band.rows;
    capacity = std::max(capacity, r * c * pixel);
  }
  const int64_t in_size = rows * cols * pixel, out_size = r * c * pixel;
  // Enough images per task that a task does ~64k multiply-adds or more.
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(in_size + out_size, 1));

  torch::stable::parallel_for(0, images, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> buffers[2] = {std::vector<T>(capacity), std::vector<T>(capacity)};
    for (int64_t img = begin; img < end; ++img) {
      const In* first = src + img * in_size;
      const T* prev = nullptr;
      int64_t cur_r = rows, cur_c = cols;
      for (size_t k = 0; k < stages.size(); ++k) {
        const Stage<T>& s = stages[k];
        T* out = k + 1 == stages.size() ? dst + img * out_size : buffers[k % 2].data();
        if (s.vertical) {
          if (k == 0) apply_vertical(first, out, cur_c * pixel, s.band);
          else apply_vertical(prev, out, cur_c * pixel, s.band);
          cur_r = s.band.rows;
        } else {
          if (k == 0) apply_horizontal(first, out, cur_r, cur_c, pixel, s.band);
          else apply_horizontal(prev, out, cur_r, cur_c, pixel, s.band);
          cur_c = s.band.rows;
        }
        prev = out;
      }
    }
  });
}

// Applies the stages to an N x C x H x W batch (NCHW or channels_last) into a new tensor.
Tensor run_on_batch(const char* op, const Tensor& input, const std::vector<Stage<double>>& stages, int64_t out_h,
                    int64_t out_w, bool uint8_ok) {
  if (uint8_ok)
    check_dtype(op, "x", input, {ScalarType::Byte, ScalarType::Float, ScalarType::Double}, "on CPU");
  else
    check_dtype(op, "grad", input, {ScalarType::Float, ScalarType::Double}, "on CPU");
  const bool channels_last = is_channels_last(input);
  const Tensor x = channels_last ? input : torch::stable::contiguous(input);
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  Tensor out = empty_image_batch(x, n, c, out_h, out_w, float_result_type(x));
  if (n * c == 0) return out;
  const int64_t images = channels_last ? n : n * c, pixel = channels_last ? c : 1;

  auto typed = [&](auto tag, auto* src) {
    using T = decltype(tag);
    std::vector<Stage<T>> typed_stages;
    for (const Stage<double>& s : stages) typed_stages.push_back({s.vertical, cast<T>(s.band)});
    run_stages(src, out.mutable_data_ptr<T>(), images, h, w, pixel, typed_stages);
  };
  switch (x.scalar_type()) {
    case ScalarType::Byte: typed(float{}, x.const_data_ptr<uint8_t>()); break;
    case ScalarType::Float: typed(float{}, x.const_data_ptr<float>()); break;
    default: typed(double{}, x.const_data_ptr<double>()); break;
  }
  return out;
}

// Two separable maps: the vertical first when that leaves the smaller intermediate.
std::vector<Stage<double>> two_pass(std::array<Band<double>, 2> hw, int64_t in_h, int64_t in_w) {
  const bool vertical_first = hw[0].rows * in_w <= in_h * hw[1].rows;
  Stage<double> v{true, std::move(hw[0])}, h{false, std::move(hw[1])};
  if (vertical_first) return {v, h};
  return {h, v};
}

Tensor resize_cpu(Tensor x, std::vector<int64_t> size, bool antialias) {
  const ResizeArgs a = check_resize("pydcr.resize", "x", x, size, "size");
  return run_on_batch("pydcr.resize", x, two_pass(resize_bands(a, antialias, false), a.in_h, a.in_w), a.out_h,
                      a.out_w, true);
}

Tensor resize_backward_cpu(Tensor grad, std::vector<int64_t> input_size, bool antialias) {
  const ResizeArgs a = check_resize("pydcr.resize_backward", "grad", grad, input_size, "input_size");
  return run_on_batch("pydcr.resize_backward", grad, two_pass(resize_bands(a, antialias, true), a.in_h, a.in_w),
                      a.out_h, a.out_w, false);
}

std::vector<Stage<double>> degrade_stages(DegradePlan p) {
  return {{true, std::move(p.reduce_h)},
          {false, std::move(p.reduce_w)},
          {false, std::move(p.expand_w)},
          {true, std::move(p.expand_h)}};
}

Tensor degrade_cpu(Tensor x, std::vector<int64_t> low, std::vector<int64_t> size, bool antialias) {
  DegradeArgs a = check_degrade("pydcr.degrade", x, low, size, antialias, false);
  return run_on_batch("pydcr.degrade", x, degrade_stages(std::move(a.plan)), a.out_h, a.out_w, true);
}

Tensor degrade_backward_cpu(Tensor grad, std::vector<int64_t> low, std::vector<int64_t> input_size, bool antialias) {
  DegradeArgs a = check_degrade("pydcr.degrade_backward", grad, low, input_size, antialias, true);
  return run_on_batch("pydcr.degrade_backward", grad, degrade_stages(std::move(a.plan)), a.out_h, a.out_w, false);
}

}  // namespace
}  // namespace pydcr::resample

STABLE_TORCH_LIBRARY_IMPL(pydcr, CPU, m) {
  using namespace pydcr::resample;
  m.impl("resize", TORCH_BOX(&resize_cpu));
  m.impl("resize_backward", TORCH_BOX(&resize_backward_cpu));
  m.impl("degrade", TORCH_BOX(&degrade_cpu));
  m.impl("degrade_backward", TORCH_BOX(&degrade_backward_cpu));
}
