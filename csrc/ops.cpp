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
}
