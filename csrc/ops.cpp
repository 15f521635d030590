// The schemas of every pydcr op, declared once. Kernels register per device in
// csrc/<family>/<family>_{cpu.cpp,cuda.cu}; fake kernels and autograd live in pydcr/ops.py.
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY(pydcr, m) {
  // Bicubic resampling (csrc/resample): align_corners=False, antialias as in F.interpolate.
  // The *_backward ops are the adjoint maps: linear, so their own gradient is the forward op.
  m.def("resize(Tensor x, int[] size, bool antialias=True) -> Tensor");
  m.def("resize_backward(Tensor grad, int[] input_size, bool antialias) -> Tensor");
  m.def("degrade(Tensor x, int[] low, int[] size, bool antialias=True) -> Tensor");
  m.def("degrade_backward(Tensor grad, int[] low, int[] input_size, bool antialias) -> Tensor");

  // PReLU with a per-channel bias and a residual add (csrc/prelu): y = PReLU(x + bias, weight) +
  // residual. The backward op returns the gradients of x, weight and the bias (of a zero bias
  // when none was given); the residual's gradient is grad itself.
  m.def("prelu(Tensor x, Tensor weight, Tensor? bias=None, Tensor? residual=None) -> Tensor");
  m.def("prelu_backward(Tensor grad, Tensor x, Tensor weight, Tensor? bias=None) -> (Tensor, Tensor, Tensor)");
  // prelu_pool: PReLU(x + bias, weight) then a 2x2 max-pool, stride 2, ceil mode, for N x C x H x W
  // x; its backward op takes the pooled output's gradient and returns those of x, weight and bias.
  m.def("prelu_pool(Tensor x, Tensor weight, Tensor? bias=None) -> Tensor");
  m.def("prelu_pool_backward(Tensor grad, Tensor x, Tensor weight, Tensor? bias=None) -> (Tensor, Tensor, Tensor)");

  // Center loss and the center update of Wen et al. (csrc/center). labels are int64 or int32
  // class indices into the rows of centers (C x D); features are B x D.
  // center_loss: 1/2 mean over the batch of ||x_i - c_{y_i}||^2 (0 for an empty batch).
  // center_loss_backward: the gradients to features and, when centers_grad, to centers (else an
  // empty tensor).
  // center_stats: the batch's distinct classes (ascending), the per-class sums of x_i - c_{y_i}
  // and the per-class counts; center_apply_ moves the listed centers by the update rule
  // c_j <- c_j + alpha * sums_j / (1 + counts_j); center_update_ is both in one pass.
  m.def("center_loss(Tensor features, Tensor labels, Tensor centers) -> Tensor");
  m.def("center_loss_backward(Tensor grad, Tensor features, Tensor labels, Tensor centers, bool centers_grad) -> (Tensor, Tensor)");
  m.def("center_stats(Tensor features, Tensor labels, Tensor centers) -> (Tensor, Tensor, Tensor)");
  m.def("center_apply_(Tensor(a!) centers, Tensor classes, Tensor sums, Tensor counts, float alpha) -> ()");
  m.def("center_update_(Tensor(a!) centers, Tensor features, Tensor labels, float alpha) -> ()");
}
