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
}
