// CUDA kernels of the center family: center loss and its backward, and the center update.
//
// The batch is grouped by label: a stable sort of its B labels, rows of a class in batch order
// (one block ranking them in shared memory up to kSmallBatch labels, torch's sort beyond), with
// the labels checked in the same pass. Then one block per sorted position: the block at the first row of a class
// reduces that class's rows column by column, in batch order, and writes the class's result; the
// other blocks exit. Every output element has one writer and one summation order, so results
// are bitwise the same run to run, with no atomics on floats and nothing of size C allocated.
// Arguments are validated on the device; one 16-byte copy to the host per call reports bad labels
// (the error is then worded by the same host check the CPU kernels use).
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <optional>
#include <tuple>

#include "center/center_ops.h"
#include "common/cuda_utils.h"

namespace pydcr::center {
namespace {

using pydcr::cuda::from_acc;
using pydcr::cuda::to_acc;

constexpr const char* kWhere = "on CUDA";
constexpr int kThreads = 128;       // per class block: threads walk the D columns
constexpr int kScanThreads = 1024;  // the one block that numbers the classes
constexpr int64_t kMaxBlocks = 65535;
constexpr uint64_t kNone = ~uint64_t{0};  // "no bad index" in a status word

#define PYDCR_CUDA_FLOAT_TYPES {ScalarType::Half, ScalarType::BFloat16, ScalarType::Float, ScalarType::Double}

// Calls f(T{}, Acc{}) for the element type of t; half precision accumulates in float.
template <typename F>
void dispatch(const Tensor& t, F&& f) {
  switch (t.scalar_type()) {
    case ScalarType::Half: f(__half{}, float{}); break;
    case ScalarType::BFloat16: f(__nv_bfloat16{}, float{}); break;
    case ScalarType::Float: f(float{}, float{}); break;
    default: f(double{}, double{}); break;
  }
}

int64_t grid_for(int64_t work) { return std::max<int64_t>(1, std::min(work, kMaxBlocks)); }

Tensor with_unit_columns(const Tensor& t) {
  return (t.size(1) <= 1 || t.stride(1) == 1) ? t : torch::stable::contiguous(t);
}

Tensor as_int64(const Tensor& t) {
  const Tensor c = torch::stable::contiguous(t);
  return c.scalar_type() == ScalarType::Long ? c : torch::stable::to(c, ScalarType::Long);
}

Tensor to_cpu(const Tensor& t) {
  return torch::stable::to(t, torch::stable::Device(torch::headeronly::DeviceType::CPU));
}

__global__ void iota_kernel(int64_t* out, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = i;
}

// (labels ascending, their rows): a stable radix sort over the bits a class id below num_classes
// has. A label outside [0, num_classes) sorts wrongly, but it is reported before the order is used.
std::tuple<Tensor, Tensor> sort_labels(const Tensor& labels, int64_t num_classes, cudaStream_t stream) {
  const int64_t n = labels.numel();
  Tensor sorted = torch::stable::new_empty(labels, {n});
  Tensor rows = torch::stable::new_empty(labels, {n});
  Tensor order = torch::stable::new_empty(labels, {n});
  constexpr int64_t kThreads = 256;
  iota_kernel<<<pydcr::cuda::blocks_for(n, kThreads), kThreads, 0, stream>>>(order.mutable_data_ptr<int64_t>(), n);
  PYDCR_CUDA_CHECK(cudaGetLastError());
  const int end_bit = std::max(1, static_cast<int>(std::bit_width(static_cast<uint64_t>(num_classes - 1))));
  auto sort = [&](void* temp, size_t& temp_bytes) {
    return cub::DeviceRadixSort::SortPairs(temp, temp_bytes, labels.const_data_ptr<int64_t>(),
                                           sorted.mutable_data_ptr<int64_t>(), order.const_data_ptr<int64_t>(),
                                           rows.mutable_data_ptr<int64_t>(), n, 0, end_bit, stream);
  };
  size_t temp_bytes = 0;
  PYDCR_CUDA_CHECK(sort(nullptr, temp_bytes));
  Tensor temp = torch::stable::new_empty(labels, {static_cast<int64_t>(temp_bytes)}, ScalarType::Byte);
  PYDCR_CUDA_CHECK(sort(temp.mutable_data_ptr(), temp_bytes));
  return {sorted, rows};
}

// A few int64 words on the device, read back by one copy: the per-call status of the kernels.
class Status {
 public:
  Status(const Tensor& like, cudaStream_t stream) : stream_(stream) {
    words_ = torch::stable::new_empty(like, {2}, ScalarType::Long);
    PYDCR_CUDA_CHECK(cudaMemsetAsync(words_.mutable_data_ptr(), 0xff, 2 * sizeof(int64_t), stream));
  }
  unsigned long long* word(int i) { return static_cast<unsigned long long*>(words_.mutable_data_ptr()) + i; }
  std::array<uint64_t, 2> read() {
    std::array<uint64_t, 2> host{};
    PYDCR_CUDA_CHECK(cudaMemcpyAsync(host.data(), words_.const_data_ptr(), sizeof(host), cudaMemcpyDeviceToHost,
                                     stream_));
    PYDCR_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return host;
  }

