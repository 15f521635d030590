#pragma once
// Host-side plumbing shared by the CPU and CUDA kernels of the center family: argument checks
// with errors that name the op, the argument and what was expected.
#include <cstdint>
#include <string>

#include "center/center.h"
#include "common/tensor_checks.h"

namespace pydcr::center {

inline std::string shape_of(const Tensor& t) {
  std::string s = "[";
  for (int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + std::to_string(t.size(d));
  return s + "]";
}

inline std::string device_name(const Tensor& t) {
  if (t.is_cpu()) return "cpu";
  if (t.is_cuda()) return "cuda:" + std::to_string(t.get_device_index());
  return "a device other than cpu and cuda";
}

inline void check_same_device(const char* op, const char* arg, const Tensor& t, const char* ref_arg,
                              const Tensor& ref) {
  STD_TORCH_CHECK(t.device() == ref.device(), op, ": ", arg, " is on ", device_name(t), " but ", ref_arg, " is on ",
                  device_name(ref), "; expected all tensors on one device");
}

// The dtype sums are accumulated and returned in: float32 for float32, float16 and bfloat16.
inline ScalarType accumulation_type(ScalarType t) {
  return t == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

// Keys pack (label, row) into 64 bits (center.h): the limits that keeps exact.
constexpr int64_t kMaxClasses = (int64_t{1} << 31) - 1;
constexpr int64_t kMaxBatch = (int64_t{1} << 32) - 1;

struct Shape {
  int64_t batch, dim, classes;
};

// centers: C x D of a float dtype in `float_types`.
inline void check_centers(const char* op, const Tensor& centers, std::initializer_list<ScalarType> float_types,
                          const char* where) {
  STD_TORCH_CHECK(centers.dim() == 2, op, ": centers must be a 2-D tensor C x D, got shape ", shape_of(centers));
  check_dtype(op, "centers", centers, float_types, where);
  STD_TORCH_CHECK(centers.size(0) <= kMaxClasses, op, ": centers may hold at most ", kMaxClasses,
                  " classes, got ", centers.size(0));
}

// features: B x D; labels: B class indices (int64 or int32); centers: C x D of features' dtype;
// all on one device. Label values are checked by the kernels, which read them anyway.
inline Shape check_batch(const char* op, const Tensor& features, const Tensor& labels, const Tensor& centers,
                         std::initializer_list<ScalarType> float_types, const char* where) {
  check_centers(op, centers, float_types, where);
  STD_TORCH_CHECK(features.dim() == 2, op, ": features must be a 2-D tensor B x D, got shape ", shape_of(features));
  STD_TORCH_CHECK(features.scalar_type() == centers.scalar_type(), op, ": features has dtype ",
                  dtype_name(features.scalar_type()), " but centers has dtype ", dtype_name(centers.scalar_type()),
                  "; expected the same dtype");
  STD_TORCH_CHECK(features.size(1) == centers.size(1), op, ": features has width D = ", features.size(1),
                  " but centers has shape ", shape_of(centers), "; expected C x ", features.size(1));
  check_dtype(op, "labels", labels, {ScalarType::Long, ScalarType::Int}, "(class indices)");
  STD_TORCH_CHECK(labels.dim() == 1 && labels.size(0) == features.size(0), op,
                  ": labels must be a 1-D tensor of B = ", features.size(0), " class indices, got shape ",
                  shape_of(labels));
  STD_TORCH_CHECK(features.size(0) <= kMaxBatch, op, ": the batch may hold at most ", kMaxBatch, " rows, got ",
                  features.size(0));
  check_same_device(op, "labels", labels, "features", features);
  check_same_device(op, "centers", centers, "features", features);
  return {features.size(0), features.size(1), centers.size(0)};
}

// The upstream gradient of the scalar loss: one element of features' dtype on features' device.
inline void check_loss_grad(const char* op, const Tensor& grad, const Tensor& features) {
  STD_TORCH_CHECK(grad.numel() == 1, op, ": grad must hold the one gradient of the scalar loss, got shape ",
                  shape_of(grad));
  STD_TORCH_CHECK(grad.scalar_type() == features.scalar_type(), op, ": grad has dtype ",
                  dtype_name(grad.scalar_type()), " but features has dtype ", dtype_name(features.scalar_type()),
                  "; expected the same dtype");
  check_same_device(op, "grad", grad, "features", features);
}

// classes: K distinct class indices (int64 or int32), sums: K x D in the accumulation dtype of
// centers, counts: K int64 batch counts, all on centers' device. Values (classes strictly
// increasing and in [0, C), counts >= 0) are checked by the kernels.
inline int64_t check_stats(const char* op, const Tensor& centers, const Tensor& classes, const Tensor& sums,
                           const Tensor& counts, std::initializer_list<ScalarType> float_types, const char* where) {
  check_centers(op, centers, float_types, where);
  check_dtype(op, "classes", classes, {ScalarType::Long, ScalarType::Int}, "(class indices)");
  STD_TORCH_CHECK(classes.dim() == 1, op, ": classes must be a 1-D tensor of K class indices, got shape ",
                  shape_of(classes));
  const int64_t k = classes.size(0);
  const ScalarType acc = accumulation_type(centers.scalar_type());
  STD_TORCH_CHECK(sums.dim() == 2 && sums.size(0) == k && sums.size(1) == centers.size(1), op,
                  ": sums must be K x D = ", k, " x ", centers.size(1), " (one row per class), got shape ",
                  shape_of(sums));
  STD_TORCH_CHECK(sums.scalar_type() == acc, op, ": sums has dtype ", dtype_name(sums.scalar_type()),
                  "; expected ", dtype_name(acc), " (the accumulation dtype of ", dtype_name(centers.scalar_type()),
                  " centers)");
  check_dtype(op, "counts", counts, {ScalarType::Long}, "(batch counts)");
  STD_TORCH_CHECK(counts.dim() == 1 && counts.size(0) == k, op, ": counts must be a 1-D tensor of K = ", k,
                  " counts, got shape ", shape_of(counts));
  check_same_device(op, "classes", classes, "centers", centers);
  check_same_device(op, "sums", sums, "centers", centers);
  check_same_device(op, "counts", counts, "centers", centers);
  return k;
}

// Label values: each in [0, C). Raises naming the first one outside.
inline void check_label_values(const char* op, const int64_t* labels, int64_t batch, int64_t num_classes) {
  for (int64_t i = 0; i < batch; ++i)
    STD_TORCH_CHECK(labels[i] >= 0 && labels[i] < num_classes, op, ": labels must lie in [0, C) = [0, ", num_classes,
                    ") (C the number of centers), got ", labels[i], " at index ", i);
}

// Stats values: classes strictly increasing in [0, C), counts >= 0. Raises naming the first breach.
inline void check_stats_values(const char* op, const int64_t* classes, const int64_t* counts, int64_t k,
                               int64_t num_classes) {
  for (int64_t q = 0; q < k; ++q) {
    STD_TORCH_CHECK(classes[q] >= 0 && classes[q] < num_classes, op, ": classes must lie in [0, C) = [0, ",
                    num_classes, ") (C the number of centers), got ", classes[q], " at index ", q);
    STD_TORCH_CHECK(q == 0 || classes[q] > classes[q - 1], op,
                    ": classes must be strictly increasing (distinct, ascending, as center_stats returns them), got ",
                    classes[q], " after ", classes[q > 0 ? q - 1 : 0], " at index ", q);
    STD_TORCH_CHECK(counts[q] >= 0, op, ": counts must be >= 0, got ", counts[q], " at index ", q);
  }
}

}  // namespace pydcr::center
