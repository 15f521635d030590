// CPU kernels of the center family: center loss and its backward, and the center update.
//
// The batch is grouped by label once (a sort of B packed (label, row) keys; B is small), then each
// class's deviation sum is a segmented reduction over its rows in batch order. Work is split into
// (class, column block) tasks, so a batch of one class still spreads over threads and no task
// shares output with another: no atomics, no thread-count dependent order, bitwise deterministic.
// Nothing is allocated in proportion to the number of classes C; the cost is O(B * D).
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "center/center_ops.h"

namespace pydcr::center {
namespace {

constexpr const char* kWhere = "on CPU";

// Hot loops, written once as templates and cloned per instruction set below.

// acc[c] = sum_r (x[rows[r]][c] - center[c]), rows in the given order (n >= 1).
template <typename T>
__attribute__((always_inline)) inline void sum_deviations_impl(T* __restrict acc, const T* __restrict x,
                                                               int64_t x_stride, const int64_t* __restrict rows,
                                                               int64_t n, const T* __restrict center, int64_t width) {
  const T* __restrict first = x + rows[0] * x_stride;
#pragma omp simd
  for (int64_t c = 0; c < width; ++c) acc[c] = deviation<T>(first[c], center[c]);
  for (int64_t r = 1; r < n; ++r) {
    const T* __restrict xr = x + rows[r] * x_stride;
#pragma omp simd
    for (int64_t c = 0; c < width; ++c) acc[c] += deviation<T>(xr[c], center[c]);
  }
}

template <typename T>
__attribute__((always_inline)) inline void move_center_impl(T* __restrict center, const T* __restrict sum, T step,
                                                            int64_t width) {
#pragma omp simd
  for (int64_t c = 0; c < width; ++c) center[c] = moved_center<T>(center[c], sum[c], step);
}

template <typename T>
__attribute__((always_inline)) inline void center_gradient_impl(T* __restrict grad, const T* __restrict sum, T scale,
                                                                int64_t width) {
#pragma omp simd
  for (int64_t c = 0; c < width; ++c) grad[c] = center_gradient<T>(sum[c], scale);
}

template <typename T>
__attribute__((always_inline)) inline T squared_deviation_impl(const T* __restrict x, const T* __restrict center,
                                                               int64_t width) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < width; ++c) {
    const T d = deviation<T>(x[c], center[c]);
    sum += d * d;
  }
  return sum;
}

template <typename T>
__attribute__((always_inline)) inline void feature_gradient_impl(T* __restrict grad, const T* __restrict x,
                                                                 const T* __restrict center, T scale, int64_t width) {
#pragma omp simd
  for (int64_t c = 0; c < width; ++c) grad[c] = feature_gradient<T>(deviation<T>(x[c], center[c]), scale);
}

#define PYDCR_CENTER_LOOPS(T)                                                                               \
  PYDCR_CPU_CLONES void sum_deviations(T* acc, const T* x, int64_t x_stride, const int64_t* rows, int64_t n, \
                                       const T* center, int64_t width) {                                     \
    sum_deviations_impl(acc, x, x_stride, rows, n, center, width);                                           \
  }                                                                                                          \
  PYDCR_CPU_CLONES void move_center(T* center, const T* sum, T step, int64_t width) {                       \
    move_center_impl(center, sum, step, width);                                                              \
  }                                                                                                          \
  PYDCR_CPU_CLONES void write_center_gradient(T* grad, const T* sum, T scale, int64_t width) {              \
    center_gradient_impl(grad, sum, scale, width);                                                           \
  }                                                                                                          \
  PYDCR_CPU_CLONES T squared_deviation(const T* x, const T* center, int64_t width) {                        \
    return squared_deviation_impl(x, center, width);                                                         \
  }                                                                                                          \
  PYDCR_CPU_CLONES void write_feature_gradient(T* grad, const T* x, const T* center, T scale, int64_t width) { \
    feature_gradient_impl(grad, x, center, scale, width);                                                    \
  }

PYDCR_CENTER_LOOPS(float)
PYDCR_CENTER_LOOPS(double)
#undef PYDCR_CENTER_LOOPS