 private:
  Tensor words_;
  cudaStream_t stream_;
};

// ---- validation ---------------------------------------------------------------------------------

// *first_bad = the smallest i with labels[i] outside [0, C).
__global__ void find_bad_label_kernel(const int64_t* __restrict__ labels, int64_t batch, int64_t num_classes,
                                      unsigned long long* first_bad) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < batch;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t y = labels[i];
    if (y < 0 || y >= num_classes) atomicMin(first_bad, static_cast<unsigned long long>(i));
  }
}

// *first_bad = the smallest q breaking "classes strictly increasing in [0, C), counts >= 0".
__global__ void find_bad_stats_kernel(const int64_t* __restrict__ classes, const int64_t* __restrict__ counts,
                                      int64_t k, int64_t num_classes, unsigned long long* first_bad) {
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < k;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = classes[q];
    const bool bad = j < 0 || j >= num_classes || (q > 0 && j <= classes[q - 1]) || counts[q] < 0;
    if (bad) atomicMin(first_bad, static_cast<unsigned long long>(q));
  }
}

void launch_find_bad_labels(const Tensor& labels, int64_t num_classes, Status& status, cudaStream_t stream) {
  const int64_t batch = labels.numel();
  if (batch == 0) return;
  find_bad_label_kernel<<<grid_for((batch + 255) / 256), 256, 0, stream>>>(labels.const_data_ptr<int64_t>(), batch,
                                                                          num_classes, status.word(0));
  PYDCR_CUDA_CHECK(cudaGetLastError());
}

// Raises the CPU kernels' error for bad labels found on the device.
void raise_if_bad_labels(const char* op, uint64_t first_bad, const Tensor& labels, int64_t num_classes) {
  if (first_bad == kNone) return;
  const Tensor host = to_cpu(labels);
  check_label_values(op, host.const_data_ptr<int64_t>(), host.numel(), num_classes);
}

// ---- the batch grouped by label -----------------------------------------------------------------

// group_of[k] = the index, among the batch's distinct classes, of the class at sorted position k;
// *total = their number. Run by one block of kScanThreads threads, scanning the class heads chunk
// by chunk (B is small). `sorted` may be in shared or global memory.
__device__ void number_groups(const int64_t* sorted, int64_t batch, int64_t* __restrict__ group_of,
                              unsigned long long* total) {
  using Scan = cub::BlockScan<int, kScanThreads>;  // per chunk: at most kScanThreads heads
  __shared__ typename Scan::TempStorage temp;
  __shared__ int64_t carry;
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  for (int64_t base = 0; base < batch; base += kScanThreads) {
    const int64_t k = base + threadIdx.x;
    const int head = (k < batch && (k == 0 || sorted[k] != sorted[k - 1])) ? 1 : 0;
    int inclusive = 0, chunk_total = 0;
    Scan(temp).InclusiveSum(head, inclusive, chunk_total);
    if (k < batch) group_of[k] = carry + inclusive - 1;
    __syncthreads();  // all have read carry and temp before either changes
    if (threadIdx.x == 0) carry += chunk_total;
    __syncthreads();
  }
  if (threadIdx.x == 0) *total = static_cast<unsigned long long>(carry);
}

