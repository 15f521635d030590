#pragma once
// Center loss and the center update of Wen et al.: the arithmetic shared by the CPU and CUDA kernels.
//
// Everything is written with the deviation d_i = x_i - c_{y_i} of a feature from its class center:
//   loss          1/(2B) sum_i ||d_i||^2
//   d loss / dx_i  d_i / B
//   d loss / dc_j  -1/B sum_{i: y_i = j} d_i
//   update        c_j <- c_j + alpha / (1 + n_j) * sum_{i: y_i = j} d_i
// which is the paper's c_j <- c_j - alpha * sum_{i: y_i = j} (c_j - x_i) / (1 + n_j).
//
// The per-class sums s_j = sum_{i: y_i = j} d_i are segmented reductions over the batch grouped by
// label (each class's rows in batch order), so every sum has one fixed order: results are bitwise
// the same run to run, and the fused update equals center_stats followed by center_apply_.
#include <cstdint>

#include "common/macros.h"

namespace pydcr::center {

// One element of d_i = x_i - c_{y_i}, in the accumulation type.
template <typename Acc, typename T>
PYDCR_HOST_DEVICE Acc deviation(T x, T c) {
  return static_cast<Acc>(x) - static_cast<Acc>(c);
}

// The step of the update for a class seen `count` times in the batch: alpha / (1 + n_j).
template <typename Acc>
PYDCR_HOST_DEVICE Acc update_step(Acc alpha, int64_t count) {
  return alpha / (static_cast<Acc>(1) + static_cast<Acc>(count));
}

// One element of the moved center c_j + step * s_j.
template <typename Acc, typename T>
PYDCR_HOST_DEVICE Acc moved_center(T c, Acc deviation_sum, Acc step) {
  return static_cast<Acc>(c) + step * deviation_sum;
}

// The loss from the sum of squared deviations over a batch of B; an empty batch gives 0.
template <typename Acc>
PYDCR_HOST_DEVICE Acc loss_from_squares(Acc sum_of_squares, int64_t batch) {
  return batch == 0 ? static_cast<Acc>(0) : sum_of_squares / (static_cast<Acc>(2) * static_cast<Acc>(batch));
}

// The factor g / B of both gradients, g the gradient of the loss.
template <typename Acc>
PYDCR_HOST_DEVICE Acc gradient_scale(Acc grad, int64_t batch) {
  return grad / static_cast<Acc>(batch);
}

// One element of d loss / dx_i = scale * d_i.
template <typename Acc>
PYDCR_HOST_DEVICE Acc feature_gradient(Acc deviation, Acc scale) {
  return scale * deviation;
}

// One element of d loss / dc_j from the deviation sum s_j.
template <typename Acc>
PYDCR_HOST_DEVICE Acc center_gradient(Acc deviation_sum, Acc scale) {
  return -scale * deviation_sum;
}

// Sort key grouping a batch by label with rows of a class in batch order: (label, index) packed so
// that integer order is lexicographic order. Labels are checked to lie in [0, 2^31) and batches to
// hold fewer than 2^32 rows before keys are made.
PYDCR_HOST_DEVICE uint64_t bucket_key(int64_t label, int64_t index) {
  return (static_cast<uint64_t>(label) << 32) | static_cast<uint64_t>(index);
}
PYDCR_HOST_DEVICE int64_t key_label(uint64_t key) { return static_cast<int64_t>(key >> 32); }
PYDCR_HOST_DEVICE int64_t key_index(uint64_t key) { return static_cast<int64_t>(key & 0xffffffffu); }

}  // namespace pydcr::center