// A 1-D int64 or int32 tensor as an int64 vector.
std::vector<int64_t> to_int64_vector(const Tensor& t) {
  const Tensor c = in_layout(t, torch::headeronly::MemoryFormat::Contiguous);
  const int64_t n = c.numel();
  if (c.scalar_type() == ScalarType::Int) {
    const int32_t* v = c.const_data_ptr<int32_t>();
    return std::vector<int64_t>(v, v + n);
  }
  const int64_t* v = c.const_data_ptr<int64_t>();
  return std::vector<int64_t>(v, v + n);
}

std::vector<int64_t> read_labels(const char* op, const Tensor& labels, int64_t num_classes) {
  std::vector<int64_t> y = to_int64_vector(labels);
  check_label_values(op, y.data(), static_cast<int64_t>(y.size()), num_classes);
  return y;
}

// The batch grouped by label: class classes[k] owns rows[start[k]] .. rows[start[k + 1] - 1], in
// batch order, classes ascending.
struct Groups {
  std::vector<int64_t> rows, start, classes;
  int64_t size() const { return static_cast<int64_t>(classes.size()); }
  int64_t count(int64_t k) const { return start[k + 1] - start[k]; }
};

Groups group_by_label(const std::vector<int64_t>& labels) {
  const int64_t batch = static_cast<int64_t>(labels.size());
  std::vector<uint64_t> keys(batch);
  for (int64_t i = 0; i < batch; ++i) keys[i] = bucket_key(labels[i], i);
  std::sort(keys.begin(), keys.end());  // keys are distinct: the order is unique
  Groups g;
  g.rows.resize(batch);
  for (int64_t k = 0; k < batch; ++k) {
    const int64_t label = key_label(keys[k]);
    g.rows[k] = key_index(keys[k]);
    if (k == 0 || label != g.classes.back()) {
      g.classes.push_back(label);
      g.start.push_back(k);
    }
  }
  g.start.push_back(batch);
  return g;
}

// A 2-D tensor whose rows are contiguous (unit column stride), copying only odd layouts.
Tensor with_unit_columns(const Tensor& t) {
  return (t.size(1) <= 1 || t.stride(1) == 1) ? t : torch::stable::contiguous(t);
}

// Columns per task at most: a task's deviation sums live in a stack buffer of this size.
constexpr int64_t kMaxColumns = 1024;
// Elements read per parallel chunk at least (1 MiB of float32, ~0.1 ms on one core). Waking a
// second thread costs microseconds on an idle machine but can cost a scheduler time slice
// (milliseconds) on a busy one, so only work that is long next to that is split.
constexpr int64_t kMinChunkWork = int64_t{1} << 18;

// Runs task(k, c0, width) for every class row k < classes and column block [c0, c0 + width) of
// dim columns, in parallel; `reads` is the number of elements the tasks read in all. Each task
// owns its columns of its class row, so tasks never write the same memory, and a column's
// arithmetic is the same however the columns are split.
template <typename F>
void for_each_block(int64_t classes, int64_t dim, int64_t reads, F&& task) {
  if (classes == 0 || dim == 0) return;
  const int64_t threads = torch::stable::get_num_threads();
  int64_t blocks = (dim + kMaxColumns - 1) / kMaxColumns;
  // Few classes (down to one): narrower blocks, so that every thread has a share.
  while (classes * blocks < 2 * threads && dim / (2 * blocks) >= 64) blocks *= 2;
  const int64_t width = ((dim + blocks - 1) / blocks + 15) / 16 * 16;
  blocks = (dim + width - 1) / width;
  const int64_t tasks = classes * blocks;
  const int64_t grain = std::max<int64_t>(1, kMinChunkWork * tasks / std::max<int64_t>(reads, 1));
  torch::stable::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t k = t / blocks, c0 = (t % blocks) * width;
      task(k, c0, std::min(width, dim - c0));
    }
  });
}

// The batch's features and centers, as typed row pointers.
template <typename T>
struct Rows {
  const T* x;
  int64_t x_stride;
  T* c;
  int64_t c_stride;
};

template <typename T>
Rows<T> rows_of(const Tensor& features, const Tensor& centers) {
  return {features.const_data_ptr<T>(), features.stride(0), static_cast<T*>(centers.mutable_data_ptr()),
          centers.stride(0)};
}

template <typename F>
void dispatch_float(const Tensor& t, F&& f) {
  if (t.scalar_type() == ScalarType::Float) f(float{});
  else f(double{});
}

// ---- center_loss and its backward -------------------------------------------------------------