__global__ void __launch_bounds__(kScanThreads)
    number_groups_kernel(const int64_t* __restrict__ sorted, int64_t batch, int64_t* __restrict__ group_of,
                         unsigned long long* total) {
  number_groups(sorted, batch, group_of, total);
}

// Batches up to this size are grouped by one block, in shared memory, without a sort call.
constexpr int64_t kSmallBatch = 1024;

// One block: checks the labels (*first_bad = the first index outside [0, C), or kNone), sorts
// them by rank (label, then row; O(B^2 / threads) shared-memory reads, a few microseconds at
// B <= kSmallBatch) and numbers the classes.
__global__ void __launch_bounds__(kScanThreads)
    group_small_batch_kernel(const int64_t* __restrict__ labels, int64_t batch, int64_t num_classes,
                             int64_t* __restrict__ sorted, int64_t* __restrict__ rows, int64_t* __restrict__ group_of,
                             unsigned long long* first_bad, unsigned long long* total) {
  __shared__ int64_t in[kSmallBatch];
  __shared__ int64_t out[kSmallBatch];
  __shared__ unsigned long long bad;
  if (threadIdx.x == 0) bad = kNone;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < batch; i += blockDim.x) {
    const int64_t y = labels[i];
    in[i] = y;
    if (y < 0 || y >= num_classes) atomicMin(&bad, static_cast<unsigned long long>(i));
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < batch; i += blockDim.x) {
    const int64_t y = in[i];
    int64_t rank = 0;
    for (int64_t r = 0; r < batch; ++r) rank += (in[r] < y || (in[r] == y && r < i)) ? 1 : 0;
    out[rank] = y;
    sorted[rank] = y;
    rows[rank] = i;
  }
  __syncthreads();
  number_groups(out, batch, group_of, total);
  if (threadIdx.x == 0) *first_bad = bad;
}

// The batch sorted by label (rows of a class in batch order) and its classes numbered.
struct Groups {
  Tensor sorted;    // labels ascending
  Tensor rows;      // the row of each sorted label
  Tensor group_of;  // the class number of each sorted position
  int64_t count;    // distinct classes
};

// Validates labels (raising op's error) and groups the batch, with one read-back to the host.
Groups group_batch(const char* op, const Tensor& labels, int64_t num_classes, cudaStream_t stream) {
  const int64_t batch = labels.numel();
  Groups g{Tensor(), Tensor(), torch::stable::new_empty(labels, {batch}), 0};
  Status status(labels, stream);
  if (batch <= kSmallBatch) {
    g.sorted = torch::stable::new_empty(labels, {batch});
    g.rows = torch::stable::new_empty(labels, {batch});
    group_small_batch_kernel<<<1, kScanThreads, 0, stream>>>(
        labels.const_data_ptr<int64_t>(), batch, num_classes, g.sorted.mutable_data_ptr<int64_t>(),
        g.rows.mutable_data_ptr<int64_t>(), g.group_of.mutable_data_ptr<int64_t>(), status.word(0), status.word(1));
    PYDCR_CUDA_CHECK(cudaGetLastError());
  } else {
    launch_find_bad_labels(labels, num_classes, status, stream);
    std::tie(g.sorted, g.rows) = sort_labels(labels, num_classes, stream);
    number_groups_kernel<<<1, kScanThreads, 0, stream>>>(g.sorted.const_data_ptr<int64_t>(), batch,
                                                         g.group_of.mutable_data_ptr<int64_t>(), status.word(1));
    PYDCR_CUDA_CHECK(cudaGetLastError());
  }
  const std::array<uint64_t, 2> words = status.read();
  raise_if_bad_labels(op, words[0], labels, num_classes);
  g.count = static_cast<int64_t>(words[1]);
  return g;
}

template <typename T>
struct BatchView {
  const int64_t* sorted;  // labels ascending
  const int64_t* rows;    // the row of each sorted label
  int64_t batch, dim;
  const T* x;
  int64_t x_stride;
  T* centers;
  int64_t c_stride;
};

template <typename T>
BatchView<T> view_of(const Groups& s, const Tensor& features, const Tensor& centers) {
  return {s.sorted.const_data_ptr<int64_t>(),
          s.rows.const_data_ptr<int64_t>(),
          features.size(0),
          features.size(1),
          static_cast<const T*>(features.const_data_ptr()),
          features.stride(0),
          static_cast<T*>(centers.mutable_data_ptr()),
          centers.stride(0)};
}

// For every class j of the batch, seen n times and first at sorted position k: on_class(k, j, n)
// once, and write(k, j, n, d, c, sum) for every column d, with c = c_j[d] and sum the class's
// deviation sum over its rows in batch order. Run by blocks over sorted positions; a block not at
// a class's first row moves on at once.
template <typename T, typename Acc, typename OnClass, typename Write>
__device__ void for_each_class_column(const BatchView<T>& b, OnClass on_class, Write write) {
  for (int64_t k = blockIdx.x; k < b.batch; k += gridDim.x) {
    const int64_t j = b.sorted[k];
    if (k > 0 && b.sorted[k - 1] == j) continue;
    int64_t end = k + 1;
    while (end < b.batch && b.sorted[end] == j) ++end;
    if (threadIdx.x == 0) on_class(k, j, end - k);
    for (int64_t d = threadIdx.x; d < b.dim; d += blockDim.x) {
      const Acc c = to_acc<Acc>(b.centers[j * b.c_stride + d]);
      Acc sum = deviation<Acc>(to_acc<Acc>(b.x[b.rows[k] * b.x_stride + d]), c);
      for (int64_t r = k + 1; r < end; ++r) sum += deviation<Acc>(to_acc<Acc>(b.x[b.rows[r] * b.x_stride + d]), c);
      write(k, j, end - k, d, c, sum);
    }
  }
}

struct Nothing {
  __device__ void operator()(int64_t, int64_t, int64_t) const {}
};

template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads) update_kernel(BatchView<T> b, Acc alpha) {
  for_each_class_column<T, Acc>(b, Nothing{}, [&](int64_t, int64_t j, int64_t n, int64_t d, Acc c, Acc sum) {
    b.centers[j * b.c_stride + d] = from_acc<T>(moved_center<Acc>(c, sum, update_step<Acc>(alpha, n)));
  });
}

template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads)
    stats_kernel(BatchView<T> b, const int64_t* __restrict__ group_of, int64_t* __restrict__ classes,
                 Acc* __restrict__ sums, int64_t* __restrict__ counts) {
  auto on_class = [&](int64_t k, int64_t j, int64_t n) {
    classes[group_of[k]] = j;
    counts[group_of[k]] = n;
  };
  for_each_class_column<T, Acc>(b, on_class, [&](int64_t k, int64_t, int64_t, int64_t d, Acc, Acc sum) {
    sums[group_of[k] * b.dim + d] = sum;
  });
}

template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads)
    center_gradient_kernel(BatchView<T> b, const T* __restrict__ grad, T* __restrict__ grad_centers) {
  const Acc scale = gradient_scale<Acc>(to_acc<Acc>(*grad), b.batch);
  for_each_class_column<T, Acc>(b, Nothing{}, [&](int64_t, int64_t j, int64_t, int64_t d, Acc, Acc sum) {
    grad_centers[j * b.dim + d] = from_acc<T>(center_gradient<Acc>(sum, scale));
  });
}

// One block per listed class: c_j moved by its sums row.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads)
    apply_kernel(T* __restrict__ centers, int64_t c_stride, int64_t dim, const int64_t* __restrict__ classes,
                 const Acc* __restrict__ sums, int64_t sum_stride, const int64_t* __restrict__ counts, int64_t k,
                 Acc alpha) {
  for (int64_t q = blockIdx.x; q < k; q += gridDim.x) {
    const Acc step = update_step<Acc>(alpha, counts[q]);
    T* c = centers + classes[q] * c_stride;
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x)
      c[d] = from_acc<T>(moved_center<Acc>(to_acc<Acc>(c[d]), sums[q * sum_stride + d], step));
  }
}

// ---- center_loss and its backward ---------------------------------------------------------------