Tensor center_loss_cpu(Tensor features_in, Tensor labels, Tensor centers_in) {
  constexpr const char* op = "pydcr.center_loss";
  const Shape s = check_batch(op, features_in, labels, centers_in, {ScalarType::Float, ScalarType::Double}, kWhere);
  const std::vector<int64_t> y = read_labels(op, labels, s.classes);
  const Tensor features = with_unit_columns(features_in), centers = with_unit_columns(centers_in);
  Tensor loss = torch::stable::new_empty(features, std::vector<int64_t>{});
  dispatch_float(features, [&](auto tag) {
    using T = decltype(tag);
    const Rows<T> r = rows_of<T>(features, centers);
    std::vector<T> squares(s.batch);
    const int64_t grain = std::max<int64_t>(1, kMinChunkWork / std::max<int64_t>(s.dim, 1));
    torch::stable::parallel_for(0, s.batch, grain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        squares[i] = squared_deviation(r.x + i * r.x_stride, r.c + y[i] * r.c_stride, s.dim);
    });
    T total = 0;  // in batch order, whatever the threads
    for (const T v : squares) total += v;
    *loss.mutable_data_ptr<T>() = loss_from_squares<T>(total, s.batch);
  });
  return loss;
}

std::tuple<Tensor, Tensor> center_loss_backward_cpu(Tensor grad, Tensor features_in, Tensor labels, Tensor centers_in,
                                                    bool centers_grad) {
  constexpr const char* op = "pydcr.center_loss_backward";
  const Shape s = check_batch(op, features_in, labels, centers_in, {ScalarType::Float, ScalarType::Double}, kWhere);
  check_loss_grad(op, grad, features_in);
  const std::vector<int64_t> y = read_labels(op, labels, s.classes);
  const Tensor features = with_unit_columns(features_in), centers = with_unit_columns(centers_in);
  Tensor grad_features = torch::stable::new_empty(features, {s.batch, s.dim});
  Tensor grad_centers = centers_grad ? torch::stable::new_zeros(centers, {s.classes, s.dim})
                                     : torch::stable::new_empty(centers, std::vector<int64_t>{0});
  dispatch_float(features, [&](auto tag) {
    using T = decltype(tag);
    const Rows<T> r = rows_of<T>(features, centers);
    const T scale = gradient_scale<T>(*torch::stable::contiguous(grad).const_data_ptr<T>(), s.batch);
    T* gx = grad_features.mutable_data_ptr<T>();
    const int64_t grain = std::max<int64_t>(1, kMinChunkWork / std::max<int64_t>(s.dim, 1));
    torch::stable::parallel_for(0, s.batch, grain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        write_feature_gradient(gx + i * s.dim, r.x + i * r.x_stride, r.c + y[i] * r.c_stride, scale, s.dim);
    });
    if (!centers_grad) return;
    const Groups g = group_by_label(y);
    T* gc = grad_centers.mutable_data_ptr<T>();
    for_each_block(g.size(), s.dim, s.batch * s.dim, [&](int64_t k, int64_t c0, int64_t width) {
      T sum[kMaxColumns];
      const int64_t j = g.classes[k];
      sum_deviations(sum, r.x + c0, r.x_stride, g.rows.data() + g.start[k], g.count(k), r.c + j * r.c_stride + c0,
                     width);
      write_center_gradient(gc + j * s.dim + c0, sum, scale, width);
    });
  });
  return {grad_features, grad_centers};
}

// ---- the center update: stats, apply, and both fused ------------------------------------------

std::tuple<Tensor, Tensor, Tensor> center_stats_cpu(Tensor features_in, Tensor labels, Tensor centers_in) {
  constexpr const char* op = "pydcr.center_stats";
  const Shape s = check_batch(op, features_in, labels, centers_in, {ScalarType::Float, ScalarType::Double}, kWhere);
  const Groups g = group_by_label(read_labels(op, labels, s.classes));
  const Tensor features = with_unit_columns(features_in), centers = with_unit_columns(centers_in);
  const int64_t k = g.size();
  Tensor classes = torch::stable::new_empty(labels, {k}, ScalarType::Long);
  Tensor sums = torch::stable::new_empty(features, {k, s.dim});
  Tensor counts = torch::stable::new_empty(labels, {k}, ScalarType::Long);
  int64_t* cls = classes.mutable_data_ptr<int64_t>();
  int64_t* cnt = counts.mutable_data_ptr<int64_t>();
  for (int64_t q = 0; q < k; ++q) cls[q] = g.classes[q], cnt[q] = g.count(q);
  dispatch_float(features, [&](auto tag) {
    using T = decltype(tag);
    const Rows<T> r = rows_of<T>(features, centers);
    T* out = sums.mutable_data_ptr<T>();
    for_each_block(g.size(), s.dim, s.batch * s.dim, [&](int64_t q, int64_t c0, int64_t width) {
      sum_deviations(out + q * s.dim + c0, r.x + c0, r.x_stride, g.rows.data() + g.start[q], g.count(q),
                     r.c + g.classes[q] * r.c_stride + c0, width);
    });
  });
  return {classes, sums, counts};
}