// squares[i] = ||x_i - c_{y_i}||^2, one block per row.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads)
    squares_kernel(const T* __restrict__ x, int64_t x_stride, const int64_t* __restrict__ labels,
                   const T* __restrict__ centers, int64_t c_stride, int64_t batch, int64_t dim,
                   Acc* __restrict__ squares) {
  using Reduce = cub::BlockReduce<Acc, kThreads>;
  __shared__ typename Reduce::TempStorage temp;
  for (int64_t i = blockIdx.x; i < batch; i += gridDim.x) {
    const T* xi = x + i * x_stride;
    const T* ci = centers + labels[i] * c_stride;
    Acc part = 0;
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) {
      const Acc e = deviation<Acc>(to_acc<Acc>(xi[d]), to_acc<Acc>(ci[d]));
      part += e * e;
    }
    const Acc total = Reduce(temp).Sum(part);
    if (threadIdx.x == 0) squares[i] = total;
    __syncthreads();  // temp is reused by the next row
  }
}

// loss = loss_from_squares(sum_i squares[i]): one block, a fixed summation tree.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kScanThreads)
    loss_kernel(const Acc* __restrict__ squares, int64_t batch, T* __restrict__ loss) {
  using Reduce = cub::BlockReduce<Acc, kScanThreads>;
  __shared__ typename Reduce::TempStorage temp;
  Acc part = 0;
  for (int64_t i = threadIdx.x; i < batch; i += blockDim.x) part += squares[i];
  const Acc total = Reduce(temp).Sum(part);
  if (threadIdx.x == 0) *loss = from_acc<T>(loss_from_squares<Acc>(total, batch));
}

template <typename T, typename Acc>
__global__ void feature_gradient_kernel(const T* __restrict__ x, int64_t x_stride, const int64_t* __restrict__ labels,
                                        const T* __restrict__ centers, int64_t c_stride, int64_t batch, int64_t dim,
                                        const T* __restrict__ grad, T* __restrict__ out) {
  const Acc scale = gradient_scale<Acc>(to_acc<Acc>(*grad), batch);
  const int64_t total = batch * dim;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / dim, d = e % dim;
    const Acc dev = deviation<Acc>(to_acc<Acc>(x[i * x_stride + d]), to_acc<Acc>(centers[labels[i] * c_stride + d]));
    out[e] = from_acc<T>(feature_gradient<Acc>(dev, scale));
  }
}

// What every op does first: shapes, a device guard, int64 labels checked against C.
struct Prepared {
  Shape shape;
  Tensor features, labels;
  cudaStream_t stream;
};

Prepared prepare(const char* op, const Tensor& features, const Tensor& labels, const Tensor& centers) {
  const Shape s = check_batch(op, features, labels, centers, PYDCR_CUDA_FLOAT_TYPES, kWhere);
  cudaStream_t stream = pydcr::cuda::current_stream(features.get_device_index());
  return {s, with_unit_columns(features), as_int64(labels), stream};
}

// Validates labels with one round trip to the host.
void validate_labels(const char* op, const Prepared& p) {
  if (p.shape.batch == 0) return;
  Status status(p.labels, p.stream);
  launch_find_bad_labels(p.labels, p.shape.classes, status, p.stream);
  raise_if_bad_labels(op, status.read()[0], p.labels, p.shape.classes);
}

Tensor center_loss_cuda(Tensor features_in, Tensor labels, Tensor centers_in) {
  constexpr const char* op = "pydcr.center_loss";
  torch::stable::accelerator::DeviceGuard guard(features_in.get_device_index());
  const Prepared p = prepare(op, features_in, labels, centers_in);
  const Tensor centers = with_unit_columns(centers_in);
  Tensor loss = torch::stable::new_empty(p.features, std::vector<int64_t>{});
  if (p.shape.batch == 0) {
    torch::stable::zero_(loss);
    return loss;
  }
  validate_labels(op, p);
  dispatch(p.features, [&](auto t_tag, auto acc_tag) {
    using T = decltype(t_tag);
    using Acc = decltype(acc_tag);
    const Shape& s = p.shape;
    Tensor squares = torch::stable::new_empty(p.features, {s.batch}, accumulation_type(p.features.scalar_type()));
    squares_kernel<T, Acc><<<grid_for(s.batch), kThreads, 0, p.stream>>>(
        static_cast<const T*>(p.features.const_data_ptr()), p.features.stride(0), p.labels.const_data_ptr<int64_t>(),
        static_cast<const T*>(centers.const_data_ptr()), centers.stride(0), s.batch, s.dim,
        static_cast<Acc*>(squares.mutable_data_ptr()));
    PYDCR_CUDA_CHECK(cudaGetLastError());
    loss_kernel<T, Acc><<<1, kScanThreads, 0, p.stream>>>(static_cast<const Acc*>(squares.const_data_ptr()), s.batch,
                                                          static_cast<T*>(loss.mutable_data_ptr()));
    PYDCR_CUDA_CHECK(cudaGetLastError());
  });
  return loss;
}

std::tuple<Tensor, Tensor> center_loss_backward_cuda(Tensor grad_in, Tensor features_in, Tensor labels,
                                                     Tensor centers_in, bool centers_grad) {
  constexpr const char* op = "pydcr.center_loss_backward";
  torch::stable::accelerator::DeviceGuard guard(features_in.get_device_index());
  const Prepared p = prepare(op, features_in, labels, centers_in);
  check_loss_grad(op, grad_in, features_in);
  const Tensor centers = with_unit_columns(centers_in);
  const Tensor grad = torch::stable::contiguous(grad_in);
  const Shape& s = p.shape;
  Tensor grad_features = torch::stable::new_empty(p.features, {s.batch, s.dim});
  Tensor grad_centers = centers_grad ? torch::stable::new_zeros(centers, {s.classes, s.dim})
                                     : torch::stable::new_empty(centers, std::vector<int64_t>{0});
  if (s.batch == 0 || s.dim == 0) {  // nothing to compute, but bad labels are an error, as on the CPU
    validate_labels(op, p);
    return {grad_features, grad_centers};
  }
  // Labels are checked before any kernel indexes centers with them.
  std::optional<Groups> groups;
  if (centers_grad) groups = group_batch(op, p.labels, s.classes, p.stream);
  else validate_labels(op, p);
  dispatch(p.features, [&](auto t_tag, auto acc_tag) {
    using T = decltype(t_tag);
    using Acc = decltype(acc_tag);
    const T* g = static_cast<const T*>(grad.const_data_ptr());
    feature_gradient_kernel<T, Acc><<<grid_for((s.batch * s.dim + 255) / 256), 256, 0, p.stream>>>(
        static_cast<const T*>(p.features.const_data_ptr()), p.features.stride(0), p.labels.const_data_ptr<int64_t>(),
        static_cast<const T*>(centers.const_data_ptr()), centers.stride(0), s.batch, s.dim, g,
        static_cast<T*>(grad_features.mutable_data_ptr()));
    PYDCR_CUDA_CHECK(cudaGetLastError());
    if (!centers_grad) return;
    center_gradient_kernel<T, Acc><<<grid_for(s.batch), kThreads, 0, p.stream>>>(
        view_of<T>(*groups, p.features, centers), g, static_cast<T*>(grad_centers.mutable_data_ptr()));
    PYDCR_CUDA_CHECK(cudaGetLastError());
  });
  return {grad_features, grad_centers};
}

// ---- the center update: stats, apply, and both fused --------------------------------------------

void write_back(Tensor& centers, const Tensor& work) {
  if (work.data_ptr() != centers.data_ptr()) torch::stable::copy_(centers, work);
}

std::tuple<Tensor, Tensor, Tensor> center_stats_cuda(Tensor features_in, Tensor labels, Tensor centers_in) {
  constexpr const char* op = "pydcr.center_stats";
  torch::stable::accelerator::DeviceGuard guard(features_in.get_device_index());
  const Prepared p = prepare(op, features_in, labels, centers_in);
  const Tensor centers = with_unit_columns(centers_in);
  const Shape& s = p.shape;
  const ScalarType acc_type = accumulation_type(p.features.scalar_type());
  if (s.batch == 0) {
    return {torch::stable::new_empty(p.labels, {0}), torch::stable::new_empty(p.features, {0, s.dim}, acc_type),
            torch::stable::new_empty(p.labels, {0})};
  }
  const Groups g = group_batch(op, p.labels, s.classes, p.stream);
  const int64_t k = g.count;
  Tensor classes = torch::stable::new_empty(p.labels, {k});
  Tensor sums = torch::stable::new_empty(p.features, {k, s.dim}, acc_type);
  Tensor counts = torch::stable::new_empty(p.labels, {k});
  dispatch(p.features, [&](auto t_tag, auto acc_tag) {
    using T = decltype(t_tag);
    using Acc = decltype(acc_tag);
    stats_kernel<T, Acc><<<grid_for(s.batch), kThreads, 0, p.stream>>>(
        view_of<T>(g, p.features, centers), g.group_of.const_data_ptr<int64_t>(), classes.mutable_data_ptr<int64_t>(),
        static_cast<Acc*>(sums.mutable_data_ptr()), counts.mutable_data_ptr<int64_t>());
    PYDCR_CUDA_CHECK(cudaGetLastError());
  });
  return {classes, sums, counts};
}