// Writes `work` back into `centers` when the kernel ran on a contiguous copy.
void write_back(Tensor& centers, const Tensor& work) {
  if (work.data_ptr() != centers.data_ptr()) torch::stable::copy_(centers, work);
}

void center_update_cpu(Tensor centers, Tensor features_in, Tensor labels, double alpha) {
  constexpr const char* op = "pydcr.center_update_";
  const Shape s = check_batch(op, features_in, labels, centers, {ScalarType::Float, ScalarType::Double}, kWhere);
  const Groups g = group_by_label(read_labels(op, labels, s.classes));
  const Tensor features = with_unit_columns(features_in);
  Tensor work = with_unit_columns(centers);
  dispatch_float(features, [&](auto tag) {
    using T = decltype(tag);
    const Rows<T> r = rows_of<T>(features, work);
    for_each_block(g.size(), s.dim, s.batch * s.dim, [&](int64_t k, int64_t c0, int64_t width) {
      T sum[kMaxColumns];
      T* center = r.c + g.classes[k] * r.c_stride + c0;
      sum_deviations(sum, r.x + c0, r.x_stride, g.rows.data() + g.start[k], g.count(k), center, width);
      move_center(center, sum, update_step<T>(static_cast<T>(alpha), g.count(k)), width);
    });
  });
  write_back(centers, work);
}

// Groups from center_stats' output, checked: classes strictly increasing in [0, C), counts >= 0.
Groups groups_from_stats(const char* op, const Tensor& classes, const Tensor& counts, int64_t num_classes) {
  Groups g;
  g.classes = to_int64_vector(classes);
  const std::vector<int64_t> n = to_int64_vector(counts);
  const int64_t k = g.size();
  check_stats_values(op, g.classes.data(), n.data(), k, num_classes);
  g.start.resize(k + 1, 0);
  for (int64_t q = 0; q < k; ++q) g.start[q + 1] = g.start[q] + n[q];
  return g;
}

void center_apply_cpu(Tensor centers, Tensor classes, Tensor sums_in, Tensor counts, double alpha) {
  constexpr const char* op = "pydcr.center_apply_";
  const int64_t k = check_stats(op, centers, classes, sums_in, counts, {ScalarType::Float, ScalarType::Double},
                                kWhere);
  const int64_t dim = centers.size(1);
  const Groups g = groups_from_stats(op, classes, counts, centers.size(0));
  const Tensor sums = with_unit_columns(sums_in);
  Tensor work = with_unit_columns(centers);
  dispatch_float(work, [&](auto tag) {
    using T = decltype(tag);
    const T* sum = sums.const_data_ptr<T>();
    const int64_t sum_stride = sums.stride(0);
    T* c = static_cast<T*>(work.mutable_data_ptr());
    const int64_t c_stride = work.stride(0);
    for_each_block(k, dim, 2 * k * dim, [&](int64_t q, int64_t c0, int64_t width) {
      move_center(c + g.classes[q] * c_stride + c0, sum + q * sum_stride + c0,
                  update_step<T>(static_cast<T>(alpha), g.count(q)), width);
    });
  });
  write_back(centers, work);
}

}  // namespace
}  // namespace pydcr::center

STABLE_TORCH_LIBRARY_IMPL(pydcr, CPU, m) {
  using namespace pydcr::center;
  m.impl("center_loss", TORCH_BOX(&center_loss_cpu));
  m.impl("center_loss_backward", TORCH_BOX(&center_loss_backward_cpu));
  m.impl("center_stats", TORCH_BOX(&center_stats_cpu));
  m.impl("center_apply_", TORCH_BOX(&center_apply_cpu));
  m.impl("center_update_", TORCH_BOX(&center_update_cpu));
}