void center_update_cuda(Tensor centers, Tensor features_in, Tensor labels, double alpha) {
  constexpr const char* op = "pydcr.center_update_";
  torch::stable::accelerator::DeviceGuard guard(features_in.get_device_index());
  const Prepared p = prepare(op, features_in, labels, centers);
  const Shape& s = p.shape;
  if (s.batch == 0 || s.dim == 0) return validate_labels(op, p);  // nothing moves; bad labels are still an error
  const Groups g = group_batch(op, p.labels, s.classes, p.stream);
  Tensor work = with_unit_columns(centers);
  dispatch(p.features, [&](auto t_tag, auto acc_tag) {
    using T = decltype(t_tag);
    using Acc = decltype(acc_tag);
    update_kernel<T, Acc><<<grid_for(s.batch), kThreads, 0, p.stream>>>(view_of<T>(g, p.features, work),
                                                                        static_cast<Acc>(alpha));
    PYDCR_CUDA_CHECK(cudaGetLastError());
  });
  write_back(centers, work);
}

void center_apply_cuda(Tensor centers, Tensor classes_in, Tensor sums_in, Tensor counts_in, double alpha) {
  constexpr const char* op = "pydcr.center_apply_";
  torch::stable::accelerator::DeviceGuard guard(centers.get_device_index());
  const int64_t k = check_stats(op, centers, classes_in, sums_in, counts_in, PYDCR_CUDA_FLOAT_TYPES, kWhere);
  const int64_t dim = centers.size(1);
  if (k == 0) return;
  cudaStream_t stream = pydcr::cuda::current_stream(centers.get_device_index());
  const Tensor classes = as_int64(classes_in), counts = torch::stable::contiguous(counts_in);
  Status status(classes, stream);
  find_bad_stats_kernel<<<grid_for((k + 255) / 256), 256, 0, stream>>>(
      classes.const_data_ptr<int64_t>(), counts.const_data_ptr<int64_t>(), k, centers.size(0), status.word(0));
  PYDCR_CUDA_CHECK(cudaGetLastError());
  if (status.read()[0] != kNone) {
    const Tensor hc = to_cpu(classes), hn = to_cpu(counts);
    check_stats_values(op, hc.const_data_ptr<int64_t>(), hn.const_data_ptr<int64_t>(), k, centers.size(0));
  }
  if (dim == 0) return;
  const Tensor sums = with_unit_columns(sums_in);
  Tensor work = with_unit_columns(centers);
  dispatch(work, [&](auto t_tag, auto acc_tag) {
    using T = decltype(t_tag);
    using Acc = decltype(acc_tag);
    apply_kernel<T, Acc><<<grid_for(k), kThreads, 0, stream>>>(
        static_cast<T*>(work.mutable_data_ptr()), work.stride(0), dim, classes.const_data_ptr<int64_t>(),
        static_cast<const Acc*>(sums.const_data_ptr()), sums.stride(0), counts.const_data_ptr<int64_t>(), k,
        static_cast<Acc>(alpha));
    PYDCR_CUDA_CHECK(cudaGetLastError());
  });
  write_back(centers, work);
}

}  // namespace
}  // namespace pydcr::center

STABLE_TORCH_LIBRARY_IMPL(pydcr, CUDA, m) {
  using namespace pydcr::center;
  m.impl("center_loss", TORCH_BOX(&center_loss_cuda));
  m.impl("center_loss_backward", TORCH_BOX(&center_loss_backward_cuda));
  m.impl("center_stats", TORCH_BOX(&center_stats_cuda));
  m.impl("center_apply_", TORCH_BOX(&center_apply_cuda));
  m.impl("center_update_", TORCH_BOX(&center_update_cuda));
}
